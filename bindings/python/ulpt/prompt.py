"""The prompt: Z, s and b, E = (Z . P) * s + b, its metadata and its files
(ulpt_prompt_* as ``ulpt.Prompt``)."""

from __future__ import annotations

import ctypes
from collections.abc import MutableMapping
from ctypes import byref, c_char_p, c_double, c_size_t, c_void_p
from typing import Iterator, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _adapter
from ._args import _U32, _U64, ArrayLike, PathLike, _int, _matrix, _path, _real, _text
from ._handle import _Handle, _Object, _Use, _view
from ._native import check, lib
from .defaults import (_REQUIRED, _set_kwdefaults, fit_defaults, prompt_defaults,
                       save_defaults)
from .enums import DType, Flags, ProjectionKind, coerce
from .errors import invalid, wrong_type
from .projection import Projection


def _overlaps(arr: np.ndarray, address: int, count: int) -> bool:
    """Whether arr's memory meets the `count` floats at `address`."""
    lo, hi = np.byte_bounds(arr)
    return lo < address + 4 * count and address < hi


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
        with _Use(p._reading("meta"), False) as h:
            value = lib.ulpt_prompt_get_meta(h.ptr, k)
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
        with _Use(p._reading("meta"), False) as h:
            for i in range(lib.ulpt_prompt_meta_count(h.ptr)):
                check(lib.ulpt_prompt_meta_at(h.ptr, i, byref(k), byref(v)))
                keys.append(k.value)
        return keys

    def __iter__(self) -> Iterator:
        return iter([self._out(k) for k in self._keys()])

    def __len__(self) -> int:
        p = self._prompt
        with _Use(p._reading("meta"), False) as h:
            return lib.ulpt_prompt_meta_count(h.ptr)

    def __repr__(self):
        return "%s(%r)" % ("ulpt.Metadata" + ("Bytes" if self._raw else ""), dict(self.items()))



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
        self._fresh()
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
        with _Use(self._reading("meta"), True) as h:
            check(lib.ulpt_prompt_set_meta(h.ptr, key, value))

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
        if _overlaps(out, lib.ulpt_prompt_params(h.ptr), self.num_params):
            raise invalid("out overlaps the prompt's parameters, which forward reads")
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
        if _overlaps(g, lib.ulpt_prompt_grads(h.ptr), self.num_params):
            g = g.copy()  # backward adds into grads while it reads G
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
        if _overlaps(t, lib.ulpt_prompt_params(h.ptr), self.num_params):
            t = t.copy()  # the fit rewrites the parameters while it reads the target
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
        written), FileIOError (also for a path that exists and is not a regular file or
        a symlink to one: a device or FIFO is never replaced)."""
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
        (adapter_model.safetensors, E of the parameters as stored in `dtype`, and
        adapter_config.json); see ulpt.pretrained."""
        _adapter.save(self, directory, task_type, coerce(DType, dtype, "dtype"))

    @classmethod
    def from_pretrained(cls, directory: PathLike) -> "Prompt":
        """The prompt save_pretrained wrote into `directory` (from its checkpoint when
        an optimizer was saved with it)."""
        checkpoint = _adapter.checkpoint_file(directory)
        if checkpoint is None:
            return cls.load(_adapter.prompt_file(directory))
        pp, op = c_void_p(), c_void_p()
        check(lib.ulpt_checkpoint_load(byref(pp), byref(op), _path(checkpoint)), checkpoint)
        lib.ulpt_optimizer_free(op.value)
        return cls._from_ptr(pp.value)

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
