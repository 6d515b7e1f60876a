"""Rewards: one file per reward; ``get(name, **options)`` builds one.

A reward maps ``(images, prompts, metadata)`` to a :class:`~vgrl.types.RewardOutput` (see
:class:`vgrl.rewards.base.Reward` for the contract). Importing this package does not import torch; the
reward module loads in :func:`get`.
"""

from __future__ import annotations

from typing import Any


def get(name: str, **options: Any):
    """Build reward ``name`` (registry key or ``"pkg.mod:Class"``) with its options validated.

    Every keyword is validated by the reward's ``Options`` pydantic model, which rejects unknown
    names (``get("jpeg", qualty=3)`` raises a ``pydantic.ValidationError`` naming ``qualty``); runtime
    objects a reward needs (``terms=`` for ``compose``) are explicit constructor arguments.
    """
    from vgrl import registry

    cls = registry.resolve("rewards", name)
    return cls(**options)


def available() -> list[str]:
    """Registry keys of the built-in rewards, found without importing them."""
    from vgrl import registry

    return registry.available("rewards")
