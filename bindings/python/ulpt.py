"""ctypes binding for libulpt (Ultra-Low-dimensional Prompt Tuning).

The library is loaded from $ULPT_LIBRARY if set, else from ../../lib/libulpt.so.1 next to
this file (the build tree), else from wherever ctypes.util.find_library("ulpt") finds it.
NumPy is optional: with it, arrays come back as numpy float32 arrays (``params`` and
``grads`` are views onto the library's own buffers); without it, as ctypes float arrays.

Usage::

    import numpy as np
    import ulpt

    with ulpt.Prompt(n_tokens=10, dim=768, rank=2, projection_seed=1) as prompt, \\
         ulpt.Optimizer(prompt, lr=1e-3, schedule=ulpt.SCHED_LINEAR,
                        warmup_steps=50, total_steps=1000, max_grad_norm=1.0) as opt:
        target = np.zeros((10, 768), np.float32)

        def loss_fn(E):                      # E: (n_tokens, dim) float32, a copy
            diff = E - target
            return float((diff ** 2).sum()), 2 * diff

        for _ in range(100):
            loss = opt.train_step(loss_fn)   # forward, loss_fn, backward, step

        E = prompt.forward()                 # (n_tokens, dim) float32

    # Or drive the steps yourself (gradient accumulation):
    #     prompt.zero_grad(); prompt.backward(G1); prompt.backward(G2); opt.step()

A failing call raises UlptError(code, message), message from ulpt_last_error().
"""

import ctypes
import ctypes.util
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_float, c_int,
                    c_size_t, c_uint, c_uint32, c_uint64, c_void_p)

try:
    import numpy as np
except ImportError:  # pragma: no cover - exercised only without numpy
    np = None

# ----------------------------------------------------------------------------- constants

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

PROJ_XAVIER_UNIFORM = 0
PROJ_KAIMING_UNIFORM = 1
PROJ_GAUSSIAN = 2
PROJ_RADEMACHER = 3
PROJ_IDENTITY = 4

NO_SCALE = 1
NO_SHIFT = 2

OPT_SGD = 0
OPT_ADAM = 1
OPT_ADAMW = 2

SCHED_CONSTANT = 0
SCHED_LINEAR = 1
SCHED_COSINE = 2

PROMPT_OPTIONS_VERSION = 1
OPTIMIZER_OPTIONS_VERSION = 1

# ----------------------------------------------------------------------------- structs


class ulpt_prompt_options(Structure):
    _fields_ = [
        ("version", c_uint),
        ("n_tokens", c_uint32),
        ("rank", c_uint32),
        ("dim", c_uint32),
        ("n_groups", c_uint32),
        ("projection_seed", c_uint64),
        ("projection_kind", c_int),
        ("init_seed", c_uint64),
        ("init_std", c_float),
        ("flags", c_uint),
    ]


class ulpt_optimizer_options(Structure):
    _fields_ = [
        ("version", c_uint),
        ("kind", c_int),
        ("lr", c_double),
        ("beta1", c_double),
        ("beta2", c_double),
        ("eps", c_double),
        ("weight_decay", c_double),
        ("momentum", c_double),
        ("max_grad_norm", c_double),
        ("schedule", c_int),
        ("warmup_steps", c_uint64),
        ("total_steps", c_uint64),
    ]


ALLOC_FN = CFUNCTYPE(c_void_p, c_void_p, c_size_t)
REALLOC_FN = CFUNCTYPE(c_void_p, c_void_p, c_void_p, c_size_t)
FREE_FN = CFUNCTYPE(None, c_void_p, c_void_p)


WEIGHT_DECAY_DEFAULT = -1.0  # torch's default for the kind: AdamW 0.01, Adam/SGD 0
DTYPE_F32 = 0
DTYPE_F16 = 1
DTYPE_BF16 = 2
FILE_PROMPT = 1
FILE_CHECKPOINT = 2


class ulpt_save_options(Structure):
    _fields_ = [("version", c_uint), ("dtype", c_int), ("level", c_int)]


class ulpt_file_info(Structure):
    _fields_ = [("version", c_uint), ("kind", c_int), ("format_major", c_uint),
                ("format_minor", c_uint),
                ("dtype", c_int), ("file_bytes", c_uint64), ("stored_bytes", c_uint64)]


def save_options(dtype=DTYPE_F32, level=6):
    """ulpt_save_options as ULPT_SAVE_OPTIONS_INIT, with these fields."""
    return ulpt_save_options(1, dtype, level)


