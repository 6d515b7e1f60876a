"""Bradley–Terry reward training (`vgrl train-reward`) and the `learned_bt` reward: the loss against a hand
computation, fitting separable synthetic pairs (image-only and prompt-conditioned), the saved model as a
differentiable reward, and errors naming the file and line of a malformed dataset."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from vgrl import rewards
from vgrl.cli import main
from vgrl.data.preferences import PreferenceDataError
from vgrl.reward_training import (TrainRewardSettings, bt_loss, load_pairs, make_brightness_pairs, pairwise_accuracy,
                                  split, train_reward)
from vgrl.rewards.learned_bt import BTRewardNet, hash_prompts

FAST = dict(steps=120, resolution=16, width=16, heldout=0.25, threads=1)


def test_bt_loss_equals_hand_computation():
    r_chosen, r_rejected = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 2.0, 3.0])
    # -log sigmoid(d) for d = 1, -2, 0: log(1 + e^-1), log(1 + e^2), log 2
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2)) + math.log(2)) / 3
    assert bt_loss(r_chosen, r_rejected).item() == pytest.approx(expected, rel=1e-6)
    assert bt_loss(torch.tensor([1e4]), torch.tensor([0.0])).item() == 0.0  # stable, no log(0)
    assert bt_loss(torch.tensor([0.0]), torch.tensor([1e4])).item() == pytest.approx(1e4)
    assert pairwise_accuracy(r_chosen, r_rejected) == pytest.approx((1 + 0 + 0.5) / 3)  # a tie counts 1/2


def test_split_is_seeded_disjoint_and_complete():
    train, held = split(40, 0.25, seed=3)
    assert len(held) == 10 and sorted(train + held) == list(range(40))
    assert (train, held) == split(40, 0.25, seed=3) and held != split(40, 0.25, seed=4)[1]
    with pytest.raises(ValueError, match="at least 2"):
        split(1, 0.5, 0)
    with pytest.raises(ValueError, match="heldout"):
        split(10, 1.0, 0)


def test_fits_separable_pairs_and_is_a_differentiable_reward(tmp_path):
    make_brightness_pairs(tmp_path / "data", n=160, size=16, seed=0)  # the brighter image is preferred
    result = train_reward(tmp_path / "data", tmp_path / "model", TrainRewardSettings(**FAST))
    assert result["heldout_accuracy"] > 0.95 and result["heldout_pairs"] == 40 and result["train_pairs"] == 120
    assert json.loads((tmp_path / "model" / "eval.json").read_text()) == result
    reward = rewards.get("learned_bt", path=str(tmp_path / "model"))
    assert reward.differentiable and "learned_bt" in rewards.available()
    data = load_pairs(tmp_path / "data", 16)
    images = torch.cat([data.chosen[:4], data.rejected[:4]]).requires_grad_(True)
    out = reward(images, data.prompts[:4] * 2)
    assert (out.scores[:4] > out.scores[4:]).all()
    (grad,) = torch.autograd.grad(out.scores.sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    big = torch.nn.functional.interpolate(images.detach(), size=(48, 48), mode="nearest")  # any size is resized
    assert reward(big, data.prompts[:4] * 2).scores.shape == (8,)


def test_prompt_conditioning_fits_what_an_image_only_model_cannot(tmp_path):
    """'a bright picture' prefers the brighter image, 'a dark picture' the darker: only the text pathway helps."""
    make_brightness_pairs(tmp_path / "data", n=160, size=16, seed=1, prompted=True)
    with_text = train_reward(tmp_path / "data", tmp_path / "text", TrainRewardSettings(**FAST))
    image_only = train_reward(tmp_path / "data", tmp_path / "image", TrainRewardSettings(**FAST, text=False))
    assert with_text["heldout_accuracy"] > 0.95
    assert image_only["heldout_accuracy"] < 0.8
    a, _ = hash_prompts(["bright"], 1024)
    b, _ = hash_prompts(["dark"], 1024)
    assert a.item() != b.item()


def test_cli_writes_the_model_and_eval(tmp_path, capsys):
    make_brightness_pairs(tmp_path / "data", n=40, size=16, seed=2)
    code = main(["train-reward", "--pairs", str(tmp_path / "data" / "pairs.jsonl"), "--out", str(tmp_path / "m"),
                 "--steps", "20", "--resolution", "16", "--width", "8", "--heldout", "0.25"])
    assert code == 0 and "held-out pairwise accuracy" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"model.safetensors", "config.json", "eval.json"}
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model"] == BTRewardNet(width=8, resolution=16).config and cfg["settings"]["steps"] == 20


def test_malformed_line_error_names_the_file_and_line(tmp_path, capsys):
    index = make_brightness_pairs(tmp_path / "data", n=3, size=8, seed=0)
    lines = index.read_text().splitlines()
    lines[1] = '{"prompt": "x", "chosen": "images/00001_chosen.png"'  # truncated JSON on line 2
    lines[2] = json.dumps({"prompt": "y", "chosen": "images/00002_chosen.png"})  # no 'rejected' on line 3
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(PreferenceDataError) as err:
        train_reward(index, tmp_path / "out", TrainRewardSettings(**FAST))
    message = str(err.value)
    assert str(index) in message and re.search(r"line 2\b.*not valid JSON", message)
    assert re.search(r"line 3\b.*missing required field 'rejected'", message)
    assert main(["train-reward", "--pairs", str(index), "--out", str(tmp_path / "out")]) == 2
    assert "line 2" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_missing_model_error_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none")) + ".*model.safetensors"):
        rewards.get("learned_bt", path=str(tmp_path / "none"))
