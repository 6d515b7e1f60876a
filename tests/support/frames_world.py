"""Test-only video world ``frames``: a white dot moving left, right, up or down over ``F`` frames.

Samples are clips ``(B, F, 3, R, R)`` in [0, 1] (layout ``video``): a ``DOT x DOT`` white square on black moving
``STEP`` pixels per frame, so ``travel = STEP (F - 1)`` pixels from the first frame to the last. Categories are the
four directions; prompts read "a dot moving left" (``train``) and "a dot drifting left" (``heldout``).

The checker is the brightness centroid ``c_f = sum_p m_f(p) p / sum_p m_f(p)`` of each frame (``m`` the channel
mean: exact on a ground truth, defined on any clip), the displacement along the asked direction ``u``,
``d = (c_{F-1} - c_0) . u``, and::

    score  = clamp(0.5 + 0.5 d / (0.75 travel), 0, 1)      passed = d >= 0.75 travel  (<=> score == 1)

A ground truth scores 1, its opposite direction 0 and a perpendicular one 0.5; the score is continuous (and
differentiable) in the pixels, so rewards built on it separate the samples of an untrained model. Deterministic.
Named in a config as ``data.world: tests.support.frames_world:FramesWorld``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vgrl.worlds.base import CheckResult, Prompt, World

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy), y down
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
WORDING = {"train": "a dot moving {}", "heldout": "a dot drifting {}"}
DOT, STEP = 4, 2


@dataclass(frozen=True)
class FramesMeta:
    """What a prompt asks for: the direction of motion (its category)."""

    category: str


def _meta(m) -> FramesMeta:
    return m.meta if isinstance(m, Prompt) else m


def centroids(samples: Tensor) -> Tensor:
    """``(B, N, 2)`` brightness centroids ``(x, y)`` of ``(B, N, C, H, W)`` samples (differentiable)."""
    m = samples.to(torch.float32).mean(dim=2)                              # (B, N, H, W)
    h, w = m.shape[-2:]
    ys = torch.arange(h, dtype=torch.float32, device=m.device).view(h, 1)
    xs = torch.arange(w, dtype=torch.float32, device=m.device).view(1, w)
    mass = m.sum(dim=(-2, -1)).clamp_min(1e-6)
    return torch.stack([(m * xs).sum(dim=(-2, -1)) / mass, (m * ys).sum(dim=(-2, -1)) / mass], dim=-1)


class FramesWorld(World):
    """Prompts, ground-truth clips and the motion checker of the module docstring."""

    name = "frames"
    layout = "video"
    splits = ("train", "heldout")
    categories = tuple(DIRECTIONS)
    Meta = FramesMeta

    def __init__(self, resolution: int = 16, frames: int = 4, **_options) -> None:
        self.resolution, self.frames = resolution, frames
        self.travel = STEP * (frames - 1)
        if resolution < DOT + self.travel + 2:
            raise ValueError(f"resolution {resolution} is too small for {frames} frames; valid: "
                             f">= {DOT + self.travel + 2}")

    def prompts(self, split: str = "train", category: str | None = None) -> list[Prompt]:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} of world 'frames'; valid: {', '.join(self.splits)}")
        if category is not None and category not in self.categories:
            raise ValueError(f"unknown category {category!r}; valid: {', '.join(self.categories)}")
        return [Prompt(WORDING[split].format(d), FramesMeta(d)) for d in self.categories
                if category is None or d == category]

    def mismatched(self, meta: FramesMeta) -> FramesMeta:
        """A prompt no ground truth of ``meta`` satisfies: the opposite direction (another category)."""
        return FramesMeta(OPPOSITE[meta.category])

    def render(self, metas: Sequence, seed: int | Sequence[int] = 0) -> Tensor:
        """Ground-truth clips ``(B, F, 3, R, R)``; sample ``i`` from ``default_rng([seed, i])`` (or ``seed[i]``)."""
        seeds = [[int(seed), i] for i in range(len(metas))] if isinstance(seed, int) else [int(s) for s in seed]
        r, out = self.resolution, torch.zeros(len(metas), self.frames, 3, self.resolution, self.resolution)
        for clip, m, s in zip(out, metas, seeds):
            dx, dy = DIRECTIONS[_meta(m).category]
            rng = np.random.default_rng(s)
            x = int(rng.integers(1, r - DOT - self.travel)) + (self.travel if dx < 0 else 0)
            y = int(rng.integers(1, r - DOT - self.travel)) + (self.travel if dy < 0 else 0)
            if dx == 0:
                x = int(rng.integers(1, r - DOT))
            if dy == 0:
                y = int(rng.integers(1, r - DOT))
            for f in range(self.frames):
                fx, fy = x + dx * STEP * f, y + dy * STEP * f
                clip[f, :, fy:fy + DOT, fx:fx + DOT] = 1.0
        return out

    def check(self, samples: Tensor, metas: Sequence, *, dense: bool = False) -> CheckResult:
        """Judge clips ``(B, F, 3, R, R)`` against their directions (module docstring); ``dense``: the sample's
        score on every pixel of every frame ``(B, F, R, R)``."""
        metas = [_meta(m) for m in metas]
        if samples.ndim != 5 or len(metas) != samples.shape[0]:
            raise ValueError(f"world 'frames' checks clips (B, F, 3, H, W) with one meta each, got "
                             f"{tuple(samples.shape)} and {len(metas)} metas")
        c = centroids(samples)
        u = torch.tensor([DIRECTIONS[m.category] for m in metas], dtype=torch.float32, device=c.device)
        d = ((c[:, -1] - c[:, 0]) * u).sum(dim=1)
        need = 0.75 * self.travel
        score = (0.5 + 0.5 * d / need).clamp(0, 1)
        details = [{"category": m.category, "displacement": float(v)} for m, v in zip(metas, d.detach())]
        credit = score.detach().view(-1, 1, 1, 1).expand(-1, *samples.shape[1:2], *samples.shape[-2:]) if dense else None
        return CheckResult(passed=(d >= need).cpu(), score=score, details=details, dense=credit)


COMPONENT = FramesWorld
