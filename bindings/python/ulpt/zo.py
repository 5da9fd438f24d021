"""Forward-only (zeroth-order) training: ulpt_zo_* as ``ulpt.ZOTrainer``.

For hosts that can run their model forward but not backward: each step asks for the
losses of 2q perturbed prompts theta +- eps*u_j and steps the optimizer on the two-point
estimate of the gradient (include/ulpt.h, "Forward-only training").
"""

from __future__ import annotations

import ctypes
import enum
from ctypes import byref, c_double, c_size_t, c_void_p
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _native
from ._args import _U32, _U64, PathLike, _int, _matrix, _path, _real
from ._handle import _Handle, _Object, _Use, _view
from ._native import check, lib
from ._serving import _Serving, _serve
from .defaults import _REQUIRED, _set_kwdefaults
from .enums import coerce
from .errors import wrong_type
from .optimizer import Optimizer
from .prompt import Prompt


class ZODistribution(enum.IntEnum):
    """How each direction u is drawn (ULPT_ZO_*)."""
    RADEMACHER = 0  #: u_i = +-1
    GAUSSIAN = 1    #: u_i ~ N(0, 1)


class ZOPerturb(enum.IntEnum):
    """Which parameters are perturbed (ULPT_ZO_PERTURB_*)."""
    ALL = 0  #: Z, s and b
    Z = 1    #: Z only; s and b get a zero gradient


@dataclass(frozen=True)
class ZOOptions:
    """A trainer's options as ulpt_zo_get_options reports them (batch resolved)."""
    epsilon: float
    directions: int
    batch: int
    distribution: ZODistribution
    perturb: ZOPerturb
    seed: int


def zo_defaults() -> _native.ulpt_zo_options:
    """ulpt_zo_options as ulpt_zo_options_init fills them."""
    opts = _native.ulpt_zo_options()
    check(lib.ulpt_zo_options_init(byref(opts), 1))
    return opts


def _callback(st: _Serving, k: int):
    def zo_callback(user, e, count, n, d, losses):
        try:
            st.enter()
            try:
                if e != st.e_addr:
                    st.E = _view(st.handle, e, (k,) + st.shape, writable=False)
                    st.e_addr = e
                E = st.E[:count]
                # the losses live in the trainer: the view keeps its handle, as E's does
                out = _view(st.handle, losses, (count,), ctype=c_double)
                result = st.fn(E, out) if st.two_args else st.fn(E)
                if result is not None:
                    out[:] = _matrix("the returned losses", result, (count,))
            finally:
                st.leave()
            return 0
        except BaseException as exc:  # nothing may cross into C
            st.failure = exc
            return 1

    return zo_callback


