"""The frozen random projection P (ulpt_projection_* as ``ulpt.Projection``)."""

from __future__ import annotations

from ctypes import byref, c_void_p
from typing import Optional

import numpy as np

from ._args import _U32, _U64, _int
from ._handle import _Handle, _Object, _view
from ._native import check, lib
from .enums import ProjectionKind, coerce


class Projection(_Object):
    """The frozen random matrix P (rank x dim), a pure function of (seed, kind, rank, dim).

    Immutable; ``matrix`` is a read-only (rank, dim) float32 view (None for the identity).
    Pass projections to ``Prompt(..., projections=[...])`` to share one P among prompts.

    Raises InvalidArgumentError for an unknown kind, rank or dim 0, rank > dim, identity
    with rank != dim."""

    def __init__(self, *, seed: int, rank: int, dim: int,
                 kind: ProjectionKind = ProjectionKind.XAVIER_UNIFORM):
        self._fresh()
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

