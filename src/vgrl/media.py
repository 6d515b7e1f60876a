"""Pictures of samples and curves: sample grids (PNG, animated GIF) and line plots, shared by training,
evaluation and sampling.

Samples of every layout (:mod:`vgrl.layouts`): an image batch tiles into a square grid, a video becomes a
row of its frames (a strip) plus an animated GIF, a view set a row of its views.

Torch-free at import (a grid takes a tensor but only calls its methods), so ``vgrl report`` stays light.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vgrl.layouts import LayoutError, as_frames, check_samples

if TYPE_CHECKING:
    from torch import Tensor


def _pixels(samples: Tensor, layout: str) -> np.ndarray:
    """``(B, N, H, W, 3)`` uint8 of a batch in ``layout`` (pixels in [0, 1]; ``N = 1`` for an image)."""
    try:
        check_samples(samples, layout, "samples")
    except LayoutError as e:
        raise ValueError(f"image_grid: {e}") from None
    frames = as_frames(samples.detach().float().clamp(0, 1), layout)
    return (frames.permute(0, 1, 3, 4, 2).cpu().numpy() * 255).round().astype(np.uint8)


def _tile(tiles: np.ndarray, ncol: int, pad: int, scale: int) -> Image.Image:
    """Tile ``(T, H, W, 3)`` uint8 tiles row by row, ``ncol`` per row, on a white canvas."""
    t, h, w, _ = tiles.shape
    rows = math.ceil(t / ncol)
    canvas = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(t):
        r, c = divmod(i, ncol)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = tiles[i]
    grid = Image.fromarray(canvas)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    return grid


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1,
               layout: str = "image") -> Image.Image:
    """Tile a batch of pixels in [0, 1] into one RGB image.

    ``layout`` image ``(B, 3, H, W)``: ``nrow`` images per row (default: a square). Video ``(B, F, 3, H, W)``
    or multi-view ``(B, V, 3, H, W)``: one row per sample, its frames (views) left to right (``nrow`` unused).
    """
    pixels = _pixels(images, layout)
    if layout == "image":
        return _tile(pixels[:, 0], nrow or math.ceil(math.sqrt(len(pixels))), pad, scale)
    return _tile(pixels.reshape(-1, *pixels.shape[2:]), pixels.shape[1], pad, scale)


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1,
              layout: str = "image") -> Path:
    """Write :func:`image_grid` as PNG to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, nrow=nrow, scale=scale, layout=layout).save(path)
    return path


def save_animation(samples: Tensor, path: str | Path, layout: str, nrow: int | None = None, scale: int = 1,
                   frame_ms: int = 250) -> Path:
    """Write an animated GIF (looping) to ``path``: frame ``k`` tiles frame (view) ``k`` of every sample,
    ``nrow`` samples per row (default: a square), ``frame_ms`` per frame (Pillow merges a frame equal to the
    previous one into it, adding the durations: the animation looks the same). GIF has 256 colours per
    frame: exact for a few flat colours, an approximation for photographs."""
    pixels = _pixels(samples, layout)
    ncol = nrow or math.ceil(math.sqrt(len(pixels)))
    frames = [_tile(pixels[:, k], ncol, 2, scale) for k in range(pixels.shape[1])]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    return path


ANIMATED = ("video",)  # layouts whose samples are also written as an animated GIF


def save_samples(samples: Tensor, path: str | Path, layout: str = "image", nrow: int | None = None,
                 scale: int = 1) -> list[Path]:
    """The pictures of a batch: ``path`` (PNG, :func:`save_grid`: a strip of frames per video, a row of views
    per view set) and, for the layouts in :data:`ANIMATED`, the same name with ``.gif``
    (:func:`save_animation`). Returns the paths written, the PNG first."""
    path = Path(path)
    out = [save_grid(samples, path, nrow=nrow, scale=scale, layout=layout)]
    if layout in ANIMATED:
        out.append(save_animation(samples, path.with_suffix(".gif"), layout, nrow=nrow, scale=scale))
    return out


def svg_line_plot(series: dict[str, list[tuple[float, float]]], *, title: str = "", xlabel: str = "",
                  ylabel: str = "", width: int = 560, height: int = 320, log_y: bool = False) -> str:
    """A self-contained SVG line chart of named ``(x, y)`` series (for docs and report.html)."""
    pts = [(x, y) for s in series.values() for x, y in s if (y > 0 or not log_y)]
    if not pts:
        raise ValueError("svg_line_plot needs at least one point")
    fy = math.log10 if log_y else (lambda y: y)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(fy(p[1]) for p in pts), max(fy(p[1]) for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 60, 20, 30, 45
    sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    sy = lambda y: height - bottom - (fy(y) - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>',
           f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">{escape(xlabel)}</text>',
           f'<text x="14" y="{height / 2}" text-anchor="middle" transform="rotate(-90 14 {height / 2})">'
           f'{escape(ylabel)}</text>']
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        label = f"{10 ** yv:.3g}" if log_y else f"{yv:.3g}"
        out.append(f'<text x="{sx(xv)}" y="{height - bottom + 14}" text-anchor="middle">{xv:.4g}</text>')
        ypix = height - bottom - i / 4 * (height - top - bottom)
        out.append(f'<text x="{left - 4}" y="{ypix + 4}" text-anchor="end">{label}</text>')
    for k, (name, s) in enumerate(series.items()):
        colour = colours[k % len(colours)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s if (y > 0 or not log_y))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        if len(s) <= 20:  # few points (evaluations): mark each, so a lone point still shows
            out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>'
                       for x, y in s if (y > 0 or not log_y))
        out.append(f'<text x="{width - right - 4}" y="{top + 14 * (k + 1)}" text-anchor="end" fill="{colour}">'
                   f'{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
