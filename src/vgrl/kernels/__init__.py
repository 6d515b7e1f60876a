"""Transition kernels: one file per kernel; ``get(name, **options)`` builds one.

Importing this package does not import torch; the kernel module loads in :func:`get`.
"""

from __future__ import annotations

from typing import Any


def get(name: str, **options: Any):
    """Build kernel ``name`` (registry key or ``"pkg.mod:Class"``) with its options validated.

    Runtime objects a kernel needs (``scheduler=`` for ``ddim`` and diffusion ``ode``) pass through
    to the constructor; every other keyword is validated by the kernel's ``Options`` model, which
    rejects unknown names.
    """
    from vgrl import registry

    cls = registry.resolve("kernels", name)
    runtime = {k: options.pop(k) for k in tuple(options) if k in cls.runtime_args}
    return cls(cls.Options(**options), **runtime)


def available() -> list[str]:
    from vgrl import registry

    return registry.available("kernels")
