"""Registry of training methods for ``irda-train``.

Importing this package imports every module in it, and each module registers its
classes in :data:`METHODS` with ``@register_method``. To add a method, drop one module
here with a registered subclass of :class:`Method`; nothing else needs editing.
"""
import importlib
import pkgutil

from .base import METHODS, Method, add_argument_once, get_method, register_method

# Every sibling module registers methods on import. vanilla and irda come first: an
# option shared by several methods (--noise-sigma) takes the help text of its first
# declaration (see add_argument_once), and the main method's should win.
_FIRST = ("vanilla", "irda")
for _module in _FIRST + tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _FIRST)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")

__all__ = ["METHODS", "Method", "add_argument_once", "get_method", "register_method"]
