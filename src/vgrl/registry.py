"""Find components by name without a central table.

A built-in component's registry key is its module name: ``vgrl/kernels/flow_sde.py`` is the kernel
``"flow_sde"``. The module names its component in a module-level ``COMPONENT``. An out-of-tree
component is named ``"package.module:Class"``.

Discovery (:func:`available`) only lists module files, so it is cheap and imports no torch; it is
what ``vgrl validate`` uses. :func:`resolve` imports the module.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

KINDS = ("kernels", "backbones", "rewards", "algorithms", "worlds")
_PRIVATE = {"base", "options"}


class RegistryError(LookupError):
    """A component name that does not resolve."""


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise RegistryError(f"unknown component kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def available(kind: str) -> list[str]:
    """Registry keys of the built-in components of ``kind`` (sorted), found without importing them."""
    _check_kind(kind)
    try:
        pkg = importlib.import_module(f"vgrl.{kind}")
    except ModuleNotFoundError:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if not m.name.startswith("_") and m.name not in _PRIVATE and not m.ispkg)


def is_external(name: str) -> bool:
    return ":" in name


def check_name(kind: str, name: str) -> None:
    """Raise unless ``name`` is a built-in key of ``kind`` or looks like ``pkg.mod:Class``."""
    if is_external(name):
        module, _, attr = name.partition(":")
        if not module or not attr:
            raise RegistryError(f"{name!r} is not of the form 'package.module:Class'")
        return
    keys = available(kind)
    if name not in keys:
        raise RegistryError(f"unknown {kind[:-1]} {name!r}; valid: {', '.join(keys)} "
                            "(or 'package.module:Class' for an out-of-tree one)")


def resolve(kind: str, name: str) -> Any:
    """The component class for ``name``: built-in key or ``"package.module:Class"``."""
    check_name(kind, name)
    if is_external(name):
        module, _, attr = name.partition(":")
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise RegistryError(f"cannot import module {module!r} for {kind[:-1]} {name!r}: {e}") from e
        try:
            return getattr(mod, attr)
        except AttributeError:
            raise RegistryError(f"module {module!r} has no attribute {attr!r}") from None
    mod = importlib.import_module(f"vgrl.{kind}.{name}")
    try:
        return mod.COMPONENT
    except AttributeError:
        raise RegistryError(f"built-in module vgrl.{kind}.{name} defines no COMPONENT") from None
