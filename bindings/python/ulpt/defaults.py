"""The library's defaults for each options struct (ulpt_*_options_init), which become the
visible keyword defaults of the Python constructors."""

from __future__ import annotations

from ctypes import byref

from . import _native
from ._native import check, lib


def _defaults(init, struct):
    opts = struct()
    check(init(byref(opts), 1))
    return opts


def prompt_defaults() -> _native.ulpt_prompt_options:
    """ulpt_prompt_options as ulpt_prompt_options_init fills them (the defaults of
    Prompt's keyword arguments come from here)."""
    return _defaults(lib.ulpt_prompt_options_init, _native.ulpt_prompt_options)


def optimizer_defaults() -> _native.ulpt_optimizer_options:
    """ulpt_optimizer_options as ulpt_optimizer_options_init fills them."""
    return _defaults(lib.ulpt_optimizer_options_init, _native.ulpt_optimizer_options)


def save_defaults() -> _native.ulpt_save_options:
    """ulpt_save_options as ulpt_save_options_init fills them."""
    return _defaults(lib.ulpt_save_options_init, _native.ulpt_save_options)


def fit_defaults() -> _native.ulpt_fit_options:
    """ulpt_fit_options as ulpt_fit_options_init fills them."""
    return _defaults(lib.ulpt_fit_options_init, _native.ulpt_fit_options)


def _set_kwdefaults(fn, values):
    """Make the library's defaults the visible keyword defaults of `fn`."""
    kw = dict(fn.__kwdefaults__ or {})
    for name, value in values.items():
        assert name in kw, name
        kw[name] = value
    fn.__kwdefaults__ = kw


_REQUIRED = object()  # placeholder default, replaced from the library at import
