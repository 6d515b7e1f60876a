"""Ground-truth rendering of the ``shapes`` world (private; numpy and torch, imported lazily by ``shapes.py``).

A scene is laid out object by object: each object's box (an odd side from :func:`object_sizes`) goes at a
random free position at least ``GAP`` pixels from every earlier box and one pixel from the border; for a
``position`` prompt the second object is confined to where the relation holds clearly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from vgrl.worlds.shapes import BACKGROUND, COLOURS, GAP, PALETTE, SHAPES, PromptMeta


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
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    mask.setflags(write=False)
    return mask


def render(metas: Sequence[PromptMeta], seed: int | Sequence[int], sizes: tuple[int, ...],
           resolution: int) -> Tensor:
    """``(B, 3, H, W)`` float32 scenes (see ``ShapesWorld.render`` for the seeds)."""
    if isinstance(seed, (int, np.integer)):
        seeds = [[int(seed), i] for i in range(len(metas))]
    else:
        seeds = [int(s) for s in seed]
    if len(seeds) != len(metas):
        raise ValueError(f"{len(metas)} prompts but {len(seeds)} seeds")
    r = resolution
    out = np.empty((len(metas), r, r, 3), np.float32)
    out[:] = BACKGROUND
    for img, m, s in zip(out, metas, seeds):
        for shape, colour, x0, y0, size in layout(m, np.random.default_rng(s), sizes, resolution):
            img[y0:y0 + size, x0:x0 + size][shape_mask(shape, size)] = PALETTE[colour]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def layout(meta: PromptMeta, rng: np.random.Generator, sizes: tuple[int, ...],
           resolution: int) -> list[tuple[str, str, int, int, int]]:
    """A scene for ``meta``: ``(shape, colour, x0, y0, size)`` per object, boxes non-overlapping."""
    objs = []
    for o in meta.objects:
        colour = o.colour if o.colour is not None else COLOURS[rng.integers(len(COLOURS))]
        objs += [(o.shape, colour)] * o.count
    for attempt in range(200):
        small = attempt >= 50  # crowded scenes fall back to the smallest size
        chosen = [sizes[0] if small else int(rng.choice(sizes)) for _ in objs]
        boxes: list[tuple[int, int, int]] = []
        for size in chosen:
            ok = _free(boxes, size, resolution)
            if meta.relation is not None and boxes:
                ok &= _related(boxes[0], size, meta.relation, resolution)
            cand = np.flatnonzero(ok)
            if len(cand) == 0:
                break
            y0, x0 = divmod(int(cand[rng.integers(len(cand))]), ok.shape[1])
            boxes.append((x0 + 1, y0 + 1, size))
        if len(boxes) == len(objs):
            return [(s, c, *b) for (s, c), b in zip(objs, boxes)]
    raise RuntimeError(f"could not lay out {meta} at resolution {resolution}")


def _grid(size: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate top-left corners (1 px from the border) as broadcastable (n, 1), (1, n) grids."""
    c = np.arange(1, resolution - size)
    return c[None, :], c[:, None]  # x0, y0


def _free(boxes: list[tuple[int, int, int]], size: int, resolution: int) -> np.ndarray:
    x0, y0 = _grid(size, resolution)
    ok = np.ones((y0.shape[0], x0.shape[1]), bool)
    for bx, by, bs in boxes:
        ok &= ((x0 + size + GAP <= bx) | (bx + bs + GAP <= x0)
               | (y0 + size + GAP <= by) | (by + bs + GAP <= y0))
    return ok


def _related(first: tuple[int, int, int], size: int, relation: str, resolution: int) -> np.ndarray:
    """Where the second object may go so that ``first relation second`` holds clearly."""
    x0, y0 = _grid(size, resolution)
    dx = (x0 + size / 2) - (first[0] + first[2] / 2)  # > 0: second is right of first
    dy = (y0 + size / 2) - (first[1] + first[2] / 2)
    along, across = {"left_of": (dx, dy), "right_of": (-dx, dy),
                     "above": (dy, dx), "below": (-dy, dx)}[relation]
    return (along >= (first[2] + size) / 2 + GAP) & (np.abs(across) <= 0.5 * along)