def _path(path):
    return os.fsencode(path)


def inspect(path):
    """ulpt_file_inspect: a dict describing a checked prompt file or checkpoint."""
    info = ulpt_file_info()
    info.version = 1
    _check(lib.ulpt_file_inspect(_path(path), ctypes.byref(info)))
    return {name: getattr(info, name) for name, _ in ulpt_file_info._fields_ if name != "version"}


class ulpt_allocator(Structure):
    _fields_ = [("alloc", ALLOC_FN), ("realloc", REALLOC_FN), ("free", FREE_FN),
                ("user", c_void_p)]


# int (*)(void *user, const float *E, uint32_t n_tokens, uint32_t dim, float *grad, double *loss)
ulpt_loss_fn = CFUNCTYPE(c_int, c_void_p, POINTER(c_float), c_uint32, c_uint32,
                         POINTER(c_float), POINTER(c_double))


def _fill(struct, kwargs):
    for key, value in kwargs.items():
        if key == "version" or key not in dict(struct._fields_):
            raise TypeError("unknown option %r for %s" % (key, type(struct).__name__))
        setattr(struct, key, value)
    return struct


def prompt_options(**kwargs):
    """A ulpt_prompt_options with ULPT_PROMPT_OPTIONS_INIT's defaults, then `kwargs`."""
    return _fill(ulpt_prompt_options(PROMPT_OPTIONS_VERSION, 0, 2, 0, 1, 0,
                                     PROJ_XAVIER_UNIFORM, 0, 1.0, 0), kwargs)


def optimizer_options(**kwargs):
    """A ulpt_optimizer_options with ULPT_OPTIMIZER_OPTIONS_INIT's defaults, then `kwargs`."""
    return _fill(ulpt_optimizer_options(OPTIMIZER_OPTIONS_VERSION, OPT_ADAMW, 1e-3, 0.9,
                                        0.999, 1e-8, WEIGHT_DECAY_DEFAULT, 0.0, 0.0,
                                        SCHED_CONSTANT, 0, 0),
                 kwargs)


# ----------------------------------------------------------------------------- loading


def _load():
    path = os.environ.get("ULPT_LIBRARY")
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "lib", "libulpt.so.1")
        if not os.path.exists(path):
            path = ctypes.util.find_library("ulpt")
    if not path:
        raise OSError("libulpt not found: set ULPT_LIBRARY to the path of libulpt.so.1")
    return ctypes.CDLL(path)


lib = _load()

