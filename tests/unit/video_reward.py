"""A test-only out-of-tree reward that accepts the ``video`` layout only (``layouts = ("video",)``), loaded by its
``package.module:Class`` name to prove that a run pairing it with an image backbone is refused at build time."""

from __future__ import annotations

from vgrl.rewards.base import Reward
from vgrl.types import RewardOutput


class VideoReward(Reward):
    """Mean brightness of a clip: a reward that accepts the ``video`` layout only."""

    name = "video_brightness"
    differentiable = False
    granularity = "pointwise"
    layouts = ("video",)

    def compute(self, images, prompts, metadata):
        return RewardOutput(images.flatten(1).mean(1).float())
