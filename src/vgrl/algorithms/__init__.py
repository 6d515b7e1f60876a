"""Algorithms: one file per algorithm, each with its options model; ``get(name, **options)`` builds one."""

from __future__ import annotations

from typing import Any


def get(name: str, **options: Any):
    """Build algorithm ``name`` (registry key or ``"pkg.mod:Class"``) with validated options."""
    from vgrl import registry

    cls = registry.resolve("algorithms", name)
    return cls(cls.Options(**options))


def available() -> list[str]:
    from vgrl import registry

    return registry.available("algorithms")
