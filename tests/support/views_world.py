"""Test-only multi-view world ``views``: a coloured block seen from the front and from behind (two views).

Samples are view sets ``(B, 2, 3, R, R)`` in [0, 1] (layout ``multiview``): a ``BLOCK x BLOCK`` block of the
prompt's colour on black; seen from behind, the block is mirrored left-right, so its brightness centroids obey
``x_1 = R - 1 - x_0`` and ``y_1 = y_0``. Categories are the colours; prompts read "a red block seen from two sides"
(``train``) and "two views of a red block" (``heldout``).

The checker (cross-view consistency of colour and position), with ``k`` the asked colour's channel and ``c_v`` the
brightness-weighted mean colour of view ``v``::

    colour_v = clamp(0.5 + c_v[k] - mean_{j != k} c_v[j], 0, 1)
    position = clamp(1.25 - (|y_1 - y_0| + |x_0 + x_1 - (R - 1)|) / 4, 0, 1)
    score    = (colour_0 + colour_1 + position) / 3           passed = score == 1

(passed: both views have the colour by a margin of 0.5 and the centroids agree within a pixel). A ground truth
scores 1 and any other colour's prompt at most 1/3. Continuous and differentiable in the pixels; deterministic.
Named in a config as ``data.world: tests.support.views_world:ViewsWorld``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tests.support.frames_world import centroids

from vgrl.worlds.base import CheckResult, Prompt, World

COLOURS = ("red", "green", "blue")  # channel k of colour COLOURS[k]
WORDING = {"train": "a {} block seen from two sides", "heldout": "two views of a {} block"}
BLOCK, VIEWS = 4, 2


@dataclass(frozen=True)
class ViewsMeta:
    """What a prompt asks for: the block's colour (its category)."""

    category: str


def _meta(m) -> ViewsMeta:
    return m.meta if isinstance(m, Prompt) else m


class ViewsWorld(World):
    """Prompts, ground-truth view pairs and the consistency checker of the module docstring."""

    name = "views"
    layout = "multiview"
    splits = ("train", "heldout")
    categories = COLOURS
    Meta = ViewsMeta

    def __init__(self, resolution: int = 16, **_options) -> None:
        if resolution < BLOCK + 2:
            raise ValueError(f"resolution {resolution} is too small; valid: >= {BLOCK + 2}")
        self.resolution = resolution

    def prompts(self, split: str = "train", category: str | None = None) -> list[Prompt]:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} of world 'views'; valid: {', '.join(self.splits)}")
        if category is not None and category not in self.categories:
            raise ValueError(f"unknown category {category!r}; valid: {', '.join(self.categories)}")
        return [Prompt(WORDING[split].format(c), ViewsMeta(c)) for c in self.categories
                if category is None or c == category]

    def mismatched(self, meta: ViewsMeta) -> ViewsMeta:
        """A prompt no ground truth of ``meta`` satisfies: the next colour (another category)."""
        return ViewsMeta(COLOURS[(COLOURS.index(meta.category) + 1) % len(COLOURS)])

    def render(self, metas: Sequence, seed: int | Sequence[int] = 0) -> Tensor:
        """Ground-truth view pairs ``(B, 2, 3, R, R)``; sample ``i`` from ``default_rng([seed, i])`` (or ``seed[i]``)."""
        seeds = [[int(seed), i] for i in range(len(metas))] if isinstance(seed, int) else [int(s) for s in seed]
        r = self.resolution
        out = torch.zeros(len(metas), VIEWS, 3, r, r)
        for views, m, s in zip(out, metas, seeds):
            k = COLOURS.index(_meta(m).category)
            x, y = (int(v) for v in np.random.default_rng(s).integers(1, r - BLOCK, size=2))
            views[0, k, y:y + BLOCK, x:x + BLOCK] = 1.0
            views[1, k, y:y + BLOCK, r - BLOCK - x:r - x] = 1.0  # seen from behind: mirrored left-right
        return out

    def check(self, samples: Tensor, metas: Sequence, *, dense: bool = False) -> CheckResult:
        """Judge view pairs ``(B, 2, 3, R, R)`` against their colours (module docstring); ``dense``: the sample's
        score on every pixel of every view ``(B, 2, R, R)``."""
        metas = [_meta(m) for m in metas]
        if samples.ndim != 5 or samples.shape[1] != VIEWS or len(metas) != samples.shape[0]:
            raise ValueError(f"world 'views' checks view pairs (B, {VIEWS}, 3, H, W) with one meta each, got "
                             f"{tuple(samples.shape)} and {len(metas)} metas")
        x = samples.to(torch.float32)
        weight = x.mean(dim=2, keepdim=True)                                           # (B, V, 1, H, W)
        colour = (x * weight).sum(dim=(-2, -1)) / weight.sum(dim=(-2, -1)).clamp_min(1e-6)  # (B, V, 3)
        k = torch.tensor([COLOURS.index(m.category) for m in metas], device=x.device)
        asked = colour.gather(2, k.view(-1, 1, 1).expand(-1, VIEWS, 1)).squeeze(2)      # (B, V)
        others = (colour.sum(dim=2) - asked) / 2
        colour_ok = (0.5 + asked - others).clamp(0, 1)
        c = centroids(x)
        err = (c[:, 1, 1] - c[:, 0, 1]).abs() + (c[:, 0, 0] + c[:, 1, 0] - (x.shape[-1] - 1)).abs()
        position = (1.25 - err / 4).clamp(0, 1)
        score = (colour_ok.sum(dim=1) + position) / 3
        details = [{"category": m.category, "position_error": float(e)} for m, e in zip(metas, err.detach())]
        credit = score.detach().view(-1, 1, 1, 1).expand(-1, VIEWS, *x.shape[-2:]) if dense else None
        return CheckResult(passed=(score.detach() == 1).cpu(), score=score, details=details, dense=credit)


COMPONENT = ViewsWorld
