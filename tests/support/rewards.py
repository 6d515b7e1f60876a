"""Test-only rewards over the test-only worlds: the world's checker score, differentiable (its centroids and colour
means are smooth in the pixels), declaring the layout it accepts.

``FramesReward`` scores clips ``(B, F, 3, H, W)`` (layout ``video``) by :class:`~tests.support.frames_world.FramesWorld`'s
motion check, ``ViewsReward`` view pairs ``(B, 2, 3, H, W)`` (layout ``multiview``) by
:class:`~tests.support.views_world.ViewsWorld`'s consistency check; ``metadata[i]`` is the world's meta of sample
``i``. Named as ``reward.name: tests.support.rewards:FramesReward``. Once the generic ``world_checker`` reward exists,
``{name: world_checker, world: tests.support.frames_world:FramesWorld}`` scores the same (non-differentiably).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from tests.support.frames_world import FramesWorld
from tests.support.views_world import ViewsWorld
from vgrl.rewards.base import Reward, RewardInputError, RewardOptions
from vgrl.types import RewardOutput


class CheckOptions(RewardOptions):
    resolution: int = Field(16, ge=8, description="sample side in pixels of the world")


def _score(world, images: Tensor, metadata: list[Any], who: str) -> RewardOutput:
    bad = [i for i, m in enumerate(metadata) if not isinstance(m, world.Meta)]
    if bad:
        raise RewardInputError(f"reward {who!r}: metadata[{bad[0]}] must be a {world.Meta.__name__} "
                               f"(world.prompts()[k].meta), got {type(metadata[bad[0]]).__name__}")
    res = world.check(images, metadata)
    return RewardOutput(scores=res.score.to(images.device, torch.float32),
                        details={"passed": res.passed, "category": [m.category for m in metadata]})


class FramesReward(Reward):
    """The frames world's motion score per clip (module docstring)."""

    name = "frames"
    differentiable = True
    granularity = "pointwise"
    layouts: ClassVar[tuple[str, ...]] = ("video",)
    Options: ClassVar[type[RewardOptions]] = CheckOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.world = FramesWorld(resolution=self.options.resolution)

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        return _score(self.world, images, metadata, self.name)


class ViewsReward(Reward):
    """The views world's cross-view consistency score per view pair (module docstring)."""

    name = "views"
    differentiable = True
    granularity = "pointwise"
    layouts: ClassVar[tuple[str, ...]] = ("multiview",)
    Options: ClassVar[type[RewardOptions]] = CheckOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.world = ViewsWorld(resolution=self.options.resolution)

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        return _score(self.world, images, metadata, self.name)
