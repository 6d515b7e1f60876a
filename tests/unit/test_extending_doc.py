"""docs/extending.md's example reward works as written: out of tree by ``package.module:Class``, on images and
videos, with the gradient it declares and the conformance instance it offers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vgrl import registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


@pytest.fixture
def sharpness(tmp_path, monkeypatch):
    section = DOC.read_text().split("## A reward", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "mylab_rewards.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    return registry.resolve("rewards", "mylab_rewards:Sharpness")


def test_the_documented_reward_scores_images_and_videos(sharpness, tmp_path):
    reward = sharpness.from_config({"scale": 2.0})
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 16, 16, generator=g, requires_grad=True)
    out = reward(images, ["a"] * 3)
    assert out.scores.shape == (3,) and bool((out.scores > 0).all())
    out.scores.sum().backward()
    assert images.grad is not None and bool(images.grad.abs().sum() > 0)  # differentiable, as it declares
    clips = torch.rand(2, 4, 3, 16, 16, generator=g)
    assert reward(clips, ["a", "b"], layout="video").scores.shape == (2,)
    flat = torch.full((1, 3, 16, 16), 0.5)  # a flat image has no edges
    assert float(reward(flat, ["a"]).scores[0]) == 0.0
    assert isinstance(sharpness.example(tmp_path), sharpness)


def test_the_documented_reward_refuses_bad_options(sharpness):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="scale"):
        sharpness.from_config({"scale": -1.0})
    with pytest.raises(ValidationError, match="sharpen"):
        sharpness.from_config({"sharpen": 1})
