"""What a file holds, checked as a load would check it (ulpt_file_inspect as
``ulpt.inspect``)."""

from __future__ import annotations

from ctypes import byref
from dataclasses import dataclass

from . import _native
from ._args import PathLike, _path
from ._native import check, lib
from .enums import DType, FileKind


@dataclass(frozen=True)
class FileInfo:
    """What ulpt.inspect found in a file."""
    kind: FileKind          #: PROMPT or CHECKPOINT
    format_major: int
    format_minor: int
    dtype: DType            #: storage type of the parameters
    file_bytes: int         #: the file's size
    stored_bytes: int       #: bytes the parameters take in the file


def inspect(path: PathLike) -> FileInfo:
    """Check a prompt file or checkpoint completely (as a load would) and describe it.
    Raises as Prompt.load."""
    raw = _path(path)
    info = _native.ulpt_file_info()
    check(lib.ulpt_file_info_init(byref(info), 1))
    check(lib.ulpt_file_inspect(raw, byref(info)), path)
    return FileInfo(FileKind(info.kind), info.format_major, info.format_minor,
                    DType(info.dtype), info.file_bytes, info.stored_bytes)
