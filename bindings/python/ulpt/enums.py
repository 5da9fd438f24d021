"""The library's named constants as IntEnums (each also accepted as its lower-case name,
e.g. ``"adamw"``, ``"cosine"``, ``"f16"``)."""

from __future__ import annotations

import enum

from .errors import invalid, wrong_type


class ProjectionKind(enum.IntEnum):
    """How P (rank x dim) is drawn (ULPT_PROJ_*)."""
    XAVIER_UNIFORM = 0   #: U(-a, a), a = sqrt(6/(rank+dim))
    KAIMING_UNIFORM = 1  #: U(-a, a), a = 1/sqrt(rank)
    GAUSSIAN = 2         #: N(0, 1/rank)
    RADEMACHER = 3       #: +-1/sqrt(rank)
    IDENTITY = 4         #: P = I, rank == dim: vanilla prompt tuning


class Flags(enum.IntFlag):
    """Prompt ablations (ULPT_NO_SCALE, ULPT_NO_SHIFT)."""
    NONE = 0
    NO_SCALE = 1  #: s = 1, not trained
    NO_SHIFT = 2  #: b = 0, not trained


class OptimizerKind(enum.IntEnum):
    """The update rule (ULPT_OPT_*), as torch.optim's."""
    SGD = 0
    ADAM = 1
    ADAMW = 2


class Schedule(enum.IntEnum):
    """The learning-rate schedule after warmup (ULPT_SCHED_*), as Hugging Face's."""
    CONSTANT = 0
    LINEAR = 1
    COSINE = 2


class DType(enum.IntEnum):
    """How a prompt file stores its parameters (ULPT_DTYPE_*)."""
    F32 = 0
    F16 = 1
    BF16 = 2


class FileKind(enum.IntEnum):
    """What a libulpt file holds (ULPT_FILE_*)."""
    PROMPT = 1
    CHECKPOINT = 2


def coerce(cls, value, name):
    """`value` (a member, its int value or its name in any case) as a member of `cls`."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls[value.upper()]
        except KeyError:
            raise invalid("%s must be one of %s, got %r"
                          % (name, ", ".join(m.name.lower() for m in cls), value)) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type("%s must be a %s or its name, got %s"
                         % (name, cls.__name__, type(value).__name__))
    try:
        return cls(value)
    except ValueError:
        raise invalid("%s must be one of %s, got %d"
                      % (name, ", ".join("%s (%d)" % (m.name.lower(), m) for m in cls),
                         value)) from None
