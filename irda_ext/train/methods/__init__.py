"""Registry of training methods for ``irda-train``.

Importing this package imports every module in it, and each module registers its
classes in :data:`METHODS` with ``@register_method``. To add a method, drop one module
here with a registered subclass of :class:`Method`; nothing else needs editing.
"""
import importlib
import pkgutil

from .base import METHODS, Method, RunContext, add_method_arguments, get_method, option, options_from_args, register_method

# Every sibling module registers methods on import, in a fixed order (the --help order).
_FIRST = ("vanilla", "irda")
_HELPERS = ("base", "noise_scale")
for _module in _FIRST + tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _FIRST)):
    if _module not in _HELPERS:
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["METHODS", "Method", "RunContext", "add_method_arguments", "get_method", "option", "options_from_args",
           "register_method"]
