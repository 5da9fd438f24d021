"""The optimizer: SGD, Adam or AdamW over a prompt, the training step driven by the host's
loss, and checkpoints (ulpt_optimizer_*, ulpt_train_step, ulpt_checkpoint_* as
``ulpt.Optimizer``)."""

from __future__ import annotations

import ctypes
import sys
from ctypes import byref, c_double, c_size_t, c_void_p
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import _adapter, _native
from ._args import _U64, PathLike, _int, _matrix, _path, _real
from ._handle import _Handle, _Object, _Use, _view
from ._native import check, lib
from ._serving import _Serving, _serve
from .defaults import _REQUIRED, _set_kwdefaults, optimizer_defaults
from .enums import DType, OptimizerKind, Schedule, coerce
from .errors import invalid, wrong_type
from .prompt import Prompt

LossFn = Callable[..., object]

WEIGHT_DECAY_DEFAULT = -1.0  # ULPT_WEIGHT_DECAY_DEFAULT


@dataclass(frozen=True)
class OptimizerOptions:
    """An optimizer's options as ulpt_optimizer_get_options reports them: as created,
    or as loaded from a checkpoint.  ``Optimizer(prompt, **dataclasses.asdict(o))``
    makes an optimizer with the same options."""
    kind: OptimizerKind
    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float             #: resolved: 0.01 for AdamW created with the default
    momentum: float
    max_grad_norm: float
    schedule: Schedule
    warmup_steps: int
    total_steps: int


