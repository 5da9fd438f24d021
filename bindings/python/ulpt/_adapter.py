"""The files of a save_pretrained directory and the PEFT adapter beside the prompt: names,
adapter_config.json, atomic writes.  Works on any prompt object (it needs only its
methods), so that the prompt and optimizer modules use it without importing each other.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Optional

from .enums import DType
from .errors import invalid, wrong_type

PROMPT_FILE = "ulpt_prompt.ulpt"
CHECKPOINT_FILE = "ulpt_checkpoint.ulpt"
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"

TASK_TYPES = ("CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS",
              "FEATURE_EXTRACTION")


def adapter_config(prompt, task_type: str = "CAUSAL_LM") -> dict:
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


def save(prompt, directory, task_type: str, dtype: DType,
         checkpoint: Optional[Callable[[str], None]] = None) -> None:
    """Write `directory` as save_pretrained documents; `checkpoint(path)` writes the
    optimizer's checkpoint when there is one.  The adapter is E of the prompt as the
    .ulpt file stores it (rounded to `dtype`), so the two always agree."""
    config = adapter_config(prompt, task_type)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    prompt_file = os.path.join(directory, PROMPT_FILE)
    prompt.save(prompt_file, dtype=dtype)
    checkpoint_file = os.path.join(directory, CHECKPOINT_FILE)
    if checkpoint is not None:
        checkpoint(checkpoint_file)
    elif os.path.exists(checkpoint_file):
        os.unlink(checkpoint_file)
    stored = prompt if dtype == DType.F32 else type(prompt).load(prompt_file)
    stored.export_safetensors(os.path.join(directory, ADAPTER_FILE))
    text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    _write_atomic(os.path.join(directory, CONFIG_FILE), text.encode("utf-8"))


def checkpoint_file(directory) -> Optional[str]:
    """The checkpoint save_pretrained left in `directory`, or None."""
    path = os.path.join(os.fspath(directory), CHECKPOINT_FILE)
    return path if os.path.exists(path) else None


def prompt_file(directory) -> str:
    return os.path.join(os.fspath(directory), PROMPT_FILE)
