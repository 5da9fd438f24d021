"""save_pretrained / from_pretrained: a directory a Hugging Face PEFT user recognises.

``save_pretrained(prompt, directory)`` writes

    ulpt_prompt.ulpt            the prompt itself (what from_pretrained reads back)
    adapter_model.safetensors   E as the F32 tensor "prompt_embeddings" [n_tokens, dim]
    adapter_config.json         peft_type PROMPT_TUNING, task_type, num_virtual_tokens,
                                token_dim, num_transformer_submodules 1,
                                base_model_name_or_path (the prompt's "model" metadata)
    ulpt_checkpoint.ulpt        with an optimizer only: its state, to resume training

so that PEFT's ``PeftModel.from_pretrained(model, directory)`` serves the prompt as a
vanilla soft prompt, and ``load_pretrained(directory)`` resumes it exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import TYPE_CHECKING, Optional, Tuple

from .enums import DType
from .errors import invalid, wrong_type

if TYPE_CHECKING:
    from .core import Optimizer, Prompt

PROMPT_FILE = "ulpt_prompt.ulpt"
CHECKPOINT_FILE = "ulpt_checkpoint.ulpt"
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"

TASK_TYPES = ("CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS",
              "FEATURE_EXTRACTION")


def adapter_config(prompt: "Prompt", task_type: str = "CAUSAL_LM") -> dict:
    """The adapter_config.json of a PEFT prompt-tuning adapter for `prompt`."""
    if not isinstance(task_type, str):
        raise wrong_type("task_type must be str, got %s" % type(task_type).__name__)
    if task_type not in TASK_TYPES:
        raise invalid("task_type must be one of %s, got %r" % (", ".join(TASK_TYPES), task_type))
    model = prompt.meta_bytes.get(b"model")
    return {
        "peft_type": "PROMPT_TUNING",
        "task_type": task_type,
        "num_virtual_tokens": prompt.n_tokens,
        "token_dim": prompt.dim,
        "num_transformer_submodules": 1,
        "prompt_tuning_init": "RANDOM",
        "inference_mode": True,
        "base_model_name_or_path": None if model is None else model.decode("utf-8", "replace"),
    }


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".ulpt-tmp-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_pretrained(prompt: "Prompt", directory, *, task_type: str = "CAUSAL_LM",
                    dtype: DType = DType.F32, optimizer: Optional["Optimizer"] = None) -> None:
    """Write the prompt (and, with `optimizer`, a checkpoint) and a PEFT prompt-tuning
    adapter into `directory` (created if needed).  Each file is written atomically; a
    checkpoint left by an earlier save with an optimizer is removed when none is given,
    so that from_pretrained never resumes a stale one.  `task_type` is PEFT's (CAUSAL_LM,
    SEQ_2_SEQ_LM, SEQ_CLS, ...).  Raises FileIOError, NonFiniteError,
    InvalidArgumentError."""
    if optimizer is not None and optimizer.prompt is not prompt:
        raise invalid("the optimizer belongs to another prompt")
    config = adapter_config(prompt, task_type)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    prompt.save(os.path.join(directory, PROMPT_FILE), dtype=dtype)
    checkpoint = os.path.join(directory, CHECKPOINT_FILE)
    if optimizer is not None:
        optimizer.save_checkpoint(checkpoint)
    elif os.path.exists(checkpoint):
        os.unlink(checkpoint)
    prompt.export_safetensors(os.path.join(directory, ADAPTER_FILE))
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    _write_atomic(os.path.join(directory, CONFIG_FILE), text.encode("utf-8"))


def load_pretrained(directory) -> Tuple["Prompt", Optional["Optimizer"]]:
    """(prompt, optimizer) from a directory save_pretrained wrote: the optimizer (and the
    prompt it carries) when a checkpoint is there, else (Prompt.load(ulpt_prompt.ulpt),
    None).  Raises MissingFileError when neither file exists, and as Prompt.load."""
    from .core import Optimizer, Prompt
    directory = os.fspath(directory)
    checkpoint = os.path.join(directory, CHECKPOINT_FILE)
    if os.path.exists(checkpoint):
        opt = Optimizer.load_checkpoint(checkpoint)
        return opt.prompt, opt
    return Prompt.load(os.path.join(directory, PROMPT_FILE)), None
