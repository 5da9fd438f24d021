"""Projections, prompts and optimizers over libulpt's handles.

Memory safety rests on one rule: a C handle belongs to a small `_Handle` object that frees
it when the last Python reference goes.  Prompts, optimizers, projections and every NumPy
view onto the library's buffers hold a reference to the handles they use, so closing an
object only drops its own claim; the memory goes when nothing can reach it any more.  A
handle also records who is using it, so that closing or modifying an object while a
train_step on it runs raises BusyError instead of racing the C code.
"""

from __future__ import annotations

import ctypes
import inspect as _inspect
import operator
import os
import tempfile
import threading
from collections.abc import MutableMapping
from ctypes import byref, c_char_p, c_double, c_size_t, c_void_p
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._native import lib
from .enums import DType, FileKind, Flags, OptimizerKind, ProjectionKind, Schedule, coerce
from .errors import (BusyError, ClosedError, ERR_CALLBACK, ERR_INVALID, check,
                     error, invalid, wrong_type)

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

_U32 = 2**32 - 1
_U64 = 2**64 - 1

# ----------------------------------------------------------------------------- argument checks


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


# ----------------------------------------------------------------------------- handles


class _Handle:
    """One C handle: freed when the last reference goes; tracks its users."""

    __slots__ = ("ptr", "free", "deps", "lock", "readers", "writer", "serving", "__weakref__")

    def __init__(self, ptr, free, deps=()):
        self.ptr = ptr
        self.free = free          # None for a borrowed handle
        self.deps = deps          # handles that must outlive this one
        self.lock = threading.Lock()
        self.readers = 0
        self.writer = False       # a call that modifies the object is running
        self.serving = False      # ... and is waiting in the loss callback (reads are fine)

    def __reduce__(self):
        raise TypeError("a libulpt handle cannot be pickled or copied")

    def __del__(self):
        ptr, self.ptr = self.ptr, None
        if ptr and self.free is not None:
            self.free(ptr)

    def begin(self, write, what):
        with self.lock:
            if write:
                if self.writer or self.readers:
                    raise _busy(what)
                self.writer = True
            else:
                if self.writer and not self.serving:
                    raise _busy(what)
                self.readers += 1

    def end(self, write):
        with self.lock:
            if write:
                self.writer = False
            else:
                self.readers -= 1

    def idle(self):
        return not (self.writer or self.readers)


def _busy(what):
    return BusyError(ERR_INVALID, "%s: the object is in use by a running train_step "
                                  "(its loss callback, or another thread)" % what)


class _Use:
    """`with obj._use(write): ...` around a C call on obj's handle."""

    __slots__ = ("handles", "write")

    def __init__(self, handles, write):
        self.handles, self.write = handles, write

    def __enter__(self):
        done = []
        try:
            for h, what in self.handles:
                h.begin(self.write, what)
                done.append(h)
        except BaseException:
            for h in done:
                h.end(self.write)
            raise
        return self

    def __exit__(self, *exc):
        for h, _ in self.handles:
            h.end(self.write)


class _Object:
    """Common behaviour: close(), context manager, closed state."""

    _h: Optional[_Handle] = None

    def _handle(self) -> _Handle:
        h = self._h
        if h is None or not h.ptr:
            raise ClosedError(ERR_INVALID, "%s is closed" % type(self).__name__)
        return h

    @property
    def handle(self) -> int:
        """The C pointer (ulpt_prompt *, ...), for calling ``ulpt._native.lib`` directly;
        valid while the object is open."""
        return self._handle().ptr

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._h is None

    def close(self) -> None:
        """Release this object's claim on the library's memory.  Views (``params``,
        ``grads``, ...) and optimizers that still use it keep the memory until they go;
        every method of a closed object raises ClosedError.  Closing twice is harmless.
        Raises BusyError while a train_step on the object runs."""
        h = self._h
        if h is None:
            return
        with h.lock:
            if not h.idle():
                raise _busy("%s.close" % type(self).__name__)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _view(h: _Handle, address: int, shape, writable=True) -> np.ndarray:
    """A NumPy float32 view of library memory at `address` that keeps `h` alive."""
    count = int(np.prod(shape))
    buf = (ctypes.c_float * count).from_address(address)
    buf._ulpt_handle = h  # the array's base is buf; buf holds the handle
    arr = np.frombuffer(buf, dtype=np.float32).reshape(shape)
    if not writable:
        arr.flags.writeable = False
    return arr


# ----------------------------------------------------------------------------- defaults


def _defaults(init, struct):
    opts = struct()
    check(init(byref(opts), 1))
    return opts


def prompt_defaults() -> _native.ulpt_prompt_options:
    """ulpt_prompt_options as ulpt_prompt_options_init fills them (the defaults of
    Prompt's keyword arguments come from here)."""
    return _defaults(lib.ulpt_prompt_options_init, _native.ulpt_prompt_options)


