"""Ground-truth rendering of the ``shapes`` world (private; numpy and torch, imported lazily by ``shapes.py``).

A scene is laid out object by object: each object's box (an odd side from :func:`object_sizes`) goes at a
random free position at least ``gap`` pixels from every earlier box and one pixel from the border; for a
``position`` prompt the second object is confined to where the relation holds clearly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

MASKS = ("circle", "square", "triangle", "cross")  # the shapes shape_mask draws


def object_sizes(resolution: int) -> tuple[int, ...]:
    """Odd object sides from ``max(9, ~0.26 * resolution)`` to ``~0.35 * resolution`` (9-11 px at 32)."""
    lo = max(9, int(np.ceil(0.26 * resolution)) | 1)
    hi = max(lo, (int(0.35 * resolution) - 1) | 1)
    return tuple(range(lo, hi + 1, 2))


@functools.lru_cache(maxsize=None)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean ``(size, size)`` mask of ``shape`` filling its box, sampled at pixel centres."""
    c = np.arange(size) + 0.5
    x, y = np.meshgrid(c, c)
    m = size / 2
    if shape == "circle":
        mask = (x - m) ** 2 + (y - m) ** 2 <= m ** 2
    elif shape == "square":
        mask = np.ones((size, size), bool)
    elif shape == "triangle":  # apex at the top centre, base along the bottom row
        mask = np.abs(x - m) <= y / 2
    elif shape == "cross":  # plus sign, arms a third of the side wide
        mask = (np.abs(x - m) <= size / 6) | (np.abs(y - m) <= size / 6)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(MASKS)}")
    mask.setflags(write=False)
    return mask


class Renderer:
    """Draws scenes of flat-coloured shapes on a plain background (see ``ShapesWorld.render``).

    Args:
        palette: colour name -> RGB in [0, 1]; background: RGB in [0, 1]; resolution: image side in pixels;
        gap: minimum pixels between two objects' bounding boxes.
    """

    def __init__(self, palette: dict[str, Sequence[float]], background: Sequence[float], resolution: int, gap: int):
        self.palette, self.colours = palette, tuple(palette)
        self.background, self.resolution, self.gap = background, resolution, gap
        self.sizes = object_sizes(resolution)

    def render(self, metas: Sequence[Any], seed: int | Sequence[int]) -> Tensor:
        """``(B, 3, H, W)`` float32 scenes (see ``ShapesWorld.render`` for the seeds)."""
        if isinstance(seed, (int, np.integer)):
            seeds = [[int(seed), i] for i in range(len(metas))]
        else:
            seeds = [int(s) for s in seed]
        if len(seeds) != len(metas):
            raise ValueError(f"{len(metas)} prompts but {len(seeds)} seeds")
        r = self.resolution
        out = np.empty((len(metas), r, r, 3), np.float32)
        out[:] = self.background
        for img, m, s in zip(out, metas, seeds):
            for shape, colour, x0, y0, size in self.layout(m, np.random.default_rng(s)):
                img[y0:y0 + size, x0:x0 + size][shape_mask(shape, size)] = self.palette[colour]
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()

    def layout(self, meta: Any, rng: np.random.Generator) -> list[tuple[str, str, int, int, int]]:
        """A scene for ``meta``: ``(shape, colour, x0, y0, size)`` per object, boxes non-overlapping."""
        objs = []
        for o in meta.objects:
            colour = o.colour if o.colour is not None else self.colours[rng.integers(len(self.colours))]
            objs += [(o.shape, colour)] * o.count
        for attempt in range(200):
            small = attempt >= 50  # crowded scenes fall back to the smallest size
            chosen = [self.sizes[0] if small else int(rng.choice(self.sizes)) for _ in objs]
            boxes: list[tuple[int, int, int]] = []
            for size in chosen:
                ok = self._free(boxes, size)
                if meta.relation is not None and boxes:
                    ok &= self._related(boxes[0], size, meta.relation)
                cand = np.flatnonzero(ok)
                if len(cand) == 0:
                    break
                y0, x0 = divmod(int(cand[rng.integers(len(cand))]), ok.shape[1])
                boxes.append((x0 + 1, y0 + 1, size))
            if len(boxes) == len(objs):
                return [(s, c, *b) for (s, c), b in zip(objs, boxes)]
        raise RuntimeError(f"could not lay out {meta} at resolution {self.resolution}")

    def _grid(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate top-left corners (1 px from the border) as broadcastable (n, 1), (1, n) grids."""
        c = np.arange(1, self.resolution - size)
        return c[None, :], c[:, None]  # x0, y0

    def _free(self, boxes: list[tuple[int, int, int]], size: int) -> np.ndarray:
        x0, y0 = self._grid(size)
        gap = self.gap
        ok = np.ones((y0.shape[0], x0.shape[1]), bool)
        for bx, by, bs in boxes:
            ok &= ((x0 + size + gap <= bx) | (bx + bs + gap <= x0)
                   | (y0 + size + gap <= by) | (by + bs + gap <= y0))
        return ok

    def _related(self, first: tuple[int, int, int], size: int, relation: str) -> np.ndarray:
        """Where the second object may go so that ``first relation second`` holds clearly."""
        x0, y0 = self._grid(size)
        dx = (x0 + size / 2) - (first[0] + first[2] / 2)  # > 0: second is right of first
        dy = (y0 + size / 2) - (first[1] + first[2] / 2)
        along, across = {"left_of": (dx, dy), "right_of": (-dx, dy),
                         "above": (dy, dx), "below": (-dy, dx)}[relation]
        return (along >= (first[2] + size) / 2 + self.gap) & (np.abs(across) <= 0.5 * along)
