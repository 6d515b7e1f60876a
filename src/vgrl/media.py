"""Pictures of samples and curves: image grids (PNG) and line plots, shared by training, evaluation and sampling.

Torch-free at import (a grid takes a tensor but only calls its methods), so ``vgrl report`` stays light.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from torch import Tensor


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile ``(B, 3, H, W)`` pixels in [0, 1] into one RGB image, ``nrow`` images per row."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"image_grid takes (B, 3, H, W) images, got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    pixels = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    for i in range(b):
        r, c = divmod(i, nrow)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = pixels[i]
    grid = Image.fromarray(canvas)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    return grid


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Write :func:`image_grid` as PNG to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, nrow=nrow, scale=scale).save(path)
    return path


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
