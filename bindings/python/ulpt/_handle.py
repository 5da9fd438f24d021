"""Handles and lifetimes: who owns a C object's memory and who may use it right now.

Memory safety rests on one rule: a C handle belongs to a small `_Handle` object that frees
it when the last Python reference goes.  Prompts, optimizers, projections and every NumPy
view onto the library's buffers hold a reference to the handles they use, so closing an
object only drops its own claim; the memory goes when nothing can reach it any more.

A handle also records who is using it, as a readers-writer lock taken around each C call:

- a writer (a step, backward, zero_grad, a metadata change...) holds its handles
  exclusively from entry to return.  It waits for reads running in other threads (C
  calls, short), and raises BusyError when another writer holds one of them: two
  steps never wait for each other, so they cannot deadlock;
- a reader (forward, save, metadata...) in another thread waits until the writer returns;
  in the writer's own thread -- its loss callback -- it runs at once when the writer
  serves a callback (reads are fine there), and raises BusyError otherwise;
- a write from the writer's own thread (a step inside its own callback) raises BusyError
  naming what holds the object;
- a thread inside a step (its loss callback) never waits for another thread's step: a
  read of an object that step holds raises BusyError (two callbacks reading each other's
  prompt waited for each other forever);
- a write on an object this thread is reading (a signal handler's, inside a forward)
  raises BusyError instead of waiting for itself.

All handles of one call are taken at once under one condition variable, so no order of
acquisition can deadlock.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Optional

import numpy as np

from .errors import ERR_BUSY, BusyError, ClosedError, ERR_INVALID, InvalidArgumentError

_lock = threading.Condition(threading.RLock())
# The condition's own lock, entered and left in C: `with _mutex:` runs no Python code of
# its own, so a signal handler that raises cannot leave it held.
_mutex = _lock._lock

# The writing _Use of each thread that is inside a writing call (a step), as
# {weakref to the _Use: thread}: a thread in a step never waits for another step.
_writers = {}


def _live(table):
    """Drop the entries of `table` ({weakref: thread}) whose _Use is gone: a signal
    handler that raised between a _Use's bookkeeping and its try left them behind; the
    _Use itself goes with the exception.  Returns the threads of the live ones."""
    dead = [r for r in table if r() is None]
    for r in dead:
        del table[r]
    return table.values()


class _Handle:
    """One C handle: freed when the last reference goes; tracks its users."""

    __slots__ = ("ptr", "free", "deps", "readers", "writer", "wtoken", "owner", "serving",
                 "waiting", "__weakref__")

    def __init__(self, ptr, free, deps=()):
        self.ptr = ptr
        self.free = free          # None for a borrowed handle
        self.deps = deps          # handles that must outlive this one
        self.readers = {}         # {weakref to the reading _Use: its thread}
        self.writer = None        # what holds it for writing ("Optimizer.train_step")
        self.wtoken = None        # ... through which _Use (a weakref)
        self.owner = None         # ... in which thread (threading.Thread)
        self.serving = False      # ... and is waiting in its loss callback
        self.waiting = 0          # writers waiting for the readers to finish

    def __reduce__(self):
        raise TypeError("a libulpt handle cannot be pickled or copied")

    def __del__(self):
        ptr, self.ptr = self.ptr, None
        if ptr and self.free is not None:
            self.free(ptr)


def _writer(h: _Handle):
    """What holds `h` for writing, or None (a holder whose _Use is gone is forgotten)."""
    if h.writer is not None and h.wtoken() is None:
        h.writer = h.owner = h.wtoken = None
        h.serving = False
    return h.writer


def _busy(what, h: _Handle, me) -> BusyError:
    where = ("in this thread (from its loss callback)" if h.owner is me
             else "in thread %r" % h.owner.name)
    return BusyError(ERR_BUSY, "%s: the object is in use by a running %s %s"
                     % (what, h.writer, where))


def _in_step(me) -> bool:
    return any(t is me for t in _live(_writers))


def _blocker(handles, write, me) -> Optional[_Handle]:
    """The handle a call must wait for, None when it may start; raises BusyError when
    waiting could never end: a write on what this thread reads, or a thread inside a step
    (its loss callback) waiting for another step, which may be waiting for it."""
    for h, what in handles:
        if _writer(h) is not None:
            if h.owner is me:
                if write or not h.serving:
                    raise _busy(what, h, me)
            elif write:
                raise _busy(what, h, me)
            elif _in_step(me):
                raise BusyError(ERR_BUSY, "%s: the object is in use by a running %s in "
                                "thread %r, and this thread is inside a step itself: it "
                                "does not wait for another step (that one could be waiting "
                                "for this one)" % (what, h.writer, h.owner.name))
            else:
                return h
            continue
        readers = _live(h.readers)
        if write and readers:
            if any(t is me for t in readers):
                raise BusyError(ERR_BUSY, "%s: this thread is reading the object already "
                                "(a signal handler run inside a call on it?): the write "
                                "would wait for itself" % what)
            return h
        if not write and h.waiting and not _in_step(me) and \
                not any(t is me for t in readers):
            return h          # a writer waits: let it in first, or it could starve
    return None


class _Use:
    """``with _Use(((handle, "Prompt.forward"), ...), write) as h: <C call on h.ptr>``.

    ``as`` gives the first handle: use its ``ptr``, never ``self._h.ptr``, which a close()
    in another thread may have set to None meanwhile (the _Use keeps the handle itself
    alive until the call returns).

    The hold is recorded against this _Use (a weakref), so that a signal handler raising
    after the bookkeeping of __enter__ or before that of __exit__ cannot leave it held:
    the _Use goes with the exception, and the hold with it."""

    __slots__ = ("handles", "write", "__weakref__")

    def __init__(self, handles, write):
        self.handles, self.write = handles, write

    def __enter__(self):
        me = threading.current_thread()
        handles, write = self.handles, self.write
        with _mutex:
            blocker = _blocker(handles, write, me)
            if blocker is not None:
                if write:
                    for h, _ in handles:
                        h.waiting += 1
                try:
                    while blocker is not None:
                        _lock.wait(0.05)    # also sees holds whose _Use went
                        blocker = _blocker(handles, write, me)
                finally:
                    if write:
                        for h, _ in handles:
                            h.waiting -= 1
                    _lock.notify_all()
            token = weakref.ref(self)
            for h, what in handles:
                if write:
                    h.writer, h.owner, h.wtoken = what, me, token
                else:
                    h.readers[token] = me
            if write:
                _writers[token] = me
        return handles[0][0]

    def __exit__(self, *exc):
        with _mutex:
            token = weakref.ref(self)
            for h, _ in self.handles:
                if self.write:
                    if h.wtoken == token:
                        h.writer = h.owner = h.wtoken = None
                        h.serving = False
                else:
                    h.readers.pop(token, None)
            _writers.pop(token, None)
            _lock.notify_all()


class _Object:
    """Common behaviour: close(), context manager, closed state."""

    _h: Optional[_Handle] = None

    def _fresh(self) -> None:
        """Refuse a second __init__: it would swap the C object under the optimizers,
        views and callbacks that hold the first one."""
        if "_h" in vars(self):
            raise InvalidArgumentError(ERR_INVALID, "%s.__init__ called on an existing %s: "
                                       "create a new one" % ((type(self).__name__,) * 2))

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
        Raises BusyError while a step on the object runs."""
        h = self._h
        if h is None:
            return
        with _mutex:
            if _writer(h) is not None:
                raise _busy("%s.close" % type(self).__name__, h, threading.current_thread())
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _view(h: _Handle, address: int, shape, writable=True, ctype=ctypes.c_float) -> np.ndarray:
    """A NumPy view (float32, or float64 for ctype c_double) of library memory at
    `address` that keeps `h` alive."""
    count = int(np.prod(shape))
    buf = (ctype * count).from_address(address)
    buf._ulpt_handle = h  # the array's base is buf; buf holds the handle
    # a read-only view's buffer is read-only too: setflags(write=True) cannot undo it
    src = buf if writable else memoryview(buf).toreadonly()
    return np.frombuffer(src, dtype=np.dtype(ctype)).reshape(shape)