def optimizer_defaults() -> _native.ulpt_optimizer_options:
    """ulpt_optimizer_options as ulpt_optimizer_options_init fills them."""
    return _defaults(lib.ulpt_optimizer_options_init, _native.ulpt_optimizer_options)


def save_defaults() -> _native.ulpt_save_options:
    """ulpt_save_options as ulpt_save_options_init fills them."""
    return _defaults(lib.ulpt_save_options_init, _native.ulpt_save_options)


def fit_defaults() -> _native.ulpt_fit_options:
    """ulpt_fit_options as ulpt_fit_options_init fills them."""
    return _defaults(lib.ulpt_fit_options_init, _native.ulpt_fit_options)


def _set_kwdefaults(fn, values):
    """Make the library's defaults the visible keyword defaults of `fn`."""
    kw = dict(fn.__kwdefaults__ or {})
    for name, value in values.items():
        assert name in kw, name
        kw[name] = value
    fn.__kwdefaults__ = kw


_REQUIRED = object()  # placeholder default, replaced from the library at import

# ----------------------------------------------------------------------------- projection


class Projection(_Object):
    """The frozen random matrix P (rank x dim), a pure function of (seed, kind, rank, dim).

    Immutable; ``matrix`` is a read-only (rank, dim) float32 view (None for the identity).
    Pass projections to ``Prompt(..., projections=[...])`` to share one P among prompts.

    Raises InvalidArgumentError for an unknown kind, rank or dim 0, rank > dim, identity
    with rank != dim."""

    def __init__(self, *, seed: int, rank: int, dim: int,
                 kind: ProjectionKind = ProjectionKind.XAVIER_UNIFORM):
        seed = _int("seed", seed, 0, _U64)
        rank = _int("rank", rank, 1, _U32)
        dim = _int("dim", dim, 1, _U32)
        kind = coerce(ProjectionKind, kind, "kind")
        ptr = c_void_p()
        check(lib.ulpt_projection_create(byref(ptr), seed, rank, dim, kind))
        self._h = _Handle(ptr.value, lib.ulpt_projection_free)
        self._describe()

    @classmethod
    def _borrow(cls, ptr, owner: _Handle) -> "Projection":
        self = cls.__new__(cls)
        self._h = _Handle(ptr, None, (owner,))
        self._describe()
        return self

    def _describe(self):
        p = self._h.ptr
        self.seed = lib.ulpt_projection_seed(p)
        self.rank = lib.ulpt_projection_rank(p)
        self.dim = lib.ulpt_projection_dim(p)
        self.kind = ProjectionKind(lib.ulpt_projection_kind(p))

    def __reduce__(self):  # P is a pure function of these
        return (_projection, (self.seed, self.rank, self.dim, self.kind))

    @property
    def matrix(self) -> Optional[np.ndarray]:
        """P as a read-only (rank, dim) float32 view, or None for the identity."""
        h = self._handle()
        address = lib.ulpt_projection_data(h.ptr)
        return None if not address else _view(h, address, (self.rank, self.dim), False)

    def __repr__(self):
        state = " closed" if self.closed else ""
        return "<ulpt.Projection%s seed=%d rank=%d dim=%d kind=%s>" % (
            state, self.seed, self.rank, self.dim, self.kind.name)


def _projection(seed, rank, dim, kind):
    return Projection(seed=seed, rank=rank, dim=dim, kind=kind)


# ----------------------------------------------------------------------------- metadata


class Metadata(MutableMapping):
    """A prompt's metadata as a mapping that reads and writes through to the library.

    ``prompt.meta`` gives str keys and values, ``prompt.meta_bytes`` their UTF-8 bytes.
    Keys and values may be given as str or bytes; they must be UTF-8 (the library checks
    it when they are set and when a file is loaded) without NUL.  Insertion order is
    kept.  Raises InvalidArgumentError for an empty key, a key over 255 bytes, a value
    over 65535 bytes, a 1025th key, bytes that are not UTF-8."""

    def __init__(self, prompt: "Prompt", raw: bool = False):
        self._prompt = prompt
        self._raw = raw

    def _out(self, raw: bytes):
        return raw if self._raw else raw.decode("utf-8", "surrogateescape")

    def __getitem__(self, key):
        k = _text("key", key)
        p = self._prompt
        with _Use(p._reading("meta"), False):
            value = lib.ulpt_prompt_get_meta(p._h.ptr, k)
        if value is None:
            raise KeyError(key)
        return self._out(value)

    def __setitem__(self, key, value):
        k, v = _text("key", key), _text("value", value)
        self._prompt._set_meta(k, v)

    def __delitem__(self, key):
        k = _text("key", key)
        if k not in self._keys():
            raise KeyError(key)
        self._prompt._set_meta(k, None)

    def __contains__(self, key):
        try:
            self[key]
        except KeyError:
            return False
        return True

    def _keys(self):
        p = self._prompt
        keys, k, v = [], c_char_p(), c_char_p()
        with _Use(p._reading("meta"), False):
            for i in range(lib.ulpt_prompt_meta_count(p._h.ptr)):
                check(lib.ulpt_prompt_meta_at(p._h.ptr, i, byref(k), byref(v)))
                keys.append(k.value)
        return keys

    def __iter__(self) -> Iterator:
        return iter([self._out(k) for k in self._keys()])

    def __len__(self) -> int:
        p = self._prompt
        with _Use(p._reading("meta"), False):
            return lib.ulpt_prompt_meta_count(p._h.ptr)

    def __repr__(self):
        return "%s(%r)" % ("ulpt.Metadata" + ("Bytes" if self._raw else ""), dict(self.items()))


