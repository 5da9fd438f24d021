"""The prompt bank: many tasks served from one frozen model (ulpt_bank_* as ``ulpt.Bank``).

A bank keeps, per task, only a prompt's parameters and writes E for a mixed batch of
prompts on demand, in float32, f16 or bf16.  It is safe to use from several threads at
once, adding and removing while serving (include/ulpt.h, "Prompt bank").
"""

from __future__ import annotations

from ctypes import byref, c_size_t, c_uint32, c_uint64, c_void_p
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._args import _U32, _U64, _int, _path, _text
from ._handle import _Handle, _Object, _Use
from ._native import check, lib
from .enums import DType, coerce
from .errors import NotFoundError, invalid, wrong_type
from .prompt import Prompt

# The array dtype of each storage type: numpy has IEEE half; bfloat16 comes as its bits.
_ARRAY_DTYPE = {DType.F32: np.dtype(np.float32), DType.F16: np.dtype(np.float16),
                DType.BF16: np.dtype(np.uint16)}


class Bank(_Object):
    """Prompts of one model, ``model`` (matched against each prompt's "model" metadata)
    with embeddings ``dim`` floats wide, served by id.

    Ids are ints, never reused after a removal: a removed id raises NotFoundError (a
    KeyError).  ``len(bank)`` is the number of prompts, ``name in bank`` tests a name.
    Raises InvalidArgumentError for an empty model or a dim of 0."""

    def __init__(self, *, model: Union[str, bytes], dim: int):
        self._fresh()
        raw = _text("model", model)
        dim = _int("dim", dim, 1, _U32)
        ptr = c_void_p()
        check(lib.ulpt_bank_create(byref(ptr), raw, dim))
        self._h = _Handle(ptr.value, lib.ulpt_bank_free)

    def _use(self, what):
        return _Use(((self._handle(), "Bank." + what),), False)

    @property
    def model(self) -> str:
        """The model name the bank serves."""
        with self._use("model") as h:
            raw = lib.ulpt_bank_model(h.ptr)
        return raw.decode("utf-8", "surrogateescape")

    @property
    def dim(self) -> int:
        """The embedding width."""
        with self._use("dim") as h:
            return lib.ulpt_bank_dim(h.ptr)

    def __len__(self) -> int:
        with self._use("len") as h:
            return lib.ulpt_bank_count(h.ptr)

    def add(self, prompt: Prompt, name: Optional[Union[str, bytes]] = None) -> int:
        """Add a copy of `prompt`'s parameters (the prompt stays the caller's), under an
        optional unique `name`; returns its id.  Raises MismatchError (another model or
        dim), NonFiniteError, InvalidArgumentError (a name in use)."""
        if not isinstance(prompt, Prompt):
            raise wrong_type("prompt must be a ulpt.Prompt, got %s" % type(prompt).__name__)
        raw = None if name is None else _text("name", name)
        ph = prompt._handle()
        ident = c_uint64()
        with _Use(((self._handle(), "Bank.add"), (ph, "Bank.add")), False) as h:
            check(lib.ulpt_bank_add(h.ptr, byref(ident), ph.ptr, raw))
        return ident.value

    def load_dir(self, directory) -> int:
        """Add every NAME.ulpt in `directory`, each named NAME, all or nothing; returns
        how many.  Raises as Prompt.load (naming the file) and MismatchError."""
        raw = _path(directory)
        count = c_size_t()
        with self._use("load_dir") as h:
            check(lib.ulpt_bank_load_dir(h.ptr, raw, byref(count)), directory)
        return count.value

    def remove(self, ident: int) -> None:
        """Remove a prompt; its id is stale from then on.  Raises NotFoundError."""
        ident = _int("id", ident, 0, _U64)
        with self._use("remove") as h:
            check(lib.ulpt_bank_remove(h.ptr, ident))

    def find(self, name: Union[str, bytes]) -> int:
        """The id of the prompt called `name`.  Raises NotFoundError."""
        raw = _text("name", name)
        ident = c_uint64()
        with self._use("find") as h:
            check(lib.ulpt_bank_find(h.ptr, raw, byref(ident)))
        return ident.value

    def __contains__(self, name) -> bool:
        try:
            self.find(name)
        except NotFoundError:
            return False
        return True

    def n_tokens(self, ident: int) -> int:
        """The number of rows prompt `ident` materialises to.  Raises NotFoundError."""
        ident = _int("id", ident, 0, _U64)
        n = c_uint32()
        with self._use("n_tokens") as h:
            check(lib.ulpt_bank_n_tokens(h.ptr, ident, byref(n)))
        return n.value

    def materialise(self, ids: Iterable[int], *, dtype: DType = DType.F32) -> List[np.ndarray]:
        """E of each prompt in `ids` (repeats allowed), new (n_tokens, dim) arrays:
        float32, float16 for F16, or uint16 holding the bfloat16 bits for BF16.  Exactly
        what Prompt.forward gives for the prompt that was added (bit for bit in F32).
        Raises NotFoundError (nothing is written)."""
        dtype = coerce(DType, dtype, "dtype")
        ids = [_int("id", i, 0, _U64) for i in ids]
        outs = [np.empty((self.n_tokens(i), self.dim), _ARRAY_DTYPE[dtype]) for i in ids]
        self.materialise_into(list(zip(ids, outs)), dtype=dtype)
        return outs

    def materialise_into(self, requests: Sequence[Tuple[int, np.ndarray]], *,
                         dtype: DType = DType.F32) -> None:
        """Write E of each (id, out) request into `out`, a writable (n_tokens, dim) array
        of the dtype's element type whose rows are contiguous (a row stride >= dim is
        fine: rows of a larger batch buffer).  Every request is checked first; on an
        error nothing is written."""
        dtype = coerce(DType, dtype, "dtype")
        want = _ARRAY_DTYPE[dtype]
        requests = list(requests)
        array = (_native.ulpt_bank_request * len(requests))()
        keep = []
        for k, req in enumerate(requests):
            try:
                ident, out = req
            except (TypeError, ValueError):
                raise wrong_type("requests[%d] must be an (id, array) pair" % k) from None
            if not isinstance(out, np.ndarray):
                raise wrong_type("requests[%d]: out must be a numpy array" % k)
            if out.dtype != want or out.ndim != 2 or out.strides[1] != want.itemsize \
                    or out.strides[0] % want.itemsize or not out.flags.writeable:
                raise invalid("requests[%d]: out must be a writable 2-d %s array with "
                              "contiguous rows, got %s %s" % (k, want, out.dtype, out.shape))
            if out.shape[0] > 1 and out.strides[0] < out.shape[1] * want.itemsize:
                raise invalid("requests[%d]: out's rows must follow each other in memory, "
                              "at least dim elements apart: its row stride is %d bytes for "
                              "rows of %d" % (k, out.strides[0], out.shape[1] * want.itemsize))
            ident = _int("requests[%d] id" % k, ident, 0, _U64)
            with self._use("materialise") as h:
                n = c_uint32()
                check(lib.ulpt_bank_n_tokens(h.ptr, ident, byref(n)))
            if out.shape != (n.value, self.dim):
                raise invalid("requests[%d]: out must have shape %s, got %s"
                              % (k, (n.value, self.dim), out.shape))
            array[k].id = ident
            array[k].dst = out.ctypes.data
            array[k].ld = out.strides[0] // want.itemsize if out.shape[0] > 1 else self.dim
            keep.append(out)
        with self._use("materialise") as h:
            check(lib.ulpt_bank_materialise(h.ptr, array, len(requests), dtype))

    def __reduce__(self):
        raise TypeError("a ulpt.Bank cannot be pickled or copied: save its prompts "
                        "(Prompt.save) and load_dir them into a new bank")

    def __repr__(self):
        if self.closed:
            return "<ulpt.Bank closed>"
        return "<ulpt.Bank model=%r dim=%d: %d prompts>" % (self.model, self.dim, len(self))

