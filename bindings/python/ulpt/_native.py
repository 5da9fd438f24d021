"""Finding libulpt, its C structs and the prototypes of every public function, and
`check`, which turns a return code into its exception.

The library is looked for in this order, and the first copy that loads and is new enough
wins:

1. ``$ULPT_LIBRARY`` (a path) -- when set, nothing else is tried;
2. the installed soname ``libulpt.so.1`` through the system's loader (``LD_LIBRARY_PATH``,
   ``ldconfig``'s cache);
3. ``PREFIX/lib/libulpt.so.1`` beside a package that ``make install PREFIX=...`` put in
   ``PREFIX/lib/pythonX.Y/site-packages``;
4. the build tree's ``lib/libulpt.so.1`` when the package is imported from a checkout;
5. the build tree of the checkout the package was installed from (setup.py records it).
"""

from __future__ import annotations

import ctypes
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_float, c_int,
                    c_size_t, c_uint, c_uint32, c_uint64, c_void_p)
from pathlib import Path

from .errors import OK, UnsupportedError, ERR_UNSUPPORTED, error

# The oldest library this package can drive: 1.2 added the checkpoints in memory that
# copies and pickles of optimizers go through.
REQUIRED_VERSION = 10200

SONAME = "libulpt.so.1"


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


class ulpt_save_options(Structure):
    _fields_ = [("version", c_uint), ("dtype", c_int), ("level", c_int)]


class ulpt_file_info(Structure):
    _fields_ = [("version", c_uint), ("kind", c_int), ("format_major", c_uint),
                ("format_minor", c_uint), ("dtype", c_int), ("file_bytes", c_uint64),
                ("stored_bytes", c_uint64)]


class ulpt_zo_options(Structure):
    _fields_ = [("version", c_uint), ("epsilon", c_double), ("directions", c_uint32),
                ("batch", c_uint32), ("distribution", c_int), ("perturb", c_int),
                ("seed", c_uint64)]


class ulpt_fit_options(Structure):
    _fields_ = [("version", c_uint), ("max_iters", c_uint32), ("tol", c_double)]


class ulpt_bank_request(Structure):
    _fields_ = [("id", c_uint64), ("dst", c_void_p), ("ld", c_size_t)]


ALLOC_FN = CFUNCTYPE(c_void_p, c_void_p, c_size_t)
REALLOC_FN = CFUNCTYPE(c_void_p, c_void_p, c_void_p, c_size_t)
FREE_FN = CFUNCTYPE(None, c_void_p, c_void_p)


class ulpt_allocator(Structure):
    _fields_ = [("alloc", ALLOC_FN), ("realloc", REALLOC_FN), ("free", FREE_FN),
                ("user", c_void_p)]


# int (*)(void *user, const float *E, uint32_t n_tokens, uint32_t dim, float *grad,
#         double *loss).  Pointers arrive as plain ints: cheaper than ctypes pointer objects
# on the per-step path.
LOSS_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_uint32, c_uint32, c_void_p, c_void_p)

# int (*)(void *user, const float *E, uint32_t count, uint32_t n_tokens, uint32_t dim,
#         double *losses)
ZO_LOSS_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_uint32, c_uint32, c_uint32, c_void_p)

_P = c_void_p  # opaque handles
_FP = POINTER(c_float)