# ----------------------------------------------------------------------------- prompt

ArrayLike = Union[np.ndarray, Sequence]


class Prompt(_Object):
    """The trainable low-dimensional parameters Z (n_tokens x rank), s and b (dim each);
    ``forward()`` gives the prompt embeddings E = (Z . P) * s + b, (n_tokens, dim).

    Every option is keyword-only; the defaults shown are the library's
    (ulpt_prompt_options_init).  ``n_tokens`` and ``dim`` (the host model's embedding
    width) are required.  ``projection_seed`` and ``init_seed`` are in [0, 2**64);
    ``n_tokens`` must be a multiple of ``n_groups``; rank <= dim (== dim for the
    identity kind).  ``projections``: existing Projection objects, one per group, to share
    (ulpt_prompt_create_shared).  ``meta``: initial metadata.

    Raises InvalidArgumentError (ValueError) or ArgumentTypeError (TypeError) for bad
    options, MismatchError for projections that are not the ones the options imply,
    OutOfMemoryError.

    Copies (copy.copy, copy.deepcopy) and pickles go through the prompt file format:
    parameters and metadata are kept exactly, gradients start at zero."""

    def __init__(self, *, n_tokens: int, dim: int, rank: int = _REQUIRED,
                 n_groups: int = _REQUIRED, projection_seed: int = _REQUIRED,
                 projection_kind: ProjectionKind = _REQUIRED, init_seed: int = _REQUIRED,
                 init_std: float = _REQUIRED, flags: Flags = _REQUIRED,
                 projections: Optional[Sequence[Projection]] = None,
                 meta: Optional[Mapping] = None):
        opts = prompt_defaults()
        opts.n_tokens = _int("n_tokens", n_tokens, 1, _U32)
        opts.dim = _int("dim", dim, 1, _U32)
        opts.rank = _int("rank", rank, 1, _U32)
        opts.n_groups = _int("n_groups", n_groups, 1, _U32)
        opts.projection_seed = _int("projection_seed", projection_seed, 0, _U64)
        opts.projection_kind = coerce(ProjectionKind, projection_kind, "projection_kind")
        opts.init_seed = _int("init_seed", init_seed, 0, _U64)
        opts.init_std = _real("init_std", init_std)
        opts.flags = coerce(Flags, flags, "flags")
        ptr = c_void_p()
        if projections is None:
            check(lib.ulpt_prompt_create(byref(ptr), byref(opts)))
        else:
            projections = list(projections)
            if len(projections) != opts.n_groups:
                raise invalid("projections: %d given for %d groups"
                              % (len(projections), opts.n_groups))
            handles = []
            for i, proj in enumerate(projections):
                if not isinstance(proj, Projection):
                    raise wrong_type("projections[%d] must be a ulpt.Projection, got %s"
                                     % (i, type(proj).__name__))
                handles.append(proj._handle())
            array = (c_void_p * len(handles))(*[h.ptr for h in handles])
            check(lib.ulpt_prompt_create_shared(byref(ptr), byref(opts), array))
        self._adopt(ptr.value)
        if meta:
            try:
                for key, value in meta.items():
                    self.meta[key] = value
            except BaseException:
                self.close()
                raise

    def _adopt(self, ptr):
        return self._attach(_Handle(ptr, lib.ulpt_prompt_free))

    def _attach(self, h: _Handle):
        ptr = h.ptr
        self._h = h
        self.n_tokens = lib.ulpt_prompt_n_tokens(ptr)
        self.rank = lib.ulpt_prompt_rank(ptr)
        self.dim = lib.ulpt_prompt_dim(ptr)
        self.n_groups = lib.ulpt_prompt_n_groups(ptr)
        self.flags = Flags(lib.ulpt_prompt_flags(ptr))
        self.num_params = lib.ulpt_prompt_num_params(ptr)
        return self

    @classmethod
    def _from_ptr(cls, ptr) -> "Prompt":
        return cls.__new__(cls)._adopt(ptr)

    def _reading(self, what):
        return ((self._handle(), "Prompt." + what),)

    def _set_meta(self, key: bytes, value: Optional[bytes]):
        with _Use(self._reading("meta"), True):
            check(lib.ulpt_prompt_set_meta(self._h.ptr, key, value))

    # -- shape

    @property
    def shape(self) -> Tuple[int, int]:
        """(n_tokens, dim): the shape of E and of the gradient G."""
        return (self.n_tokens, self.dim)

    # -- parameters

    @property
    def params(self) -> np.ndarray:
        """The parameters [Z | s | b] as one flat writable float32 view of
        ``num_params`` values (zero copy; s absent with NO_SCALE, b with NO_SHIFT).  The
        view keeps the prompt's memory alive."""
        h = self._handle()
        return _view(h, lib.ulpt_prompt_params(h.ptr), (self.num_params,))

    @property
    def grads(self) -> np.ndarray:
        """The gradients, a flat writable float32 view laid out as ``params``."""
        h = self._handle()
        return _view(h, lib.ulpt_prompt_grads(h.ptr), (self.num_params,))

    def split(self, flat: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray],
                                                Optional[np.ndarray]]:
        """(Z, s, b) views into a flat [Z | s | b] array such as ``params`` or ``grads``:
        Z (n_tokens, rank), s and b (dim,) or None when the prompt has none."""
        nr, d = self.n_tokens * self.rank, self.dim
        z = flat[:nr].reshape(self.n_tokens, self.rank)
        at = nr
        s = b = None
        if not self.flags & Flags.NO_SCALE:
            s, at = flat[at:at + d], at + d
        if not self.flags & Flags.NO_SHIFT:
            b = flat[at:at + d]
        return z, s, b

    Z = property(lambda self: self.split(self.params)[0],
                 doc="Z, a writable (n_tokens, rank) view.")
    s = property(lambda self: self.split(self.params)[1],
                 doc="The scale s, a writable (dim,) view; None with NO_SCALE.")
    b = property(lambda self: self.split(self.params)[2],
                 doc="The shift b, a writable (dim,) view; None with NO_SHIFT.")

    def projection(self, group: int = 0) -> Projection:
        """The Projection of token group `group` (0-based; it keeps the prompt alive).
        Raises IndexError when out of range."""
        group = _int("group", group, 0, _U32)
        h = self._handle()
        ptr = lib.ulpt_prompt_projection(h.ptr, group)
        if not ptr:
            raise IndexError("group %d is out of range: the prompt has %d" % (group, self.n_groups))
        return Projection._borrow(ptr, h)

    # -- forward and backward

    def forward(self, out: Optional[np.ndarray] = None) -> np.ndarray:
        """E = (Z_g . P_g) * s + b, (n_tokens, dim) float32: into `out` (a float32 array
        of that shape whose rows are contiguous) or a new array.  Safe to call from
        several threads at once.  Raises NonFiniteError when a parameter is NaN or
        infinite."""
        h = self._handle()
        if out is None:
            out = np.empty(self.shape, np.float32)
        elif not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != self.shape \
                or out.strides[1] != 4 or out.strides[0] % 4 or out.strides[0] < 4 * self.dim \
                or not out.flags.writeable:
            raise invalid("out must be a writable float32 array of shape %s with contiguous rows"
                          % (self.shape,))
        with _Use(((h, "Prompt.forward"),), False):
            check(lib.ulpt_prompt_forward(h.ptr, out.ctypes.data, out.strides[0] // 4))
        return out

    def backward(self, grad: ArrayLike) -> None:
        """Add the gradients for G = dL/dE to ``grads`` (so calls accumulate).  `grad`
        must have exactly the shape (n_tokens, dim); any real dtype and layout is
        accepted (converted to float32).  Raises InvalidArgumentError for another shape,
        ArgumentTypeError for a non-numeric array."""
        h = self._handle()
        g = _matrix("grad", grad, self.shape)
        with _Use(((h, "Prompt.backward"),), True):
            check(lib.ulpt_prompt_backward(h.ptr, g.ctypes.data, self.dim))

    def init_from_embeddings(self, target: ArrayLike, *, max_iters: int = _REQUIRED,
                             tol: float = _REQUIRED) -> float:
        """Set Z, s and b to the least-squares fit of E to `target` (n_tokens, dim): the
        embeddings of a text from the host's table, PEFT's "init from text".  Alternating
        least squares, at most `max_iters` rounds, stopping when a round lowers
        ||E - T||^2 by no more than `tol` times its value.  Returns ||E - T|| / ||T||
        (Frobenius; ||E - T|| when T is 0).  Gradients and optimizer state are left
        alone.  Raises InvalidArgumentError (shape, options), NonFiniteError (NaN in
        target)."""
        t = _matrix("target", target, self.shape)
        opts = fit_defaults()
        opts.max_iters = _int("max_iters", max_iters, 0, _U32)
        opts.tol = _real("tol", tol)
        residual = c_double()
        h = self._handle()
        with _Use(((h, "Prompt.init_from_embeddings"),), True):
            check(lib.ulpt_prompt_init_from_embeddings(h.ptr, t.ctypes.data, self.dim,
                                                       byref(opts), byref(residual)))
        return residual.value

    def zero_grad(self) -> None:
        """Set every gradient to 0."""
        h = self._handle()
        with _Use(((h, "Prompt.zero_grad"),), True):
            lib.ulpt_prompt_zero_grad(h.ptr)

    # -- metadata

    @property
    def meta(self) -> Metadata:
        """The metadata as a str -> str mapping that writes through (``p.meta["task"] =
        "sst2"``, ``del p.meta["task"]``).  Conventional keys: "model", "task",
        "created"."""
        self._handle()
        return Metadata(self)

    def set_meta(self, key: Union[str, bytes], value: Union[str, bytes, None]) -> None:
        """Set a metadata key, or remove it with value None (no error if absent)."""
        self._set_meta(_text("key", key), None if value is None else _text("value", value))

    def get_meta(self, key: Union[str, bytes], default=None):
        """The value of a metadata key (str), or `default`."""
        return self.meta.get(key, default)

    @meta.setter
    def meta(self, values: Mapping) -> None:
        """Replace all metadata; on an error the old metadata is restored."""
        new = [(_text("key", k), _text("value", v)) for k, v in dict(values).items()]
        raw = self.meta_bytes
        old = list(raw.items())
        try:
            for key in list(raw):
                del raw[key]
            for key, value in new:
                raw[key] = value
        except BaseException:
            for key in list(raw):
                del raw[key]
            for key, value in old:
                raw[key] = value
            raise

    @property
    def meta_bytes(self) -> Metadata:
        """The metadata as a bytes -> bytes mapping (the UTF-8 the library stores)."""
        self._handle()
        return Metadata(self, raw=True)

    # -- files

    @classmethod
    def load(cls, path: PathLike, *, model: Optional[str] = None) -> "Prompt":
        """Load a prompt file.  With `model`, refuse (MismatchError) a prompt whose
        "model" metadata is absent or different.  Raises MissingFileError
        (FileNotFoundError) and the other FileIOError kinds, FormatError, CorruptError,
        MismatchError."""
        raw, ptr = _path(path), c_void_p()
        if model is None:
            check(lib.ulpt_prompt_load(byref(ptr), raw), path)
        else:
            check(lib.ulpt_prompt_load_for_model(byref(ptr), raw, _text("model", model)), path)
        return cls._from_ptr(ptr.value)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Prompt":
        """A prompt from the bytes of a prompt file (``to_bytes()``, ``open(f).read()``)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise wrong_type("data must be bytes, got %s" % type(data).__name__)
        data, ptr = bytes(data), c_void_p()
        check(lib.ulpt_prompt_load_buffer(byref(ptr), data, len(data)))
        return cls._from_ptr(ptr.value)

    def _save_options(self, dtype, level):
        opts = save_defaults()
        opts.dtype = coerce(DType, dtype, "dtype")
        opts.level = _int("level", level, 0, 9)
        return opts

    def save(self, path: PathLike, *, dtype: DType = _REQUIRED, level: int = _REQUIRED) -> None:
        """Save parameters and metadata (not gradients) atomically: a failed save leaves
        any previous file intact.  dtype F32 (exact), F16 or BF16; zlib level 0..9.
        Raises NonFiniteError (a parameter NaN, infinite or too large for F16; nothing is
        written), FileIOError."""
        raw, opts = _path(path), self._save_options(dtype, level)
        h = self._handle()
        with _Use(((h, "Prompt.save"),), False):
            check(lib.ulpt_prompt_save(h.ptr, raw, byref(opts)), path)

    def to_bytes(self, *, dtype: DType = _REQUIRED, level: int = _REQUIRED) -> bytes:
        """The bytes ``save`` would write."""
        opts, buf, size = self._save_options(dtype, level), c_void_p(), c_size_t()
        h = self._handle()
        with _Use(((h, "Prompt.to_bytes"),), False):
            check(lib.ulpt_prompt_save_buffer(h.ptr, byref(buf), byref(size), byref(opts)))
        try:
            return ctypes.string_at(buf, size.value)
        finally:
            lib.ulpt_free(buf)

    def export_safetensors(self, path: PathLike) -> None:
        """Write E as the F32 tensor "prompt_embeddings" [n_tokens, dim] of a safetensors
        file (what a PEFT prompt-tuning adapter holds), atomically."""
        raw = _path(path)
        h = self._handle()
        with _Use(((h, "Prompt.export_safetensors"),), False):
            check(lib.ulpt_prompt_export_safetensors(h.ptr, raw), path)

    def save_pretrained(self, directory: PathLike, *, task_type: str = "CAUSAL_LM",
                        dtype: DType = DType.F32) -> None:
        """Write `directory`/ulpt_prompt.ulpt and a PEFT prompt-tuning adapter beside it
        (adapter_model.safetensors, adapter_config.json); see ulpt.pretrained."""
        from .pretrained import save_pretrained
        save_pretrained(self, directory, task_type=task_type, dtype=dtype)

    @classmethod
    def from_pretrained(cls, directory: PathLike) -> "Prompt":
        """The prompt save_pretrained wrote into `directory` (from its checkpoint when
        an optimizer was saved with it)."""
        from .pretrained import load_pretrained
        return load_pretrained(directory)[0]

    # -- copies

    def __reduce__(self):
        return (Prompt.from_bytes, (self.to_bytes(dtype=DType.F32, level=0),))

    def __copy__(self) -> "Prompt":
        return Prompt.from_bytes(self.to_bytes(dtype=DType.F32, level=0))

    def __deepcopy__(self, memo) -> "Prompt":
        return self.__copy__()

    def __repr__(self):
        if self.closed:
            return "<ulpt.Prompt closed>"
        proj = self.projection(0)
        return ("ulpt.Prompt(n_tokens=%d, dim=%d, rank=%d, n_groups=%d, projection_seed=%d, "
                "projection_kind=%r, flags=%d)  # %d trainable parameters"
                % (self.n_tokens, self.dim, self.rank, self.n_groups, proj.seed,
                   proj.kind.name.lower(), self.flags, self.num_params))


_pd = prompt_defaults()
_set_kwdefaults(Prompt.__init__, dict(
    rank=_pd.rank, n_groups=_pd.n_groups, projection_seed=_pd.projection_seed,
    projection_kind=ProjectionKind(_pd.projection_kind), init_seed=_pd.init_seed,
    init_std=float(_pd.init_std), flags=Flags(_pd.flags)))
_fd = fit_defaults()
_set_kwdefaults(Prompt.init_from_embeddings, dict(max_iters=_fd.max_iters, tol=_fd.tol))
_sd = save_defaults()
for _fn in (Prompt.save, Prompt.to_bytes):
    _set_kwdefaults(_fn, dict(dtype=DType(_sd.dtype), level=_sd.level))
_set_kwdefaults(Prompt.save_pretrained, dict(dtype=DType(_sd.dtype)))
del _pd, _fd, _sd, _fn

# ----------------------------------------------------------------------------- optimizer

LossFn = Callable[..., object]


class _Serving:
    """The state a loss callback shares with the step that runs it: built once per
    optimizer or trainer, so that a step costs one call into Python and no allocation of
    views.  ``two_args``: the host function takes (E, out) rather than (E)."""

    __slots__ = ("fn", "two_args", "failure", "e_addr", "g_addr", "E", "G", "handle",
                 "shape")

    def __init__(self, handle, shape):
        self.fn = None
        self.two_args = False
        self.failure = None
        self.e_addr = self.g_addr = None
        self.E = self.G = None
        self.handle = handle
        self.shape = shape

    def use(self, fn):
        if fn is not self.fn:
            if not callable(fn):
                raise wrong_type("loss_fn must be callable, got %s" % type(fn).__name__)
            self.two_args = _takes_two(fn)
            self.fn = fn


def _takes_two(fn) -> bool:
    """True when fn takes two positional arguments, False when it takes one."""
    try:
        params = list(_inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return True
    return len(positional) >= 2


def _serve(st: _Serving, handles, ph: _Handle, step) -> None:
    """Run `step()`, a C call that calls back into Python through `st`, holding
    `handles` for writing; the prompt `ph` may be read from the callback.  A failed
    callback's exception comes out as itself when it is KeyboardInterrupt, SystemExit or
    GeneratorExit, and as CallbackError caused by it otherwise."""
    with _Use(handles, True):
        ph.serving = True
        st.failure = None
        try:
            rc = step()
        finally:
            ph.serving = False
        failure, st.failure = st.failure, None
    if rc == ERR_CALLBACK and failure is not None:
        if not isinstance(failure, Exception):
            raise failure
        raise error(rc, "%s: %s: %s" % (lib.ulpt_last_error().decode("utf-8", "replace"),
                                        type(failure).__name__, failure)) from failure
    check(rc)


def _callback(st: _Serving):
    c_double_at = c_double.from_address

    def loss_callback(user, e, n, d, g, loss_out):
        try:
            if e != st.e_addr or g != st.g_addr:
                st.E = _view(st.handle, e, st.shape, writable=False)
                st.G = _view(st.handle, g, st.shape)
                st.e_addr, st.g_addr = e, g
            result = st.fn(st.E, st.G) if st.two_args else st.fn(st.E)
            if type(result) is tuple:
                if len(result) != 2:
                    raise invalid("the loss function returned a tuple of %d, expected "
                                  "(loss, grad)" % len(result))
                loss, grad = result
                if grad is not st.G:
                    np.copyto(st.G, _matrix("the returned gradient", grad, st.shape))
            else:
                loss = result
            c_double_at(loss_out).value = _real("the returned loss", loss)
            return 0
        except BaseException as exc:  # nothing may cross into C
            st.failure = exc
            return 1

    return loss_callback


class Optimizer(_Object):
    """SGD (with momentum), Adam or AdamW for a prompt, with warmup, a constant, linear or
    cosine schedule and global-norm clipping; update rules and defaults as torch.optim's.

    Keyword-only options; the defaults shown are the library's
    (ulpt_optimizer_options_init).  ``lr`` > 0 is the peak rate; ``weight_decay`` None
    means torch's default for the kind (0.01 for AdamW, 0 for Adam and SGD);
    ``max_grad_norm`` 0 disables clipping; the linear and cosine schedules need
    ``total_steps`` > ``warmup_steps`` (in steps).

    The optimizer keeps its prompt's memory alive.  Copies and pickles go through a
    checkpoint (prompt and optimizer state, bit-exact).  Raises InvalidArgumentError for
    an option out of range."""

    def __init__(self, prompt: Prompt, *, kind: OptimizerKind = _REQUIRED,
                 lr: float = _REQUIRED, beta1: float = _REQUIRED, beta2: float = _REQUIRED,
                 eps: float = _REQUIRED, weight_decay: Optional[float] = _REQUIRED,
                 momentum: float = _REQUIRED, max_grad_norm: float = _REQUIRED,
                 schedule: Schedule = _REQUIRED, warmup_steps: int = _REQUIRED,
                 total_steps: int = _REQUIRED):
        if not isinstance(prompt, Prompt):
            raise wrong_type("prompt must be a ulpt.Prompt, got %s" % type(prompt).__name__)
        opts = optimizer_defaults()
        opts.kind = coerce(OptimizerKind, kind, "kind")
        for name, value in (("lr", lr), ("beta1", beta1), ("beta2", beta2), ("eps", eps),
                            ("momentum", momentum), ("max_grad_norm", max_grad_norm)):
            setattr(opts, name, _real(name, value))
        opts.weight_decay = (WEIGHT_DECAY_DEFAULT if weight_decay is None
                             else _real("weight_decay", weight_decay))
        opts.schedule = coerce(Schedule, schedule, "schedule")
        opts.warmup_steps = _int("warmup_steps", warmup_steps, 0, _U64)
        opts.total_steps = _int("total_steps", total_steps, 0, _U64)
        ph = prompt._handle()
        ptr = c_void_p()
        with _Use(((ph, "Optimizer"),), True):
            check(lib.ulpt_optimizer_create(byref(ptr), ph.ptr, byref(opts)))
        self._bind(ptr.value, prompt)

    def _bind(self, ptr, prompt: Prompt):
        ph = prompt._h
        if lib.ulpt_optimizer_prompt(ptr) != ph.ptr:  # a broken invariant, never user error
            raise RuntimeError("ulpt: the optimizer does not update this prompt")
        self._h = _Handle(ptr, lib.ulpt_optimizer_free, (ph,))
        self._ph = ph                 # the prompt's memory, even after prompt.close()
        self.prompt = prompt
        # E and G live in the optimizer: the callback's views keep its handle
        self._serving = _Serving(self._h, prompt.shape)
        self._c_callback = _native.LOSS_FN(_callback(self._serving))
        return self

    def _handles(self, what):
        h = self._handle()
        return ((h, "Optimizer." + what), (self._ph, "Optimizer." + what))

    # -- stepping

    def step(self) -> None:
        """One update with the gradients accumulated in the prompt (clipped first),
        then advance the schedule.  Gradients are not zeroed.  Raises NonFiniteError (a
        gradient is NaN or infinite; nothing changed)."""
        handles = self._handles("step")
        with _Use(handles, True):
            check(lib.ulpt_optimizer_step(handles[0][0].ptr))

    def zero_grad(self) -> None:
        """Zero the prompt's gradients (as torch's optimizer.zero_grad())."""
        handles = self._handles("zero_grad")
        with _Use(handles[1:], True):
            lib.ulpt_prompt_zero_grad(self._ph.ptr)

    def train_step(self, loss_fn: LossFn) -> float:
        """One training step driven by the host's loss; returns the loss.

        ``loss_fn(E, G)`` receives E, the prompt embeddings, as a read-only
        (n_tokens, dim) float32 view, and G, a zeroed writable view of the same shape:
        it writes dL/dE into G and returns the loss.  It may instead return
        ``(loss, grad)`` with grad any real array of that shape, and may take E alone,
        ``loss_fn(E) -> (loss, grad)``.  Both views are the library's own buffers, reused
        every step (no copies): copy E if you keep it past the call.

        If the step fails nothing changes (parameters, gradients, optimizer state).
        KeyboardInterrupt, SystemExit and GeneratorExit raised by loss_fn propagate as
        themselves; any other exception becomes CallbackError with it as __cause__.  A
        NaN or infinite loss or gradient raises NonFiniteError.  Raises BusyError when
        called from a loss callback of the same prompt or optimizer."""
        st = self._serving
        st.use(loss_fn)
        handles = self._handles("train_step")
        ph, op = self._ph, handles[0][0]
        loss = c_double()
        _serve(st, handles, ph, lambda: lib.ulpt_train_step(ph.ptr, op.ptr, self._c_callback,
                                                            None, byref(loss)))
        return loss.value

    # -- state

    @property
    def step_count(self) -> int:
        """The number of steps taken."""
        return lib.ulpt_optimizer_step_count(self._handle().ptr)

    @property
    def lr(self) -> float:
        """The learning rate the next step will use, lr * m(step_count), exactly as the
        library computes it (double precision)."""
        return lib.ulpt_optimizer_lr_double(self._handle().ptr)

    @property
    def lr_float32(self) -> float:
        """``lr`` rounded to float32, as ulpt_optimizer_lr gives it to C callers."""
        return lib.ulpt_optimizer_lr(self._handle().ptr)

    # -- checkpoints

    def save_checkpoint(self, path: PathLike) -> None:
        """Save the prompt (f32) with this optimizer's options, step count and moments,
        atomically; resuming from it gives bit-identical training.  Raises FileIOError,
        NonFiniteError."""
        raw = _path(path)
        handles = self._handles("save_checkpoint")
        with _Use(handles, False):
            check(lib.ulpt_checkpoint_save(self._ph.ptr, handles[0][0].ptr, raw), path)

    @classmethod
    def load_checkpoint(cls, path: PathLike) -> "Optimizer":
        """A new Optimizer resumed from a checkpoint; its restored prompt is
        ``.prompt``.  Raises as Prompt.load; FormatError for a plain prompt file."""
        raw, pp, op = _path(path), c_void_p(), c_void_p()
        check(lib.ulpt_checkpoint_load(byref(pp), byref(op), raw), path)
        prompt = Prompt._from_ptr(pp.value)
        return cls.__new__(cls)._bind(op.value, prompt)

    def to_bytes(self) -> bytes:
        """The checkpoint's bytes (through a temporary file)."""
        with tempfile.TemporaryDirectory(prefix="ulpt-") as tmp:
            path = os.path.join(tmp, "checkpoint.ulpt")
            self.save_checkpoint(path)
            with open(path, "rb") as f:
                return f.read()

    @classmethod
    def from_bytes(cls, data: bytes, prompt: Optional[Prompt] = None) -> "Optimizer":
        """An Optimizer from checkpoint bytes.  With `prompt` (a Prompt nothing else uses
        yet, e.g. a fresh copy), that object takes the checkpoint's prompt, so that
        copies of a prompt and its optimizer stay paired."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise wrong_type("data must be bytes, got %s" % type(data).__name__)
        with tempfile.TemporaryDirectory(prefix="ulpt-") as tmp:
            path = os.path.join(tmp, "checkpoint.ulpt")
            with open(path, "wb") as f:
                f.write(data)
            opt = cls.load_checkpoint(path)
        if prompt is not None:
            prompt._attach(opt._ph)
            opt.prompt = prompt
        return opt

    def save_pretrained(self, directory: PathLike, *, task_type: str = "CAUSAL_LM") -> None:
        """save_pretrained for the prompt, plus `directory`/ulpt_checkpoint.ulpt so that
        Optimizer.from_pretrained resumes training."""
        from .pretrained import save_pretrained
        save_pretrained(self.prompt, directory, task_type=task_type, optimizer=self)

    @classmethod
    def from_pretrained(cls, directory: PathLike, **options) -> "Optimizer":
        """Resume from the checkpoint save_pretrained wrote into `directory`, or, when
        there is none, a new Optimizer(**options) for the saved prompt."""
        from .pretrained import load_pretrained
        prompt, opt = load_pretrained(directory)
        return opt if opt is not None else cls(prompt, **options)

    def __reduce__(self):
        return (_restore_optimizer, (self.to_bytes(), self.prompt))

    def __copy__(self):
        return self.__deepcopy__({})

    def __deepcopy__(self, memo):
        data = self.to_bytes()
        prompt = memo.get(id(self.prompt))
        if prompt is None:
            prompt = memo[id(self.prompt)] = Prompt.__new__(Prompt)
        return Optimizer.from_bytes(data, prompt)

    def __repr__(self):
        if self.closed:
            return "<ulpt.Optimizer closed>"
        return "<ulpt.Optimizer for a (%d, %d) prompt: step %d, next lr %.6g>" % (
            self.prompt.n_tokens, self.prompt.dim, self.step_count, self.lr)


def _restore_optimizer(data, prompt):
    return Optimizer.from_bytes(data, prompt)


WEIGHT_DECAY_DEFAULT = -1.0  # ULPT_WEIGHT_DECAY_DEFAULT

_od = optimizer_defaults()
_set_kwdefaults(Optimizer.__init__, dict(
    kind=OptimizerKind(_od.kind), lr=_od.lr, beta1=_od.beta1, beta2=_od.beta2, eps=_od.eps,
    weight_decay=None if _od.weight_decay == WEIGHT_DECAY_DEFAULT else _od.weight_decay,
    momentum=_od.momentum, max_grad_norm=_od.max_grad_norm,
    schedule=Schedule(_od.schedule), warmup_steps=_od.warmup_steps,
    total_steps=_od.total_steps))
del _od

# ----------------------------------------------------------------------------- files


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
