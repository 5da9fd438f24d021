"""The files of a save_pretrained directory and the PEFT adapter beside the prompt: names,
adapter_config.json, atomic writes.  Works on any prompt object (it needs only its
methods), so that the prompt and optimizer modules use it without importing each other.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable, Optional

from .enums import DType
from .errors import ERR_IO, error, invalid, wrong_type

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
    .ulpt file stores it (rounded to `dtype`), so the two always agree.

    All or nothing: every file is written into a temporary directory inside `directory`
    first, and swapped in only when all of them were written; a failure while swapping
    puts the old files back.  So the directory never holds a new prompt beside an old
    adapter or checkpoint."""
    config = adapter_config(prompt, task_type)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    names = (PROMPT_FILE, CHECKPOINT_FILE, ADAPTER_FILE, CONFIG_FILE)
    for name in names:                    # refuse before writing anything
        path = os.path.join(directory, name)
        if os.path.lexists(path) and not os.path.isfile(path):
            raise error(ERR_IO, "cannot write %s: it exists and is not a regular file"
                        % path, path)
    stage = tempfile.mkdtemp(prefix=".ulpt-tmp-", dir=directory)
    try:
        staged = os.path.join(stage, PROMPT_FILE)
        prompt.save(staged, dtype=dtype)
        if checkpoint is not None:
            checkpoint(os.path.join(stage, CHECKPOINT_FILE))
        stored = prompt if dtype == DType.F32 else type(prompt).load(staged)
        stored.export_safetensors(os.path.join(stage, ADAPTER_FILE))
        text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        _write_atomic(os.path.join(stage, CONFIG_FILE), text.encode("utf-8"))
        _swap(stage, directory, names)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap(stage: str, directory: str, names) -> None:
    """Move the files of `stage` over those of `directory` (a name absent from `stage`
    is removed from `directory`), keeping the old ones in `stage`/old until all moved;
    on a failure the old ones go back."""
    old = os.path.join(stage, "old")
    os.mkdir(old)
    done = []                             # (name, had an old file)
    try:
        for name in names:
            target, new = os.path.join(directory, name), os.path.join(stage, name)
            had = os.path.lexists(target)
            if had:
                os.replace(target, os.path.join(old, name))
            done.append((name, had))
            if os.path.exists(new):
                os.replace(new, target)
    except BaseException:
        for name, had in reversed(done):
            target = os.path.join(directory, name)
            try:
                if had:
                    os.replace(os.path.join(old, name), target)
                elif os.path.lexists(target):
                    os.unlink(target)
            except OSError:
                pass
        raise
    _sync_dir(directory)


def _sync_dir(directory: str) -> None:
    """Make the renames durable, best effort (as the library's atomic saves do)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_file(directory) -> Optional[str]:
    """The checkpoint save_pretrained left in `directory`, or None."""
    path = os.path.join(os.fspath(directory), CHECKPOINT_FILE)
    return path if os.path.exists(path) else None


def prompt_file(directory) -> str:
    return os.path.join(os.fspath(directory), PROMPT_FILE)
