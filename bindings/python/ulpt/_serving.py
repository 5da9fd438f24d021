"""Running a C step that calls back into Python: the loss callback's shared state, the
step's exclusive hold on its objects, and signals.

Nothing may cross from a ctypes callback into C: an exception that escapes one is printed
("Exception ignored on calling ctypes callback function") and the C side reads an
uninitialised return value.  The callbacks catch everything in their body, but a signal
whose Python handler raises (SIGINT's KeyboardInterrupt) would be raised at the very
start of the callback, before any try.  So while a step runs in the main thread the
Python-level signal handlers are replaced by one that only records the signal: the
callback's body runs the recorded handlers itself (a raise fails the step, which then
changes nothing), a signal that arrives while the callback's body runs goes to its real
handler at once, and one that arrives after the callback returned is handled when the
step has returned.
"""

from __future__ import annotations

import inspect as _inspect
import signal
import threading

from ._handle import _Handle, _Use
from ._native import check, lib
from .errors import ERR_CALLBACK, error, wrong_type


class _Serving:
    """The state a loss callback shares with the step that runs it: built once per
    optimizer or trainer, so that a step costs one call into Python and no allocation of
    views.  ``two_args``: the host function takes (E, out) rather than (E)."""

    __slots__ = ("fn", "two_args", "failure", "e_addr", "g_addr", "E", "G", "handle",
                 "shape", "signals")

    def __init__(self, handle, shape):
        self.fn = None
        self.two_args = False
        self.failure = None
        self.e_addr = self.g_addr = None
        self.E = self.G = None
        self.handle = handle
        self.shape = shape
        self.signals = None   # the step's _Signals while it runs in the main thread

    def use(self, fn):
        if fn is not self.fn:
            if not callable(fn):
                raise wrong_type("loss_fn must be callable, got %s" % type(fn).__name__)
            self.two_args = _takes_two(fn)
            self.fn = fn

    def enter(self):
        """Called first in the callback's body (inside its try): from here on signals go
        to their handlers, and those that arrived while C ran are handled now."""
        sig = self.signals
        if sig is not None:
            sig.direct = True
            sig.run()

    def leave(self):
        """Called last in the callback's body, on every path."""
        sig = self.signals
        if sig is not None:
            sig.direct = False


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


class _Signals:
    """The main thread's Python signal handlers, deferred while a step runs in C."""

    __slots__ = ("saved", "pending", "direct")

    def __init__(self):
        self.saved = {}
        self.pending = []
        self.direct = False

    def install(self):
        for sig in _HANDLED:
            handler = signal.getsignal(sig)
            if callable(handler):
                self.saved[sig] = handler
                signal.signal(sig, self.handler)

    def handler(self, signum, frame):
        if self.direct:
            self.saved[signum](signum, frame)
        else:
            self.pending.append((signum, frame))

    def run(self):
        while self.pending:
            signum, frame = self.pending.pop(0)
            self.saved[signum](signum, frame)

    def restore(self):
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


_HANDLED = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]


def _serve(st: _Serving, fn, handles, ph: _Handle, step) -> float:
    """Run `step()`, a C call that calls back into Python through `st` with `fn`,
    holding `handles` for writing; the prompt `ph` may be read from the callback.
    Returns step()'s loss.  A failed callback's exception comes out as itself when it is
    KeyboardInterrupt, SystemExit or GeneratorExit, and as CallbackError caused by it
    otherwise; signals handled while C ran come out after it."""
    sig = None
    with _Use(handles, True):
        st.use(fn)                 # installed only once the step holds its objects
        ph.serving = True
        st.failure = None
        if threading.current_thread() is threading.main_thread():
            sig = _Signals()
            st.signals = sig
            sig.install()
        try:
            rc, loss = step()
        finally:
            st.signals = None
            if sig is not None:
                sig.restore()
        failure, st.failure = st.failure, None
    if sig is not None:
        sig.run()                  # signals that arrived after the callback
    if rc == ERR_CALLBACK and failure is not None:
        if not isinstance(failure, Exception):
            raise failure
        raise error(rc, "%s: %s: %s" % (lib.ulpt_last_error().decode("utf-8", "replace"),
                                        type(failure).__name__, failure)) from failure
    check(rc)
    return loss