SIGNATURES = {
    "ulpt_version": (c_uint, []),
    "ulpt_version_string": (c_char_p, []),
    "ulpt_strerror": (c_char_p, [c_int]),
    "ulpt_last_error": (c_char_p, []),
    "ulpt_set_allocator": (c_int, [POINTER(ulpt_allocator)]),
    "ulpt_set_num_threads": (c_int, [c_int]),
    "ulpt_projection_create": (c_int, [POINTER(_P), c_uint64, c_uint32, c_uint32, c_int]),
    "ulpt_projection_free": (None, [_P]),
    "ulpt_projection_data": (c_void_p, [_P]),
    "ulpt_projection_seed": (c_uint64, [_P]),
    "ulpt_projection_rank": (c_uint32, [_P]),
    "ulpt_projection_dim": (c_uint32, [_P]),
    "ulpt_projection_kind": (c_int, [_P]),
    "ulpt_prompt_options_init": (c_int, [POINTER(ulpt_prompt_options), c_uint]),
    "ulpt_prompt_create": (c_int, [POINTER(_P), POINTER(ulpt_prompt_options)]),
    "ulpt_prompt_create_shared": (c_int, [POINTER(_P), POINTER(ulpt_prompt_options),
                                          POINTER(_P)]),
    "ulpt_prompt_free": (None, [_P]),
    "ulpt_prompt_forward": (c_int, [_P, c_void_p, c_size_t]),
    "ulpt_prompt_backward": (c_int, [_P, c_void_p, c_size_t]),
    "ulpt_prompt_zero_grad": (None, [_P]),
    "ulpt_prompt_num_params": (c_size_t, [_P]),
    "ulpt_prompt_params": (c_void_p, [_P]),
    "ulpt_prompt_grads": (c_void_p, [_P]),
    "ulpt_prompt_n_tokens": (c_uint32, [_P]),
    "ulpt_prompt_rank": (c_uint32, [_P]),
    "ulpt_prompt_dim": (c_uint32, [_P]),
    "ulpt_prompt_n_groups": (c_uint32, [_P]),
    "ulpt_prompt_flags": (c_uint, [_P]),
    "ulpt_prompt_projection": (_P, [_P, c_uint32]),
    "ulpt_optimizer_options_init": (c_int, [POINTER(ulpt_optimizer_options), c_uint]),
    "ulpt_optimizer_create": (c_int, [POINTER(_P), _P, POINTER(ulpt_optimizer_options)]),
    "ulpt_optimizer_free": (None, [_P]),
    "ulpt_optimizer_step": (c_int, [_P]),
    "ulpt_optimizer_step_count": (c_uint64, [_P]),
    "ulpt_optimizer_lr": (c_float, [_P]),
    "ulpt_optimizer_lr_double": (c_double, [_P]),
    "ulpt_optimizer_prompt": (_P, [_P]),
    "ulpt_train_step": (c_int, [_P, _P, LOSS_FN, c_void_p, POINTER(c_double)]),
    "ulpt_zo_options_init": (c_int, [POINTER(ulpt_zo_options), c_uint]),
    "ulpt_zo_create": (c_int, [POINTER(_P), _P, _P, POINTER(ulpt_zo_options)]),
    "ulpt_zo_free": (None, [_P]),
    "ulpt_zo_step": (c_int, [POINTER(c_double), _P, ZO_LOSS_FN, c_void_p]),
    "ulpt_zo_position": (c_uint64, [_P]),
    "ulpt_zo_set_position": (c_int, [_P, c_uint64]),
    "ulpt_zo_direction": (c_int, [c_void_p, _P, c_uint64]),
    "ulpt_zo_get_options": (c_int, [POINTER(ulpt_zo_options), _P]),
    "ulpt_zo_prompt": (_P, [_P]),
    "ulpt_zo_optimizer": (_P, [_P]),
    "ulpt_zo_checkpoint_save": (c_int, [_P, c_char_p]),
    "ulpt_zo_checkpoint_load": (c_int, [POINTER(_P), POINTER(_P), POINTER(_P), c_char_p]),
    "ulpt_fit_options_init": (c_int, [POINTER(ulpt_fit_options), c_uint]),
    "ulpt_prompt_init_from_embeddings": (c_int, [_P, c_void_p, c_size_t,
                                                 POINTER(ulpt_fit_options),
                                                 POINTER(c_double)]),
    "ulpt_bank_create": (c_int, [POINTER(_P), c_char_p, c_uint32]),
    "ulpt_bank_free": (None, [_P]),
    "ulpt_bank_add": (c_int, [_P, POINTER(c_uint64), _P, c_char_p]),
    "ulpt_bank_load_dir": (c_int, [_P, c_char_p, POINTER(c_size_t)]),
    "ulpt_bank_remove": (c_int, [_P, c_uint64]),
    "ulpt_bank_find": (c_int, [_P, c_char_p, POINTER(c_uint64)]),
    "ulpt_bank_n_tokens": (c_int, [_P, c_uint64, POINTER(c_uint32)]),
    "ulpt_bank_count": (c_size_t, [_P]),
    "ulpt_bank_dim": (c_uint32, [_P]),
    "ulpt_bank_model": (c_char_p, [_P]),
    "ulpt_bank_materialise": (c_int, [_P, POINTER(ulpt_bank_request), c_size_t, c_int]),
    "ulpt_prompt_set_meta": (c_int, [_P, c_char_p, c_char_p]),
    "ulpt_prompt_get_meta": (c_char_p, [_P, c_char_p]),
    "ulpt_prompt_meta_count": (c_size_t, [_P]),
    "ulpt_prompt_meta_at": (c_int, [_P, c_size_t, POINTER(c_char_p), POINTER(c_char_p)]),
    "ulpt_save_options_init": (c_int, [POINTER(ulpt_save_options), c_uint]),
    "ulpt_prompt_save": (c_int, [_P, c_char_p, POINTER(ulpt_save_options)]),
    "ulpt_prompt_save_buffer": (c_int, [_P, POINTER(c_void_p), POINTER(c_size_t),
                                        POINTER(ulpt_save_options)]),
    "ulpt_free": (None, [c_void_p]),
    "ulpt_prompt_load": (c_int, [POINTER(_P), c_char_p]),
    "ulpt_prompt_load_buffer": (c_int, [POINTER(_P), c_char_p, c_size_t]),
    "ulpt_prompt_load_for_model": (c_int, [POINTER(_P), c_char_p, c_char_p]),
    "ulpt_checkpoint_save": (c_int, [_P, _P, c_char_p]),
    "ulpt_checkpoint_load": (c_int, [POINTER(_P), POINTER(_P), c_char_p]),
    "ulpt_optimizer_get_options": (c_int, [POINTER(ulpt_optimizer_options), _P]),
    "ulpt_checkpoint_save_buffer": (c_int, [POINTER(c_void_p), POINTER(c_size_t), _P, _P]),
    "ulpt_checkpoint_load_buffer": (c_int, [POINTER(_P), POINTER(_P), c_char_p, c_size_t]),
    "ulpt_zo_checkpoint_save_buffer": (c_int, [POINTER(c_void_p), POINTER(c_size_t), _P]),
    "ulpt_zo_checkpoint_load_buffer": (c_int, [POINTER(_P), POINTER(_P), POINTER(_P),
                                               c_char_p, c_size_t]),
    "ulpt_file_info_init": (c_int, [POINTER(ulpt_file_info), c_uint]),
    "ulpt_file_inspect": (c_int, [c_char_p, POINTER(ulpt_file_info)]),
    "ulpt_prompt_export_safetensors": (c_int, [_P, c_char_p]),
}


