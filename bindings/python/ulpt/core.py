"""The names this module held before the package was split along its seams (1.2); new
code imports them from ``ulpt``.  Nothing in the package imports this module."""

from ._args import PathLike
from .defaults import fit_defaults, optimizer_defaults, prompt_defaults, save_defaults
from .files import FileInfo, inspect
from .optimizer import WEIGHT_DECAY_DEFAULT, Optimizer, OptimizerOptions
from .projection import Projection
from .prompt import Metadata, Prompt

__all__ = ["PathLike", "fit_defaults", "optimizer_defaults", "prompt_defaults",
           "save_defaults", "FileInfo", "inspect", "WEIGHT_DECAY_DEFAULT", "Optimizer",
           "OptimizerOptions", "Projection", "Metadata", "Prompt"]
