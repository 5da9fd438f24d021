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

from typing import Optional, Tuple

from . import _adapter
from ._adapter import (ADAPTER_FILE, CHECKPOINT_FILE, CONFIG_FILE, PROMPT_FILE, TASK_TYPES,
                       adapter_config)
from .enums import DType
from .errors import invalid
from .optimizer import Optimizer
from .prompt import Prompt

__all__ = ["save_pretrained", "load_pretrained", "adapter_config", "PROMPT_FILE",
           "CHECKPOINT_FILE", "ADAPTER_FILE", "CONFIG_FILE", "TASK_TYPES"]


def save_pretrained(prompt: Prompt, directory, *, task_type: str = "CAUSAL_LM",
                    dtype: DType = DType.F32, optimizer: Optional[Optimizer] = None) -> None:
    """Write the prompt (and, with `optimizer`, a checkpoint) and a PEFT prompt-tuning
    adapter into `directory` (created if needed).  Each file is written atomically; a
    checkpoint left by an earlier save with an optimizer is removed when none is given,
    so that from_pretrained never resumes a stale one.  `task_type` is PEFT's (CAUSAL_LM,
    SEQ_2_SEQ_LM, SEQ_CLS, ...); the adapter holds E of the parameters as the .ulpt file
    stores them (`dtype`).  Raises FileIOError, NonFiniteError, InvalidArgumentError."""
    if optimizer is None:
        prompt.save_pretrained(directory, task_type=task_type, dtype=dtype)
        return
    if optimizer.prompt is not prompt:
        raise invalid("the optimizer belongs to another prompt")
    optimizer.save_pretrained(directory, task_type=task_type, dtype=dtype)


def load_pretrained(directory) -> Tuple[Prompt, Optional[Optimizer]]:
    """(prompt, optimizer) from a directory save_pretrained wrote: the optimizer (and the
    prompt it carries) when a checkpoint is there, else (Prompt.load(ulpt_prompt.ulpt),
    None).  Raises MissingFileError when neither file exists, and as Prompt.load."""
    checkpoint = _adapter.checkpoint_file(directory)
    if checkpoint is not None:
        opt = Optimizer.load_checkpoint(checkpoint)
        return opt.prompt, opt
    return Prompt.load(_adapter.prompt_file(directory)), None