def _candidates():
    env = os.environ.get("ULPT_LIBRARY")
    if env:
        return [("$ULPT_LIBRARY", env)]
    here = Path(__file__).resolve().parent           # .../ulpt
    above = here.parent.parent.parent
    found = [("the system loader", SONAME)]
    # PREFIX/lib/pythonX.Y/site-packages/ulpt -> PREFIX/lib
    if (above / SONAME).exists():
        found.append(("the install prefix", str(above / SONAME)))
    # <checkout>/bindings/python/ulpt -> <checkout>/lib
    if (above / "include" / "ulpt.h").exists():
        found.append(("the build tree", str(above / "lib" / SONAME)))
    # the checkout the package was installed from (recorded by setup.py)
    try:
        from ._build_tree import LIBRARY
    except ImportError:
        LIBRARY = None
    if LIBRARY and Path(LIBRARY).exists():
        found.append(("the build tree it was installed from", LIBRARY))
    return found


def _open():
    tried = []
    for where, name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            tried.append("%s (%s): %s" % (name, where, exc))
            continue
        lib.ulpt_version.restype = c_uint
        lib.ulpt_version.argtypes = []
        have = lib.ulpt_version()
        if have // 10000 != REQUIRED_VERSION // 10000 or have < REQUIRED_VERSION:
            tried.append("%s (%s): version %d.%d.%d, this package needs %d.%d or later 1.x"
                         % (name, where, have // 10000, have // 100 % 100, have % 100,
                            REQUIRED_VERSION // 10000, REQUIRED_VERSION // 100 % 100))
            continue
        return lib, name
    raise ImportError("libulpt not found; tried:\n  " + "\n  ".join(tried) +
                      "\nset ULPT_LIBRARY to the path of libulpt.so.1, or run make install")


lib, path = _open()


def _missing(name):
    def call(*args):
        raise UnsupportedError(ERR_UNSUPPORTED, "%s is not in the loaded libulpt (%s)"
                               % (name, path))
    call.__name__ = name
    return call


for _name, (_restype, _argtypes) in SIGNATURES.items():
    try:
        _fn = getattr(lib, _name)
    except AttributeError:  # a symbol of a later minor version than the loaded library
        setattr(lib, _name, _missing(_name))
        continue
    _fn.restype, _fn.argtypes = _restype, _argtypes


def strerror(code: int) -> str:
    """The library's short description of an error code ("invalid argument", ...)."""
    return lib.ulpt_strerror(int(code)).decode()


def check(rc: int, filename=None) -> None:
    """Raise the exception for a nonzero return code, with ulpt_last_error()'s message."""
    if rc != OK:
        raise error(rc, lib.ulpt_last_error().decode("utf-8", "replace"), filename)
