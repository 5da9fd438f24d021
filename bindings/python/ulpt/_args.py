"""Arguments checked before they reach C: ints in their C range, real numbers, paths,
metadata text and float32 matrices of an exact shape."""

from __future__ import annotations

import operator
import os
from typing import Sequence, Union

import numpy as np

from .errors import invalid, wrong_type

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
ArrayLike = Union[np.ndarray, Sequence]

_U32 = 2**32 - 1
_U64 = 2**64 - 1


def _int(name, value, lo, hi):
    if isinstance(value, bool):
        raise wrong_type("%s must be an int, got bool" % name)
    try:
        value = operator.index(value)
    except TypeError:
        raise wrong_type("%s must be an int, got %s" % (name, type(value).__name__)) from None
    if not lo <= value <= hi:
        raise invalid("%s must be in %d..%d, got %d" % (name, lo, hi, value))
    return value


def _real(name, value):
    if not isinstance(value, (bool, str, bytes)):
        try:
            return float(value)
        except OverflowError:   # an int beyond a double's range: a bad value, not a type
            raise invalid("%s is out of range for a double" % name) from None
        except (TypeError, ValueError):
            pass
    raise wrong_type("%s must be a real number, got %s" % (name, type(value).__name__))


def _path(path) -> bytes:
    try:
        raw = os.fsencode(path)
    except TypeError:
        raise wrong_type("a path must be str, bytes or os.PathLike, got %s"
                         % type(path).__name__) from None
    if b"\0" in raw:
        raise invalid("a path must not contain NUL: %r" % (path,))
    return raw


def _text(name, value) -> bytes:
    """A metadata key or value: str or bytes, without NUL.  A str with lone surrogates
    becomes the bytes they stand for (as os.fsencode), which the library then refuses
    as not UTF-8."""
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        raise wrong_type("metadata %s must be str or bytes, got %s" % (name, type(value).__name__))
    if b"\0" in raw:
        raise invalid("metadata %s must not contain NUL: %r" % (name, value))
    return raw


def _matrix(name, values, shape):
    """`values` as a C-contiguous float32 array of exactly `shape` (a copy only when the
    dtype or the layout differs)."""
    arr = np.asarray(values)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise wrong_type("%s must be an array of real numbers, got dtype %s" % (name, arr.dtype))
    if arr.shape != shape:
        raise invalid("%s must have shape %s, got %s" % (name, shape, arr.shape))
    return np.ascontiguousarray(arr, dtype=np.float32)

