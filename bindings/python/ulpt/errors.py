"""The exceptions: ``ulpt.Error`` and one subclass per ULPT_ERR_* code, each also deriving
from the built-in exception a Python programmer would catch for it.

=====================  ====================  ===============================================
C code                 exception             also a
=====================  ====================  ===============================================
ULPT_ERR_INVALID       InvalidArgumentError  ValueError
(wrong Python type)    ArgumentTypeError     TypeError
ULPT_ERR_NOMEM         OutOfMemoryError      MemoryError
ULPT_ERR_IO            FileIOError           OSError (errno, strerror, filename); a missing
                                             file is FileNotFoundError, a refused one
                                             PermissionError, a directory IsADirectoryError
ULPT_ERR_FORMAT        FormatError           ValueError
ULPT_ERR_CORRUPT       CorruptError          ValueError
ULPT_ERR_MISMATCH      MismatchError         ValueError
ULPT_ERR_NONFINITE     NonFiniteError        FloatingPointError
ULPT_ERR_CALLBACK      CallbackError         RuntimeError (``__cause__``: what the callback
                                             raised)
ULPT_ERR_UNSUPPORTED   UnsupportedError      NotImplementedError
ULPT_ERR_NOT_FOUND     NotFoundError         KeyError
(object closed)        ClosedError           ValueError
ULPT_ERR_BUSY          BusyError             RuntimeError (also raised by the binding for
                                             an object in use)
=====================  ====================  ===============================================
"""

from __future__ import annotations

import errno as _errno
import os

OK = 0
ERR_INVALID = -1
ERR_NOMEM = -2
ERR_IO = -3
ERR_FORMAT = -4
ERR_CORRUPT = -5
ERR_MISMATCH = -6
ERR_NONFINITE = -7
ERR_CALLBACK = -8
ERR_UNSUPPORTED = -9
ERR_NOT_FOUND = -10
ERR_BUSY = -11


class Error(Exception):
    """A libulpt call failed.

    ``code`` is the ULPT_ERR_* value (an int < 0) and ``message`` the library's one-line
    message (ulpt_last_error()), e.g. "ulpt_prompt_create: rank 8 is greater than dim 4".
    ``str(error)`` is the message."""

    code: int = ERR_INVALID

    def __init__(self, code: int, message: str, *args):
        # OSError subclasses take (errno, strerror, filename) through *args
        super().__init__(*(args or (message,)))
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (_rebuild, (type(self), self.code, self.message, getattr(self, "errno", None),
                           getattr(self, "filename", None)))


class InvalidArgumentError(Error, ValueError):
    """ULPT_ERR_INVALID: a bad value (a size of 0, a seed out of range, a wrong shape...)."""


class ArgumentTypeError(Error, TypeError):
    """An argument of the wrong Python type (code ULPT_ERR_INVALID)."""


class OutOfMemoryError(Error, MemoryError):
    """ULPT_ERR_NOMEM: an allocation failed."""


class FileIOError(Error, OSError):
    """ULPT_ERR_IO: reading or writing a file failed; ``errno``, ``strerror`` and
    ``filename`` as for OSError."""

    def __init__(self, code: int, message: str, errno: int | None = None,
                 filename: str | None = None):
        if errno is None:
            Error.__init__(self, code, message)
            self.filename = filename
        else:
            Error.__init__(self, code, message, errno, os.strerror(errno), filename)
            self.filename = filename

    def __str__(self) -> str:
        return self.message


class MissingFileError(FileIOError, FileNotFoundError):
    """ULPT_ERR_IO for a file that does not exist (ENOENT)."""


class FilePermissionError(FileIOError, PermissionError):
    """ULPT_ERR_IO when the system refused access (EACCES, EPERM, EROFS)."""


class DirectoryError(FileIOError, IsADirectoryError):
    """ULPT_ERR_IO for a path that is a directory (EISDIR)."""


class FormatError(Error, ValueError):
    """ULPT_ERR_FORMAT: not a libulpt file, or a format version this library can't read."""


class CorruptError(Error, ValueError):
    """ULPT_ERR_CORRUPT: a damaged file (checksum, truncation, inconsistent sizes)."""


class MismatchError(Error, ValueError):
    """ULPT_ERR_MISMATCH: objects or files that do not belong together."""


class NonFiniteError(Error, FloatingPointError):
    """ULPT_ERR_NONFINITE: a NaN or infinity in a loss, gradient or parameter."""


class CallbackError(Error, RuntimeError):
    """ULPT_ERR_CALLBACK: the loss callback failed; ``__cause__`` is its exception."""


class UnsupportedError(Error, NotImplementedError):
    """ULPT_ERR_UNSUPPORTED: valid, but not supported by the loaded library."""


class NotFoundError(Error, KeyError):
    """ULPT_ERR_NOT_FOUND: no such prompt in a bank (removed, or never there)."""


class ClosedError(Error, ValueError):
    """The object was closed (code ULPT_ERR_INVALID), as I/O on a closed file."""


class BusyError(Error, RuntimeError):
    """ULPT_ERR_BUSY: the object is in use by another call -- closing or modifying a
    prompt or optimizer while a step on it runs (from its loss callback, or another
    thread); the message says what holds it."""


_BY_CODE = {
    ERR_INVALID: InvalidArgumentError,
    ERR_NOMEM: OutOfMemoryError,
    ERR_IO: FileIOError,
    ERR_FORMAT: FormatError,
    ERR_CORRUPT: CorruptError,
    ERR_MISMATCH: MismatchError,
    ERR_NONFINITE: NonFiniteError,
    ERR_CALLBACK: CallbackError,
    ERR_UNSUPPORTED: UnsupportedError,
    ERR_NOT_FOUND: NotFoundError,
    ERR_BUSY: BusyError,
}

_BY_ERRNO = {
    _errno.ENOENT: MissingFileError,
    _errno.EACCES: FilePermissionError,
    _errno.EPERM: FilePermissionError,
    _errno.EROFS: FilePermissionError,
    _errno.EISDIR: DirectoryError,
}

# The library ends an I/O message with strerror(errno): map the text back to the number.
_ERRNO_OF_TEXT = {os.strerror(n): n for n in sorted(_errno.errorcode, reverse=True)}


def _rebuild(cls, code, message, errno, filename):
    if issubclass(cls, FileIOError):
        return cls(code, message, errno, filename)
    return cls(code, message)


def error(code: int, message: str, filename=None) -> Error:
    """The exception for a ULPT_ERR_* code and message (used by the binding itself)."""
    cls = _BY_CODE.get(code, Error)
    if cls is FileIOError:
        number = None
        head, sep, tail = message.rpartition(": ")
        if sep:
            number = _ERRNO_OF_TEXT.get(tail)
        cls = _BY_ERRNO.get(number, FileIOError)
        if filename is not None:
            filename = os.fsdecode(filename)
        return cls(code, message, number, filename)
    return cls(code, message)


def invalid(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(ERR_INVALID, message)


def wrong_type(message: str) -> ArgumentTypeError:
    return ArgumentTypeError(ERR_INVALID, message)

