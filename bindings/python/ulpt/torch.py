"""The PyTorch bridge: a ULPT prompt as a ``torch.nn.Module``.

::

    import torch, ulpt.torch

    soft = ulpt.torch.ULPTPrompt(n_tokens=20, dim=model.config.hidden_size)
    opt = torch.optim.AdamW(soft.parameters(), lr=3e-2)
    embeds = model.get_input_embeddings()(input_ids)            # (batch, seq, dim)
    out = model(inputs_embeds=soft.prepend(embeds), ...)       # (batch, 20 + seq, dim)
    out.loss.backward(); opt.step(); opt.zero_grad()

``forward()`` returns E (n_tokens, dim) through an autograd Function whose backward is
libulpt's.  The trainable numbers Z (n_tokens, rank), s and b (dim) are
``torch.nn.Parameter``s that share memory with the library (zero copy), so
``state_dict()``, torch optimizers, schedulers and gradient clipping work on them, and the
library's own optimizer (``ulpt.Optimizer(soft.prompt)``) sees what torch changes and vice
versa.  The parameters live on the CPU in float32: move E, not the module, to another
device or dtype (``soft.prepend`` casts E to the embeddings' device and dtype); ``.to()``,
``.double()``, ``.half()``, ``share_memory()``, ``to_empty()`` and the like raise
RuntimeError and leave the module as it was.  Changing Z, s or b in place between
forward and backward raises at backward, as torch does for its own operations.
"""

from __future__ import annotations

import copy
import threading
from typing import Any, Optional

import torch
from torch.autograd.function import once_differentiable

from ._args import _matrix
from ._handle import _Use, _view
from ._native import check, lib
from .errors import ERR_MISMATCH, MismatchError, invalid
from .prompt import Prompt

__all__ = ["ULPTPrompt", "ULPTFunction"]


class ULPTFunction(torch.autograd.Function):
    """E = (Z . P) * s + b for a ULPTPrompt; backward is ulpt_prompt_backward.

    ``ULPTFunction.apply(module, Z, s, b)`` (s, b omitted when the prompt has none).  The
    library's gradient buffer keeps accumulating as libulpt's own backward does, so
    ``ulpt.Optimizer`` can step on it too; autograd gets this call's share.  The
    parameters are saved for backward, so torch's version counters catch an in-place
    change of them in between (the gradient depends on Z and s)."""

    @staticmethod
    def forward(ctx, module: "ULPTPrompt", *params: torch.Tensor) -> torch.Tensor:
        module._check_shared()
        ctx.module = module
        ctx.save_for_backward(*params)
        return torch.from_numpy(module.prompt.forward())

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_e: torch.Tensor):
        ctx.saved_tensors    # raises when a parameter was modified in place since forward
        ctx.module._check_shared()
        prompt = ctx.module.prompt
        g = grad_e.detach().to(device="cpu", dtype=torch.float32).numpy()
        mine = _backward(prompt, g)
        out = [torch.from_numpy(x) for x in prompt.split(mine) if x is not None]
        return (None, *out)


# One backward at a time in the process: two threads' backwards on one module wait for
# each other instead of interleaving their save / zero / backward / add (that gave wrong
# gradients).  Inside, nothing waits for this lock, so it cannot deadlock.
_backward_lock = threading.Lock()


def _backward(prompt: Prompt, g) -> "numpy.ndarray":
    """This call's gradient for G = g, as a new flat array laid out as ``grads``, while
    the library's buffer accumulates it as ulpt_prompt_backward does.  The save, zero,
    backward and add run as one exclusive section on the prompt: another thread's step
    or backward on it cannot come in between (a step raises BusyError meanwhile)."""
    g = _matrix("grad", g, prompt.shape)
    with _backward_lock:
        h = prompt._handle()
        with _Use(((h, "ULPTPrompt.backward"),), True):
            grads = _view(h, lib.ulpt_prompt_grads(h.ptr), (prompt.num_params,))
            before = grads.copy()
            lib.ulpt_prompt_zero_grad(h.ptr)
            rc = lib.ulpt_prompt_backward(h.ptr, g.ctypes.data, prompt.dim)
            mine = grads.copy()
            grads += before       # a failed backward added nothing: as it was
    check(rc)
    return mine