def _callback(st: _Serving):
    c_double_at = c_double.from_address

    def loss_callback(user, e, n, d, g, loss_out):
        try:
            st.enter()
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
            finally:
                st.leave()
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
        self._fresh()
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

        The step holds the prompt and the optimizer from entry to return: other threads'
        reads (forward, save, ...) wait for it, and a step started meanwhile waits for
        running reads.  If the step fails nothing changes (parameters, gradients,
        optimizer state).  KeyboardInterrupt, SystemExit and GeneratorExit raised by
        loss_fn propagate as themselves; any other exception becomes CallbackError with
        it as __cause__.  A signal that arrives before the callback fails the step and is
        raised as itself; one that arrives after it is raised once the step completed.  A
        NaN or infinite loss or gradient raises NonFiniteError.  Raises BusyError when
        the prompt or optimizer is inside another step (this one's loss callback, or
        another thread's)."""
        handles = self._handles("train_step")
        ph, op = self._ph, handles[0][0]
        loss = c_double()

        def step():
            rc = lib.ulpt_train_step(ph.ptr, op.ptr, self._c_callback, None, byref(loss))
            return rc, loss.value

        return _serve(self._serving, loss_fn, handles, ph, step)

    # -- state

    @property
    def step_count(self) -> int:
        """The number of steps taken."""
        with _Use(self._handles("step_count")[:1], False) as h:
            return lib.ulpt_optimizer_step_count(h.ptr)

    @property
    def lr(self) -> float:
        """The learning rate the next step will use, lr * m(step_count), exactly as the
        library computes it (double precision)."""
        with _Use(self._handles("lr")[:1], False) as h:
            return lib.ulpt_optimizer_lr_double(h.ptr)

    @property
    def lr_float32(self) -> float:
        """``lr`` rounded to float32, as ulpt_optimizer_lr gives it to C callers."""
        with _Use(self._handles("lr_float32")[:1], False) as h:
            return lib.ulpt_optimizer_lr(h.ptr)

    @property
    def options(self) -> OptimizerOptions:
        """The options as created or loaded from a checkpoint (ulpt_optimizer_get_options).
        ``lr`` here is the peak rate; the rate of the next step is ``Optimizer.lr``."""
        opts = optimizer_defaults()
        with _Use(self._handles("options")[:1], False) as h:
            check(lib.ulpt_optimizer_get_options(byref(opts), h.ptr))
        return OptimizerOptions(
            OptimizerKind(opts.kind), opts.lr, opts.beta1, opts.beta2, opts.eps,
            opts.weight_decay,
            opts.momentum, opts.max_grad_norm, Schedule(opts.schedule), opts.warmup_steps,
            opts.total_steps)

    def get_options(self) -> OptimizerOptions:
        """``options``, as a call."""
        return self.options

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
        """The bytes save_checkpoint writes (ulpt_checkpoint_save_buffer)."""
        handles = self._handles("to_bytes")
        buf, size = c_void_p(), c_size_t()
        with _Use(handles, False):
            check(lib.ulpt_checkpoint_save_buffer(byref(buf), byref(size), self._ph.ptr,
                                                  handles[0][0].ptr))
        try:
            return ctypes.string_at(buf, size.value)
        finally:
            lib.ulpt_free(buf)

    @classmethod
    def from_bytes(cls, data: bytes, prompt: Optional[Prompt] = None) -> "Optimizer":
        """An Optimizer from checkpoint bytes (ulpt_checkpoint_load_buffer); its restored
        prompt is ``.prompt``.

        With `prompt`, that Prompt object takes the checkpoint's prompt instead of a new
        one, so that copies of a prompt and its optimizer stay paired: it must be a
        Prompt nothing uses -- a new, unopened ``Prompt.__new__(Prompt)`` or an open one
        without optimizers, trainers, torch modules, views or projections of it.  Raises
        InvalidArgumentError for a prompt in use, ClosedError for a closed one (nothing
        changes), BusyError inside a step on it, and as load_checkpoint."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise wrong_type("data must be bytes, got %s" % type(data).__name__)
        if prompt is not None and not isinstance(prompt, Prompt):
            raise wrong_type("prompt must be a ulpt.Prompt, got %s" % type(prompt).__name__)
        data, pp, op = bytes(data), c_void_p(), c_void_p()
        if prompt is None:
            check(lib.ulpt_checkpoint_load_buffer(byref(pp), byref(op), data, len(data)))
            new = Prompt._from_ptr(pp.value)
            return cls.__new__(cls)._bind(op.value, new)
        if "_h" not in vars(prompt):                          # never opened
            check(lib.ulpt_checkpoint_load_buffer(byref(pp), byref(op), data, len(data)))
            prompt._adopt(pp.value)
            return cls.__new__(cls)._bind(op.value, prompt)
        old = prompt._handle()
        with _Use(((old, "Optimizer.from_bytes"),), True):
            # the references: prompt._h, `old`, the _Use's tuple and getrefcount's argument
            if sys.getrefcount(old) > _UNUSED_REFS:
                raise invalid("Optimizer.from_bytes: the prompt is in use (an optimizer, "
                              "trainer, torch module, view or projection holds it); pass a "
                              "new Prompt, or none")
            check(lib.ulpt_checkpoint_load_buffer(byref(pp), byref(op), data, len(data)))
            prompt._adopt(pp.value)
        return cls.__new__(cls)._bind(op.value, prompt)

    def save_pretrained(self, directory: PathLike, *, task_type: str = "CAUSAL_LM",
                        dtype: DType = DType.F32) -> None:
        """Prompt.save_pretrained for the prompt, plus `directory`/ulpt_checkpoint.ulpt so
        that Optimizer.from_pretrained resumes training."""
        _adapter.save(self.prompt, directory, task_type, coerce(DType, dtype, "dtype"),
                      self.save_checkpoint)

    @classmethod
    def from_pretrained(cls, directory: PathLike, **options) -> "Optimizer":
        """Resume from the checkpoint save_pretrained wrote into `directory`, or, when
        there is none, a new Optimizer(**options) for the saved prompt."""
        checkpoint = _adapter.checkpoint_file(directory)
        if checkpoint is not None:
            return cls.load_checkpoint(checkpoint)
        return cls(Prompt.load(_adapter.prompt_file(directory)), **options)

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


_UNUSED_REFS = 4


def _restore_optimizer(data, prompt):
    return Optimizer.from_bytes(data, prompt)


_od = optimizer_defaults()
_set_kwdefaults(Optimizer.__init__, dict(
    kind=OptimizerKind(_od.kind), lr=_od.lr, beta1=_od.beta1, beta2=_od.beta2, eps=_od.eps,
    weight_decay=None if _od.weight_decay == WEIGHT_DECAY_DEFAULT else _od.weight_decay,
    momentum=_od.momentum, max_grad_norm=_od.max_grad_norm,
    schedule=Schedule(_od.schedule), warmup_steps=_od.warmup_steps,
    total_steps=_od.total_steps))
del _od