_P = c_void_p  # opaque handles
_FLOATP = POINTER(c_float)
_SIGNATURES = {
    "ulpt_version": (c_uint, []),
    "ulpt_version_string": (c_char_p, []),
    "ulpt_strerror": (c_char_p, [c_int]),
    "ulpt_last_error": (c_char_p, []),
    "ulpt_set_allocator": (c_int, [POINTER(ulpt_allocator)]),
    "ulpt_set_num_threads": (c_int, [c_int]),
    "ulpt_projection_create": (c_int, [POINTER(_P), c_uint64, c_uint32, c_uint32, c_int]),
    "ulpt_projection_free": (None, [_P]),
    "ulpt_projection_data": (_FLOATP, [_P]),
    "ulpt_projection_seed": (c_uint64, [_P]),
    "ulpt_projection_rank": (c_uint32, [_P]),
    "ulpt_projection_dim": (c_uint32, [_P]),
    "ulpt_projection_kind": (c_int, [_P]),
    "ulpt_prompt_create": (c_int, [POINTER(_P), POINTER(ulpt_prompt_options)]),
    "ulpt_prompt_free": (None, [_P]),
    "ulpt_prompt_forward": (c_int, [_P, _FLOATP, c_size_t]),
    "ulpt_prompt_backward": (c_int, [_P, _FLOATP, c_size_t]),
    "ulpt_prompt_zero_grad": (None, [_P]),
    "ulpt_prompt_num_params": (c_size_t, [_P]),
    "ulpt_prompt_params": (_FLOATP, [_P]),
    "ulpt_prompt_grads": (_FLOATP, [_P]),
    "ulpt_prompt_n_tokens": (c_uint32, [_P]),
    "ulpt_prompt_rank": (c_uint32, [_P]),
    "ulpt_prompt_dim": (c_uint32, [_P]),
    "ulpt_prompt_n_groups": (c_uint32, [_P]),
    "ulpt_prompt_flags": (c_uint, [_P]),
    "ulpt_prompt_projection": (_P, [_P, c_uint32]),
    "ulpt_optimizer_create": (c_int, [POINTER(_P), _P, POINTER(ulpt_optimizer_options)]),
    "ulpt_optimizer_free": (None, [_P]),
    "ulpt_optimizer_step": (c_int, [_P]),
    "ulpt_optimizer_step_count": (c_uint64, [_P]),
    "ulpt_optimizer_lr": (c_float, [_P]),
    "ulpt_optimizer_prompt": (_P, [_P]),
    "ulpt_train_step": (c_int, [_P, _P, ulpt_loss_fn, c_void_p, POINTER(c_double)]),
    "ulpt_prompt_set_meta": (c_int, [_P, c_char_p, c_char_p]),
    "ulpt_prompt_get_meta": (c_char_p, [_P, c_char_p]),
    "ulpt_prompt_meta_count": (c_size_t, [_P]),
    "ulpt_prompt_meta_at": (c_int, [_P, c_size_t, POINTER(c_char_p), POINTER(c_char_p)]),
    "ulpt_prompt_save": (c_int, [_P, c_char_p, POINTER(ulpt_save_options)]),
    "ulpt_prompt_save_buffer": (c_int, [_P, POINTER(c_void_p), POINTER(c_size_t),
                                        POINTER(ulpt_save_options)]),
    "ulpt_free": (None, [c_void_p]),
    "ulpt_prompt_load": (c_int, [POINTER(_P), c_char_p]),
    "ulpt_prompt_load_buffer": (c_int, [POINTER(_P), c_char_p, c_size_t]),
    "ulpt_prompt_load_for_model": (c_int, [POINTER(_P), c_char_p, c_char_p]),
    "ulpt_checkpoint_save": (c_int, [_P, _P, c_char_p]),
    "ulpt_checkpoint_load": (c_int, [POINTER(_P), POINTER(_P), c_char_p]),
    "ulpt_prompt_export_safetensors": (c_int, [_P, c_char_p]),
    "ulpt_file_inspect": (c_int, [c_char_p, POINTER(ulpt_file_info)]),
}
for _name, (_restype, _argtypes) in _SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.restype, _fn.argtypes = _restype, _argtypes

# ----------------------------------------------------------------------------- errors


class UlptError(Exception):
    """A libulpt call failed: `code` is the ULPT_ERR_* value, `message` ulpt_last_error()."""

    def __init__(self, code, message):
        super().__init__("%s (%d): %s" % (strerror(code), code, message))
        self.code = code
        self.message = message


def _check(rc):
    if rc != OK:
        raise UlptError(rc, lib.ulpt_last_error().decode("utf-8", "replace"))
    return rc


def version():
    return lib.ulpt_version()


def version_string():
    return lib.ulpt_version_string().decode()


def strerror(code):
    return lib.ulpt_strerror(code).decode()


def set_num_threads(n):
    _check(lib.ulpt_set_num_threads(n))


def _float_array(ptr, count, shape=None, owner=None):
    """A view of `count` floats at `ptr`: numpy (reshaped to `shape`) or a ctypes array.
    The view keeps `owner` (the object whose memory it shows) alive."""
    buf = ctypes.cast(ptr, POINTER(c_float * count)).contents
    buf._ulpt_owner = owner
    if np is not None:
        arr = np.ctypeslib.as_array(buf)  # its base is buf, which holds owner
        return arr.reshape(shape) if shape is not None else arr
    return buf


def _as_float_buffer(values, count):
    """`values` as a contiguous float32 buffer of `count` elements (kept alive by caller)."""
    if np is not None:
        arr = np.ascontiguousarray(values, dtype=np.float32)
        if arr.size != count:
            raise ValueError("expected %d values, got %d" % (count, arr.size))
        return arr, arr.ctypes.data_as(_FLOATP)
    values = list(values)
    if len(values) != count:
        raise ValueError("expected %d values, got %d" % (count, len(values)))
    buf = (c_float * count)(*values)
    return buf, ctypes.cast(buf, _FLOATP)


# ----------------------------------------------------------------------------- classes


