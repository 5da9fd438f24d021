"""libulpt from Python: Ultra-Low-dimensional Prompt Tuning, E = (Z . P) * s + b.

::

    import numpy as np
    import ulpt

    prompt = ulpt.Prompt(n_tokens=10, dim=768, projection_seed=1)   # rank 2
    opt = ulpt.Optimizer(prompt, lr=1e-3, schedule="linear", warmup_steps=50,
                         total_steps=1000, max_grad_norm=1.0)
    target = np.zeros(prompt.shape, np.float32)

    def loss_fn(E, G):          # E: read-only (n_tokens, dim) float32; G: write dL/dE
        np.subtract(E, target, out=G)
        loss = float((G ** 2).sum())
        G *= 2
        return loss

    for _ in range(100):
        loss = opt.train_step(loss_fn)     # forward, loss_fn, backward, step
    E = prompt.forward()

The PyTorch bridge is ``ulpt.torch`` (imported on demand); docs/PYTHON.md is the guide.
Errors raise ``ulpt.Error`` subclasses that are also the matching built-in exceptions
(``ValueError``, ``MemoryError``, ``FileNotFoundError``, ...).
"""

from __future__ import annotations

from . import _native
from ._allocator import set_allocator
from ._args import _int
from ._native import check, lib, strerror
from .bank import Bank
from .defaults import fit_defaults, optimizer_defaults, prompt_defaults, save_defaults
from .enums import DType, FileKind, Flags, OptimizerKind, ProjectionKind, Schedule
from .errors import (ERR_BUSY, ERR_CALLBACK, ERR_CORRUPT, ERR_FORMAT, ERR_INVALID, ERR_IO,
                     ERR_MISMATCH, ERR_NOMEM, ERR_NONFINITE, ERR_NOT_FOUND, ERR_UNSUPPORTED,
                     OK, ArgumentTypeError, BusyError, CallbackError, ClosedError,
                     CorruptError, DirectoryError, Error, FileIOError, FilePermissionError,
                     FormatError, InvalidArgumentError, MismatchError, MissingFileError,
                     NonFiniteError, NotFoundError, OutOfMemoryError, UnsupportedError,
                     wrong_type)
from .files import FileInfo, inspect
from .optimizer import Optimizer, OptimizerOptions
from .pretrained import load_pretrained, save_pretrained
from .projection import Projection
from .prompt import Metadata, Prompt
from .zo import ZODistribution, ZOOptions, ZOPerturb, ZOTrainer, zo_defaults

__version__ = "1.2.0"

#: The path or name the library was loaded from.
library_path: str = _native.path

# The C names, for code written against the header.
PROJ_XAVIER_UNIFORM, PROJ_KAIMING_UNIFORM, PROJ_GAUSSIAN, PROJ_RADEMACHER, PROJ_IDENTITY = \
    ProjectionKind
NO_SCALE, NO_SHIFT = Flags.NO_SCALE, Flags.NO_SHIFT
OPT_SGD, OPT_ADAM, OPT_ADAMW = OptimizerKind
SCHED_CONSTANT, SCHED_LINEAR, SCHED_COSINE = Schedule
DTYPE_F32, DTYPE_F16, DTYPE_BF16 = DType
FILE_PROMPT, FILE_CHECKPOINT = FileKind


def version() -> str:
    """The loaded library's version, "MAJOR.MINOR.PATCH" (ulpt_version_string)."""
    return lib.ulpt_version_string().decode()


def version_number() -> int:
    """The loaded library's version as MAJOR*10000 + MINOR*100 + PATCH (ulpt_version)."""
    return lib.ulpt_version()


def last_error() -> str:
    """ulpt_last_error(): the message of this thread's last failed libulpt call (the
    exceptions carry it already)."""
    return lib.ulpt_last_error().decode("utf-8", "replace")


def set_num_threads(n: int) -> None:
    """The number of threads the BLAS kernels may use, process-wide (n >= 1)."""
    check(lib.ulpt_set_num_threads(_int("n", n, 1, 2**31 - 1)))


ulpt_allocator = _native.ulpt_allocator
ALLOC_FN, REALLOC_FN, FREE_FN = _native.ALLOC_FN, _native.REALLOC_FN, _native.FREE_FN

__all__ = [
    "Prompt", "Optimizer", "Projection", "Bank", "ZOTrainer", "ZOOptions", "ZODistribution",
    "ZOPerturb", "OptimizerOptions", "Metadata", "FileInfo", "inspect", "save_pretrained", "load_pretrained",
    "prompt_defaults", "optimizer_defaults", "save_defaults", "zo_defaults", "fit_defaults",
    "ProjectionKind", "Flags", "OptimizerKind", "Schedule", "DType", "FileKind",
    "Error", "InvalidArgumentError", "ArgumentTypeError", "OutOfMemoryError", "FileIOError",
    "MissingFileError", "FilePermissionError", "DirectoryError", "FormatError",
    "CorruptError", "MismatchError", "NonFiniteError", "NotFoundError", "CallbackError",
    "UnsupportedError", "ClosedError", "BusyError", "strerror", "version", "version_number",
    "last_error", "set_num_threads", "set_allocator", "ulpt_allocator",
]
