"""ulpt_set_allocator from Python: the library's allocations through Python callbacks.

A ctypes callback that raises returns garbage to C (ctypes prints "Exception ignored"
and leaves the return value uninitialised): a garbage pointer from alloc would be
written to and freed.  So each Python callback of the struct is wrapped in one that
catches everything: a failed alloc or realloc returns NULL, which the library reports as
ULPT_ERR_NOMEM (MemoryError), and a failed free is ignored.
"""

from __future__ import annotations

import gc
from ctypes import byref

from . import _native
from ._native import check, lib
from .errors import wrong_type

_keep: list = []   # installed allocators: objects made under one are freed through it


def _python_callable(struct, index):
    """The Python function behind field `index` of a ctypes struct of function pointers,
    or None for a C function (which cannot raise).  ctypes keeps a callback's thunk in
    the struct's _objects; the thunk refers to the Python callable."""
    objects = getattr(struct, "_objects", None) or {}
    kept = objects.get(str(index))
    thunks = kept.values() if isinstance(kept, dict) else [kept]
    for thunk in thunks:
        if type(thunk).__name__ != "CThunkObject":
            continue
        for ref in gc.get_referents(thunk):
            if callable(ref) and not isinstance(ref, type):
                return ref
    return None


def _guarded(fn, failed):
    def call(*args):
        try:
            return fn(*args)
        except BaseException:   # nothing may cross into C
            return failed
    call.__wrapped__ = fn
    return call


def set_allocator(allocator: "_native.ulpt_allocator | None") -> None:
    """Route the library's allocations through a ``ulpt.ulpt_allocator`` ctypes struct
    (alloc, realloc, free, user), or back to malloc with None.  The struct and its
    callbacks are kept alive for the rest of the process: objects created under an
    allocator are freed through it.  A Python alloc or realloc that raises counts as
    returning NULL (the call raises OutOfMemoryError); a free that raises is ignored.
    Not thread-safe (as ulpt_set_allocator)."""
    if allocator is None:
        check(lib.ulpt_set_allocator(None))
        return
    if not isinstance(allocator, _native.ulpt_allocator):
        raise wrong_type("allocator must be a ulpt.ulpt_allocator or None, got %s"
                         % type(allocator).__name__)
    fields = []
    for index, (name, kind, failed) in enumerate((("alloc", _native.ALLOC_FN, None),
                                                  ("realloc", _native.REALLOC_FN, None),
                                                  ("free", _native.FREE_FN, None))):
        fn = _python_callable(allocator, index)
        fields.append(getattr(allocator, name) if fn is None else kind(_guarded(fn, failed)))
    safe = _native.ulpt_allocator(*fields, allocator.user)
    check(lib.ulpt_set_allocator(byref(safe)))
    _keep.append((allocator, safe))

