"""Image grids and SVG plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vgrl.tracking import image_grid, save_grid, svg_line_plot


def test_grid_places_each_image_in_its_cell(tmp_path):
    images = torch.zeros(5, 3, 4, 6)
    images[3, 0] = 1.0  # fourth image pure red
    grid = np.asarray(image_grid(images, nrow=2, pad=1))
    assert grid.shape == (3 * 5 + 1, 2 * 7 + 1, 3)
    r, c = divmod(3, 2)
    cell = grid[1 + r * 5: 1 + r * 5 + 4, 1 + c * 7: 1 + c * 7 + 6]
    assert (cell == [255, 0, 0]).all()
    path = save_grid(images, tmp_path / "a" / "g.png", nrow=2, scale=2)
    assert Image.open(path).size == (2 * (2 * 8 + 2), 2 * (3 * 6 + 2))  # pad 2, scale 2


def test_grid_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        image_grid(torch.zeros(2, 1, 4, 4))


def test_svg_plot_has_one_line_per_series():
    svg = svg_line_plot({"a": [(0, 1.0), (1, 0.5)], "b": [(0, 2.0), (1, 3.0)]}, title="t", log_y=True)
    assert svg.startswith("<svg") and svg.count("<polyline") == 2 and ">a<" in svg and ">b<" in svg
    with pytest.raises(ValueError):
        svg_line_plot({"a": []})