class ZOTrainer(_Object):
    """Forward-only training of an optimizer's prompt.

    ``ZOTrainer(optimizer, *, epsilon, directions, batch, distribution, perturb, seed)``;
    defaults are the library's (ulpt_zo_options_init): epsilon 1e-3 (the perturbation
    size, > 0), 1 direction a step (2 losses), batch 0 = all 2q prompts in one callback
    call, Rademacher directions, every parameter perturbed, seed 0.  The trainer keeps
    its optimizer and prompt alive.  Raises InvalidArgumentError for bad options."""

    def __init__(self, optimizer: Optimizer, *, epsilon: float = _REQUIRED,
                 directions: int = _REQUIRED, batch: int = _REQUIRED,
                 distribution: ZODistribution = _REQUIRED, perturb: ZOPerturb = _REQUIRED,
                 seed: int = _REQUIRED):
        self._fresh()
        if not isinstance(optimizer, Optimizer):
            raise wrong_type("optimizer must be a ulpt.Optimizer, got %s"
                             % type(optimizer).__name__)
        opts = zo_defaults()
        opts.epsilon = _real("epsilon", epsilon)
        opts.directions = _int("directions", directions, 1, _U32)
        opts.batch = _int("batch", batch, 0, _U32)
        opts.distribution = coerce(ZODistribution, distribution, "distribution")
        opts.perturb = coerce(ZOPerturb, perturb, "perturb")
        opts.seed = _int("seed", seed, 0, _U64)
        oh = optimizer._handle()
        ph = optimizer._ph
        ptr = c_void_p()
        with _Use(((oh, "ZOTrainer"), (ph, "ZOTrainer")), True):
            check(lib.ulpt_zo_create(byref(ptr), ph.ptr, oh.ptr, byref(opts)))
        self._h = _Handle(ptr.value, lib.ulpt_zo_free, (oh, ph))
        if lib.ulpt_zo_optimizer(ptr.value) != oh.ptr or lib.ulpt_zo_prompt(ptr.value) != ph.ptr:
            raise RuntimeError("ulpt: the trainer does not serve this optimizer")
        self._oh, self._ph = oh, ph
        self.optimizer = optimizer
        self._serving = _Serving(self._h, optimizer.prompt.shape)
        self._c_callback = _native.ZO_LOSS_FN(_callback(self._serving, self.options.batch))

    @property
    def prompt(self) -> Prompt:
        """The prompt being trained (the optimizer's)."""
        return self.optimizer.prompt

    @property
    def options(self) -> ZOOptions:
        """The options in use (ulpt_zo_get_options; batch is the resolved k)."""
        opts = zo_defaults()
        with _Use(((self._handle(), "ZOTrainer.options"),), False) as h:
            check(lib.ulpt_zo_get_options(byref(opts), h.ptr))
        return ZOOptions(opts.epsilon, opts.directions, opts.batch,
                         ZODistribution(opts.distribution), ZOPerturb(opts.perturb), opts.seed)

    @property
    def position(self) -> int:
        """The index of the next direction of the stream (q per step taken)."""
        with _Use(((self._handle(), "ZOTrainer.position"),), False) as h:
            return lib.ulpt_zo_position(h.ptr)

    @position.setter
    def position(self, value: int) -> None:
        value = _int("position", value, 0, _U64)
        h = self._handle()
        with _Use(((h, "ZOTrainer.position"),), True):
            check(lib.ulpt_zo_set_position(h.ptr, value))

    def direction(self, index: int) -> np.ndarray:
        """Direction `index` of the stream, u_index: a new float32 array laid out as
        ``prompt.params`` (0 outside the perturbed parts)."""
        index = _int("index", index, 0, _U64)
        h = self._handle()
        out = np.empty(self.prompt.num_params, np.float32)
        with _Use(((h, "ZOTrainer.direction"),), False):
            check(lib.ulpt_zo_direction(out.ctypes.data, h.ptr, index))
        return out

    def step(self, loss_fn: Callable) -> float:
        """One forward-only step; returns the mean of the 2q losses (an estimate of the
        loss at the current prompt).

        ``loss_fn(E)`` gets E, a read-only (count, n_tokens, dim) float32 view of `count`
        perturbed prompts (prompt 2j is theta + eps*u_j, 2j+1 is theta - eps*u_j, counted
        over the step), runs the model on the SAME minibatch with each and returns their
        `count` losses; or ``loss_fn(E, losses)`` writes them into the float64 view
        ``losses`` and returns None.  Failures change nothing (parameters, gradients,
        optimizer, position); exceptions propagate as in Optimizer.train_step."""
        h = self._handle()
        handles = ((h, "ZOTrainer.step"), (self._oh, "ZOTrainer.step"),
                   (self._ph, "ZOTrainer.step"))
        loss = c_double()

        def step():
            rc = lib.ulpt_zo_step(byref(loss), h.ptr, self._c_callback, None)
            return rc, loss.value

        return _serve(self._serving, loss_fn, handles, self._ph, step)

    # -- checkpoints

    def save_checkpoint(self, path: PathLike) -> None:
        """Save the optimizer's checkpoint plus this trainer's options and stream position
        (ulpt_zo_checkpoint_save, file format 1.1), atomically; ZOTrainer.load_checkpoint
        resumes it bit-identically, Optimizer.load_checkpoint reads it as an ordinary
        checkpoint.  Raises FileIOError, NonFiniteError."""
        raw = _path(path)
        h = self._handle()
        handles = ((h, "ZOTrainer.save_checkpoint"), (self._oh, "ZOTrainer.save_checkpoint"),
                   (self._ph, "ZOTrainer.save_checkpoint"))
        with _Use(handles, False):
            check(lib.ulpt_zo_checkpoint_save(h.ptr, raw), path)

    @classmethod
    def load_checkpoint(cls, path: PathLike) -> "ZOTrainer":
        """A new trainer resumed from a forward-only checkpoint (ulpt_zo_checkpoint_load),
        with its restored optimizer (``.optimizer``) and prompt (``.prompt``).  Raises as
        Optimizer.load_checkpoint; FormatError for a checkpoint without forward-only
        state (load it with Optimizer.load_checkpoint and make a ZOTrainer)."""
        raw, pp, op, zp = _path(path), c_void_p(), c_void_p(), c_void_p()
        check(lib.ulpt_zo_checkpoint_load(byref(pp), byref(op), byref(zp), raw), path)
        return _adopt(pp.value, op.value, zp.value)

    def to_bytes(self) -> bytes:
        """The bytes save_checkpoint writes (ulpt_zo_checkpoint_save_buffer)."""
        h = self._handle()
        handles = ((h, "ZOTrainer.to_bytes"), (self._oh, "ZOTrainer.to_bytes"),
                   (self._ph, "ZOTrainer.to_bytes"))
        buf, size = c_void_p(), c_size_t()
        with _Use(handles, False):
            check(lib.ulpt_zo_checkpoint_save_buffer(byref(buf), byref(size), h.ptr))
        try:
            return ctypes.string_at(buf, size.value)
        finally:
            lib.ulpt_free(buf)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ZOTrainer":
        """A new trainer from forward-only checkpoint bytes
        (ulpt_zo_checkpoint_load_buffer), with its own optimizer and prompt.  Raises as
        load_checkpoint."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise wrong_type("data must be bytes, got %s" % type(data).__name__)
        data, pp, op, zp = bytes(data), c_void_p(), c_void_p(), c_void_p()
        check(lib.ulpt_zo_checkpoint_load_buffer(byref(pp), byref(op), byref(zp), data,
                                                 len(data)))
        return _adopt(pp.value, op.value, zp.value)

    # copies rebuild the trainer around a copy of the optimizer (a checkpoint) with the
    # same options and stream position
    def __reduce__(self):
        o = self.options
        return (_restore, (self.optimizer, o, self.position))

    def __copy__(self):
        # a shallow copy would share the optimizer, and train the original's prompt
        return self.__deepcopy__({})

    def __deepcopy__(self, memo):
        import copy
        o = self.options
        return _restore(copy.deepcopy(self.optimizer, memo), o, self.position)

    def __repr__(self):
        if self.closed:
            return "<ulpt.ZOTrainer closed>"
        o = self.options
        return ("<ulpt.ZOTrainer epsilon=%g directions=%d batch=%d %s perturb=%s seed=%d "
                "position=%d>" % (o.epsilon, o.directions, o.batch, o.distribution.name.lower(),
                                  o.perturb.name.lower(), o.seed, self.position))


def _adopt(pp, op, zp) -> ZOTrainer:
    """A trainer of new Python objects from a loaded prompt, optimizer and trainer: the
    options and position move to a trainer made around the Python optimizer."""
    opts = zo_defaults()
    rc = lib.ulpt_zo_get_options(byref(opts), zp)
    position = lib.ulpt_zo_position(zp)
    lib.ulpt_zo_free(zp)
    prompt = Prompt._from_ptr(pp)
    optimizer = Optimizer.__new__(Optimizer)._bind(op, prompt)
    check(rc)
    o = ZOOptions(opts.epsilon, opts.directions, opts.batch,
                  ZODistribution(opts.distribution), ZOPerturb(opts.perturb), opts.seed)
    return _restore(optimizer, o, position)


def _restore(optimizer, o: ZOOptions, position):
    z = ZOTrainer(optimizer, epsilon=o.epsilon, directions=o.directions, batch=o.batch,
                  distribution=o.distribution, perturb=o.perturb, seed=o.seed)
    z.position = position
    return z


_zd = zo_defaults()
_set_kwdefaults(ZOTrainer.__init__, dict(
    epsilon=_zd.epsilon, directions=_zd.directions, batch=_zd.batch,
    distribution=ZODistribution(_zd.distribution), perturb=ZOPerturb(_zd.perturb),
    seed=_zd.seed))
del _zd
