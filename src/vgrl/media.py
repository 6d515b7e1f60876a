"""Pictures of samples and curves: sample grids (PNG, animated GIF) and line plots, shared by training,
evaluation and sampling.

Samples of every layout (:mod:`vgrl.layouts`): an image batch tiles into a square grid, a video becomes a
row of its frames (a strip) plus an animated GIF, a view set a row of its views.

Torch-free at import (a grid takes a tensor but only calls its methods), so ``vgrl report`` stays light.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
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


PASS_COLOUR, FAIL_COLOUR = (40, 160, 60), (210, 40, 40)  # the frame of a checked sample: passed / failed


def _tile(tiles: np.ndarray, ncol: int, pad: int, scale: int, ring: Sequence[tuple[int, int, int]] | None = None
          ) -> Image.Image:
    """Tile ``(T, H, W, 3)`` uint8 tiles row by row, ``ncol`` per row, on a white canvas; ``ring``: per tile, the
    colour of the padding around it (a verdict you can read at a glance)."""
    t, h, w, _ = tiles.shape
    rows = math.ceil(t / ncol)
    gap = pad if ring is None else 2 * pad  # with rings: each its own ``pad`` wide, so neighbours never overlap
    canvas = np.full((rows * (h + gap) + gap, ncol * (w + gap) + gap, 3), 255, dtype=np.uint8)
    for i in range(t):
        r, c = divmod(i, ncol)
        top, left = gap + r * (h + gap), gap + c * (w + gap)
        if ring is not None:
            canvas[top - pad: top + h + pad, left - pad: left + w + pad] = ring[i]
        canvas[top: top + h, left: left + w] = tiles[i]
    grid = Image.fromarray(canvas)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    return grid


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1,
               layout: str = "image", passed: Sequence[bool] | None = None) -> Image.Image:
    """Tile a batch of pixels in [0, 1] into one RGB image.

    ``layout`` image ``(B, 3, H, W)``: ``nrow`` images per row (default: a square). Video ``(B, F, 3, H, W)``
    or multi-view ``(B, V, 3, H, W)``: one row per sample, its frames (views) left to right (``nrow`` unused).
    ``passed``: per sample, whether a checker passed it: a green frame around it, else red.
    """
    pixels = _pixels(images, layout)
    ring = None
    if passed is not None:
        if len(passed) != len(pixels):
            raise ValueError(f"image_grid: {len(passed)} verdicts for {len(pixels)} samples")
        ring = [PASS_COLOUR if ok else FAIL_COLOUR for ok in passed for _ in range(pixels.shape[1])]
    if layout == "image":
        return _tile(pixels[:, 0], nrow or math.ceil(math.sqrt(len(pixels))), pad, scale, ring)
    return _tile(pixels.reshape(-1, *pixels.shape[2:]), pixels.shape[1], pad, scale, ring)


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1,
              layout: str = "image", passed: Sequence[bool] | None = None) -> Path:
    """Write :func:`image_grid` as PNG to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, nrow=nrow, scale=scale, layout=layout, passed=passed).save(path)
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
                 scale: int = 1, passed: Sequence[bool] | None = None) -> list[Path]:
    """The pictures of a batch: ``path`` (PNG, :func:`save_grid`: a strip of frames per video, a row of views
    per view set) and, for the layouts in :data:`ANIMATED`, the same name with ``.gif``
    (:func:`save_animation`). Returns the paths written, the PNG first."""
    path = Path(path)
    out = [save_grid(samples, path, nrow=nrow, scale=scale, layout=layout, passed=passed)]
    if layout in ANIMATED:
        out.append(save_animation(samples, path.with_suffix(".gif"), layout, nrow=nrow, scale=scale))
    return out


def svg_line_plot(series: dict[str, list[tuple[float, float]]], *, title: str = "", xlabel: str = "",
                  ylabel: str = "", width: int = 560, height: int = 320, log_y: bool = False) -> str:
    """A self-contained SVG line chart of named ``(x, y)`` series, drawn by matplotlib (for docs and report.html).

    Text stays text (``svg.fonttype: none``), so titles and labels are searchable and scale with the page; with
    more than one series the legend sits outside the axes, so it never covers a curve. ``width`` x ``height``
    is the size in pixels at 100 dpi.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    series = {name: [(x, y) for x, y in pts if y > 0 or not log_y] for name, pts in series.items()}
    if not any(series.values()):
        raise ValueError("svg_line_plot needs at least one point")
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "vgrl", "font.size": 9}):
        fig = Figure(figsize=(width / 100, height / 100), dpi=100, layout="constrained")
        ax = fig.add_subplot()
        for i, (name, pts) in enumerate(series.items()):
            if pts:  # few points (evaluations): mark each, so a lone point still shows
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=name, linewidth=1.5, marker="o" if len(pts) <= 20 else None, markersize=3,
                        gid=f"series-{i}")
        if log_y:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        out = io.StringIO()
        FigureCanvasSVG(fig).print_svg(out, metadata={"Date": None})
    text = out.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the chart goes inline into HTML