class ULPTPrompt(torch.nn.Module):
    """A ULPT prompt as a module: ``forward()`` -> E, an (n_tokens, dim) float32 tensor.

    Give an existing ``prompt`` (a ulpt.Prompt, shared, not copied) or the keyword
    options of ulpt.Prompt (n_tokens, dim, rank, projection_seed, ...).  Parameters:
    ``Z`` (n_tokens, rank), ``s`` and ``b`` (dim,), absent with NO_SCALE / NO_SHIFT.
    The state dict also records the prompt's shape and projection, and refuses
    (MismatchError) to load into a prompt of another shape or projection, before any
    parameter is changed."""

    def __init__(self, prompt: Optional[Prompt] = None, **options: Any):
        if "prompt" in vars(self):
            raise invalid("%s.__init__ called on an existing module: create a new one"
                          % type(self).__name__)
        super().__init__()
        if prompt is None:
            prompt = Prompt(**options)
        elif options:
            raise TypeError("give either a prompt or its options, not both")
        self.prompt = prompt
        z, s, b = prompt.split(prompt.params)
        self.Z = torch.nn.Parameter(torch.from_numpy(z))
        self.s = None if s is None else torch.nn.Parameter(torch.from_numpy(s))
        self.b = None if b is None else torch.nn.Parameter(torch.from_numpy(b))
        # what _check_shared compares with: the prompt's handle, and where each
        # Parameter's numbers live in its memory
        self._bound = prompt._handle()
        self._layout = {name: (x.ctypes.data, x.shape) for name, x in
                        (("Z", z), ("s", s), ("b", b)) if x is not None}

    def _check_shared(self):
        """Raise RuntimeError unless ``prompt`` is still the prompt the module was made
        around and Z, s and b are still Parameters over its memory: forward and backward
        run on the library's numbers, so anything else would be silently ignored."""
        prompt = self.prompt
        if not isinstance(prompt, Prompt) or prompt._h is not self._bound:
            raise RuntimeError("ULPTPrompt.prompt is no longer the prompt its parameters "
                               "share memory with (it was reassigned, closed or reloaded); "
                               "make a new ULPTPrompt(prompt) instead")
        for name, (address, shape) in self._layout.items():
            p = self._parameters.get(name)
            if not isinstance(p, torch.nn.Parameter):
                raise RuntimeError("ULPTPrompt.%s is no longer a Parameter (replaced, or "
                                   "reparametrised as by weight_norm or parametrize): "
                                   "forward uses libulpt's %s, which would ignore it"
                                   % (name, name))
            if p.data_ptr() != address or p.dtype != torch.float32 or \
                    p.device.type != "cpu" or tuple(p.shape) != shape or \
                    not p.is_contiguous():
                raise RuntimeError("ULPTPrompt.%s no longer shares libulpt's memory (its "
                                   ".data was rebound, or the module was moved to another "
                                   "device or dtype); change its values in place "
                                   "(%s.data.copy_(...)) and move the output E instead"
                                   % (name, name))

    def _apply(self, fn, *args, **kwargs):
        # .to(), .double(), .half(), .cuda(), share_memory(), to_empty() ... all come
        # here: try `fn` on a float32 CPU probe and refuse whatever would not leave it
        # the same tensor in the same memory, before any parameter is touched.
        probe = torch.zeros(1)
        address = probe.data_ptr()
        try:
            moved = fn(probe)
        except Exception as exc:
            raise RuntimeError("ULPTPrompt cannot be moved: its parameters are libulpt's "
                               "float32 CPU memory (%s); move its output E instead" % exc) \
                from exc
        if not isinstance(moved, torch.Tensor) or moved.dtype != torch.float32 or \
                moved.device != probe.device or moved.data_ptr() != address or \
                probe.data_ptr() != address:
            what = "%s %s" % (moved.dtype, moved.device) if isinstance(moved, torch.Tensor) \
                else type(moved).__name__
            raise RuntimeError("ULPTPrompt cannot be moved to %s (or into other memory): its "
                               "parameters are libulpt's float32 CPU memory; move its output "
                               "E instead (prepend does)" % what)
        return super()._apply(fn, *args, **kwargs)

    def forward(self) -> torch.Tensor:
        """E, (n_tokens, dim) float32 on the CPU."""
        params = [p for p in (self.Z, self.s, self.b) if p is not None]
        return ULPTFunction.apply(self, *params)

    def prepend(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """``[E; inputs_embeds]`` along the sequence: (batch, seq, dim) ->
        (batch, n_tokens + seq, dim), E cast to the embeddings' device and dtype."""
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.prompt.dim:
            raise ValueError("inputs_embeds must be (batch, seq, %d), got %s"
                             % (self.prompt.dim, tuple(inputs_embeds.shape)))
        e = self().to(device=inputs_embeds.device, dtype=inputs_embeds.dtype)
        e = e.unsqueeze(0).expand(inputs_embeds.shape[0], -1, -1)
        return torch.cat([e, inputs_embeds], dim=1)

    def extend_attention_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, seq) -> (batch, n_tokens + seq), ones for the prompt's positions."""
        ones = attention_mask.new_ones(attention_mask.shape[0], self.prompt.n_tokens)
        return torch.cat([ones, attention_mask], dim=1)

    def _identity(self) -> dict:
        p = self.prompt
        proj = p.projection(0)
        return {"n_tokens": p.n_tokens, "rank": p.rank, "dim": p.dim, "n_groups": p.n_groups,
                "flags": int(p.flags), "projection_seed": proj.seed,
                "projection_kind": int(proj.kind)}

    def get_extra_state(self) -> dict:
        return self._identity()

    def set_extra_state(self, state: dict) -> None:
        mine = self._identity()
        if dict(state) != mine:
            raise MismatchError(ERR_MISMATCH, "state_dict is for a prompt %s, this one is %s"
                                % (dict(state), mine))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torch copies the parameters first and calls set_extra_state last: check the
        # identity before, so that a refused load leaves the module unchanged
        key = prefix + "_extra_state"
        if key in state_dict:
            self.set_extra_state(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def save_pretrained(self, directory, **kwargs) -> None:
        """Prompt.save_pretrained (the .ulpt file and a PEFT prompt-tuning adapter)."""
        self.prompt.save_pretrained(directory, **kwargs)

    @classmethod
    def from_pretrained(cls, directory) -> "ULPTPrompt":
        """A module around Prompt.from_pretrained(directory)."""
        return cls(Prompt.from_pretrained(directory))

    def extra_repr(self) -> str:
        p = self.prompt
        return "n_tokens=%d, rank=%d, dim=%d, n_groups=%d, params=%d" % (
            p.n_tokens, p.rank, p.dim, p.n_groups, p.num_params)

    # Copies and pickles rebuild the sharing around a copy of the prompt (which goes
    # through the prompt file format); copying the Parameters alone would cut them off.
    def __deepcopy__(self, memo) -> "ULPTPrompt":
        new = _rebuild(copy.deepcopy(self.prompt, memo), self.training)
        memo[id(self)] = new
        return new

    def __reduce__(self):
        return (_rebuild, (self.prompt, self.training))


def _rebuild(prompt: Prompt, training: bool) -> ULPTPrompt:
    module = ULPTPrompt(prompt)
    module.train(training)
    return module
