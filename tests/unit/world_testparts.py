"""A test-only out-of-tree world declaring the ``video`` layout, loaded by its ``package.module:Class`` name: a
square that stays still or moves. Torch is imported lazily, like a built-in world's module, so that
``vgrl validate`` stays torch-free with it. ``video_reward.py`` holds a test-only reward of the same layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vgrl.worlds.base import CheckResult, Prompt, SummaryField, World, WorldError

FRAMES = 4


@dataclass(frozen=True)
class FrameMeta:
    category: str  # "still" or "moving"


class FramesWorld(World):
    """``(B, F, 3, H, W)`` clips of a white square on black: still, or moving one pixel right per frame."""

    name = "frames"
    layout = "video"
    splits = ("fit", "probe")
    categories = ("still", "moving")
    Meta = FrameMeta
    fields: ClassVar[dict[str, SummaryField]] = {"blank": SummaryField("blank clip", flag=True, headline=True)}

    def __init__(self, resolution: int = 16):
        self.resolution = resolution

    def prompts(self, split: str = "fit", category: str | None = None) -> list[Prompt]:
        self.check_split(split)
        if category is not None and category not in self.categories:
            raise WorldError(f"unknown category {category!r}; valid: {', '.join(self.categories)}")
        return [Prompt(f"a {c} square", FrameMeta(c)) for c in self.categories if category in (None, c)]

    def render(self, metas, seed=0):
        import torch

        r = self.resolution
        out = torch.zeros(len(metas), FRAMES, 3, r, r)
        for i, m in enumerate(metas):
            m = m.meta if isinstance(m, Prompt) else m
            for f in range(FRAMES):
                x = 2 + (f if m.category == "moving" else 0)
                out[i, f, :, 4:8, x:x + 4] = 1.0
        return out

    def mismatched(self, meta):
        return FrameMeta("still" if meta.category == "moving" else "moving")

    def check(self, samples, metas, *, dense=False):
        import torch

        metas = [m.meta if isinstance(m, Prompt) else m for m in metas]
        moved = (samples[:, 1:] - samples[:, :-1]).abs().flatten(1).amax(1) > 0.5
        blank = samples.flatten(1).amax(1) < 0.5
        want = torch.tensor([m.category == "moving" for m in metas])
        passed = (moved == want) & ~blank
        return CheckResult(passed, passed.float(), [{} for _ in metas], {"blank": blank})