class _Handle:
    _free = None

    def close(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            type(self)._free(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    @property
    def handle(self):
        if not self._handle:
            raise ValueError("%s is closed" % type(self).__name__)
        return self._handle


class Projection(_Handle):
    """A frozen rank x dim projection P, generated from (seed, kind, rank, dim)."""

    _free = lib.ulpt_projection_free

    def __init__(self, seed, rank, dim, kind=PROJ_XAVIER_UNIFORM):
        handle = c_void_p()
        _check(lib.ulpt_projection_create(ctypes.byref(handle), seed, rank, dim, kind))
        self._handle = handle.value

    @staticmethod
    def matrix_of(handle):
        """A copy of P (rank x dim) for a raw projection handle; None for identity."""
        ptr = lib.ulpt_projection_data(handle)
        if not ptr:
            return None
        rank, dim = lib.ulpt_projection_rank(handle), lib.ulpt_projection_dim(handle)
        view = _float_array(ptr, rank * dim, (rank, dim))
        return view.copy() if np is not None else list(view)

    @property
    def matrix(self):
        return Projection.matrix_of(self.handle)

    seed = property(lambda self: lib.ulpt_projection_seed(self.handle))
    rank = property(lambda self: lib.ulpt_projection_rank(self.handle))
    dim = property(lambda self: lib.ulpt_projection_dim(self.handle))
    kind = property(lambda self: lib.ulpt_projection_kind(self.handle))


class Prompt(_Handle):
    """The trainable Z, s, b.  Keyword arguments are ulpt_prompt_options fields."""

    _free = lib.ulpt_prompt_free

    def __init__(self, **options):
        opts = prompt_options(**options)
        handle = c_void_p()
        _check(lib.ulpt_prompt_create(ctypes.byref(handle), ctypes.byref(opts)))
        self._handle = handle.value

    n_tokens = property(lambda self: lib.ulpt_prompt_n_tokens(self.handle))
    rank = property(lambda self: lib.ulpt_prompt_rank(self.handle))
    dim = property(lambda self: lib.ulpt_prompt_dim(self.handle))
    n_groups = property(lambda self: lib.ulpt_prompt_n_groups(self.handle))
    flags = property(lambda self: lib.ulpt_prompt_flags(self.handle))
    num_params = property(lambda self: lib.ulpt_prompt_num_params(self.handle))

    @property
    def params(self):
        """Flat view [Z | s | b] of the parameters (writable; valid while the prompt lives)."""
        return _float_array(lib.ulpt_prompt_params(self.handle), self.num_params, owner=self)

    @property
    def grads(self):
        """Flat view of the gradients, same layout as `params`."""
        return _float_array(lib.ulpt_prompt_grads(self.handle), self.num_params, owner=self)

    def projection(self, group=0):
        """A copy of group `group`'s P (rank x dim; a flat list without numpy), or None for
        the identity projection."""
        handle = lib.ulpt_prompt_projection(self.handle, group)
        if not handle:
            raise IndexError("projection group %d out of range" % group)
        return Projection.matrix_of(handle)

    def projection_handle(self, group=0):
        """The raw ulpt_projection* of group `group` (owned by the prompt), or None."""
        return lib.ulpt_prompt_projection(self.handle, group)

    def forward(self):
        """E = (Z_g P_g) * s + b as a new (n_tokens, dim) float32 array."""
        n, dim = self.n_tokens, self.dim
        if np is not None:
            out = np.empty((n, dim), dtype=np.float32)
            ptr = out.ctypes.data_as(_FLOATP)
        else:
            out = (c_float * (n * dim))()
            ptr = ctypes.cast(out, _FLOATP)
        _check(lib.ulpt_prompt_forward(self.handle, ptr, dim))
        return out

    def backward(self, grad):
        """Add the gradients for G = dL/dE ((n_tokens, dim) floats) to `grads`."""
        keep, ptr = _as_float_buffer(grad, self.n_tokens * self.dim)
        _check(lib.ulpt_prompt_backward(self.handle, ptr, self.dim))
        del keep

    def zero_grad(self):
        lib.ulpt_prompt_zero_grad(self.handle)

    # -- metadata and files

    @classmethod
    def _adopt(cls, handle):
        self = cls.__new__(cls)
        self._handle = handle
        return self

    @classmethod
    def load(cls, path, model=None):
        """Load a prompt file (ulpt_prompt_load, or ulpt_prompt_load_for_model)."""
        handle = c_void_p()
        if model is None:
            _check(lib.ulpt_prompt_load(ctypes.byref(handle), _path(path)))
        else:
            _check(lib.ulpt_prompt_load_for_model(ctypes.byref(handle), _path(path),
                                                  model.encode()))
        return cls._adopt(handle.value)

    @classmethod
    def from_bytes(cls, data):
        handle = c_void_p()
        _check(lib.ulpt_prompt_load_buffer(ctypes.byref(handle), bytes(data), len(data)))
        return cls._adopt(handle.value)

    def save(self, path, dtype=DTYPE_F32, level=6):
        opts = save_options(dtype, level)
        _check(lib.ulpt_prompt_save(self.handle, _path(path), ctypes.byref(opts)))

    def to_bytes(self, dtype=DTYPE_F32, level=6):
        opts, buf, size = save_options(dtype, level), c_void_p(), c_size_t()
        _check(lib.ulpt_prompt_save_buffer(self.handle, ctypes.byref(buf), ctypes.byref(size),
                                           ctypes.byref(opts)))
        try:
            return ctypes.string_at(buf, size.value)
        finally:
            lib.ulpt_free(buf)

    def export_safetensors(self, path):
        _check(lib.ulpt_prompt_export_safetensors(self.handle, _path(path)))

    def set_meta(self, key, value):
        """Set (or, with value None, remove) a metadata key."""
        _check(lib.ulpt_prompt_set_meta(self.handle, key.encode(),
                                        None if value is None else value.encode()))

    @property
    def meta(self):
        """A dict copy of the metadata, in insertion order."""
        out, key, value = {}, c_char_p(), c_char_p()
        for i in range(lib.ulpt_prompt_meta_count(self.handle)):
            _check(lib.ulpt_prompt_meta_at(self.handle, i, ctypes.byref(key), ctypes.byref(value)))
            out[key.value.decode()] = value.value.decode()
        return out


class Optimizer(_Handle):
    """SGD/Adam/AdamW with schedule and clipping for `prompt`.  Keyword arguments are
    ulpt_optimizer_options fields.  Keeps `prompt` alive."""

    _free = lib.ulpt_optimizer_free

    def __init__(self, prompt, **options):
        opts = optimizer_options(**options)
        handle = c_void_p()
        _check(lib.ulpt_optimizer_create(ctypes.byref(handle), prompt.handle,
                                         ctypes.byref(opts)))
        self._handle = handle.value
        self.prompt = prompt

    def step(self):
        _check(lib.ulpt_optimizer_step(self.handle))

    def save_checkpoint(self, path):
        """ulpt_checkpoint_save of the prompt and this optimizer."""
        _check(lib.ulpt_checkpoint_save(self.prompt.handle, self.handle, _path(path)))

    @classmethod
    def load_checkpoint(cls, path):
        """ulpt_checkpoint_load: a new Optimizer whose .prompt is the restored Prompt."""
        prompt, opt = c_void_p(), c_void_p()
        _check(lib.ulpt_checkpoint_load(ctypes.byref(prompt), ctypes.byref(opt), _path(path)))
        self = cls.__new__(cls)
        self.prompt = Prompt._adopt(prompt.value)
        self._handle = opt.value
        return self

    @property
    def lr(self):
        """The learning rate the next step will use."""
        return lib.ulpt_optimizer_lr(self.handle)

    @property
    def step_count(self):
        return lib.ulpt_optimizer_step_count(self.handle)

    def train_step(self, loss_fn):
        """One step driven by `loss_fn(E) -> (loss, grad)`, E an (n_tokens, dim) float32
        copy, grad the same shape.  Returns the loss.  If `loss_fn` raises, nothing changes
        and UlptError(ERR_CALLBACK) is raised from the original exception."""
        failure = []

        def callback(user, embeddings, n_tokens, dim, grad_out, loss_out):
            try:
                count = n_tokens * dim
                E = _float_array(embeddings, count, (n_tokens, dim))
                loss, grad = loss_fn(E.copy() if np is not None else list(E))
                loss = float(loss)
                if np is not None:
                    grad = np.asarray(grad, dtype=np.float32)
                    if grad.shape != (n_tokens, dim):
                        raise ValueError("loss_fn returned a gradient of shape %s, expected %s"
                                         % (grad.shape, (n_tokens, dim)))
                    _float_array(grad_out, count, (n_tokens, dim))[...] = grad
                else:
                    grad = list(grad)
                    if len(grad) != count:
                        raise ValueError("expected %d gradient values" % count)
                    _float_array(grad_out, count)[:] = grad
                loss_out[0] = loss
                return 0
            except BaseException as exc:  # never let an exception cross into C
                failure.append(exc)
                return 1

        c_callback = ulpt_loss_fn(callback)
        loss = c_double()
        rc = lib.ulpt_train_step(self.prompt.handle, self.handle, c_callback, None,
                                 ctypes.byref(loss))
        if rc != OK:
            error = UlptError(rc, lib.ulpt_last_error().decode("utf-8", "replace"))
            raise error from (failure[0] if failure else None)
        return loss.value
