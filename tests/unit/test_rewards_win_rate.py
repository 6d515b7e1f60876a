"""The groupwise win-rate reward: hand-computed win rates with ties, independent groups, the rank
identity, lone samples, a real inner reward (the shapes checker) and the `vgrl train` config path."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import rankdata

from vgrl import registry, rewards
from vgrl.cli import main
from vgrl.config import load_config
from vgrl.rewards.base import RewardInputError
from vgrl.rewards.win_rate import WinRate, win_rates
from vgrl.types import RewardOutput
from vgrl.worlds.shapes import ShapesWorld

from tests.unit.test_rewards import Fixed


def _images(b: int) -> torch.Tensor:
    return torch.full((b, 3, 8, 8), 0.5)


def _win(values: list[float], prompts: list[str], **options) -> RewardOutput:
    return WinRate(reward=Fixed(values=values), **options)(_images(len(values)), prompts)


# prompts interleaved: groups are identical strings, not positions. Group a: 1, 2, 2, 3; group b: 5, 5, 0
PROMPTS = ["a", "b", "a", "a", "b", "a", "b"]
VALUES = [1.0, 5.0, 2.0, 2.0, 5.0, 3.0, 0.0]


def test_hand_computed_with_ties():
    out = _win(VALUES, PROMPTS)
    # a: 1 beats nobody -> 0; each 2 beats 1, ties the other 2 -> (1 + 1/2) / 3; 3 beats all -> 1
    # b: each 5 beats 0, ties the other 5 -> (1 + 1/2) / 2; 0 -> 0
    assert out.scores.tolist() == pytest.approx([0.0, 0.75, 0.5, 0.5, 0.75, 1.0, 0.0], abs=1e-7)
    assert out.scores.dtype == torch.float32
    assert out.details["inner"].tolist() == VALUES
    assert out.details["group"].tolist() == [0, 1, 0, 0, 1, 0, 1]
    assert out.details["inner/raw"] == VALUES
    r = WinRate(reward=Fixed(values=VALUES))
    assert not r.differentiable and r.granularity == "groupwise" and r.name == "win_rate"


def test_tie_margin_counts_small_gaps_as_ties():
    out = _win([1.0, 2.0, 2.0, 3.0], ["a"] * 4, tie_margin=1.0)
    # 1: ties both 2s, loses to 3 -> 1/3; 2: ties 1, 2 and 3 -> 1/2; 3: ties both 2s, beats 1 -> 2/3
    assert out.scores.tolist() == pytest.approx([1 / 3, 0.5, 0.5, 2 / 3], abs=1e-7)
    with pytest.raises(ValueError, match="tie_margin"):
        WinRate(reward=Fixed(values=[0.0]), tie_margin=-1.0)


def test_groups_are_independent():
    base = _win(VALUES, PROMPTS).scores
    changed = list(VALUES)
    changed[1], changed[4], changed[6] = -7.0, 9.0, 100.0  # only group b's inner scores
    moved = _win(changed, PROMPTS).scores
    a = [i for i, p in enumerate(PROMPTS) if p == "a"]
    assert torch.equal(moved[a], base[a])
    assert moved[[1, 4, 6]].tolist() == pytest.approx([0.0, 0.5, 1.0])
    alone = _win([VALUES[i] for i in a], ["a"] * len(a)).scores  # group a scored without group b
    assert torch.equal(alone, base[a])


@pytest.mark.parametrize("seed", range(4))
def test_equals_rank_arithmetic(seed):
    g = torch.Generator().manual_seed(seed)
    b = 40
    groups = torch.randint(0, 5, (b,), generator=g)
    groups[:10] = torch.arange(5).repeat(2)  # every group has >= 2 members
    prompts = [f"prompt {int(k)}" for k in groups]
    values = torch.randint(0, 4, (b,), generator=g).float() if seed % 2 == 0 else torch.randn(b, generator=g)
    out = _win(values.tolist(), prompts).scores
    expected = torch.empty(b)
    for k in groups.unique():
        rows = (groups == k).nonzero().flatten()
        ranks = torch.tensor(rankdata(values[rows].numpy(), method="average"), dtype=torch.float32)
        expected[rows] = (ranks - 1) / (len(rows) - 1)
        assert out[rows].mean().item() == pytest.approx(0.5, abs=1e-6)  # a group's win rates average 1/2
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # invariant under a strictly increasing transform of the inner scores
    torch.testing.assert_close(_win(torch.exp(3 * values).tolist(), prompts).scores, out, rtol=0, atol=0)
    torch.testing.assert_close(win_rates(values, groups), out, rtol=0, atol=0)


def test_lone_sample_raises_naming_it():
    with pytest.raises(RewardInputError, match=r"alone in their group \(sample, prompt\): \[\(2, 'b'\)\]"):
        _win([1.0, 2.0, 3.0], ["a", "a", "b"])
    with pytest.raises(RewardInputError, match="group_size >= 2"):
        _win([1.0], ["a"])
    with pytest.raises(ValueError, match=r"samples \[0\] are alone"):
        win_rates(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 1]))


def test_construction_errors_name_the_field():
    with pytest.raises(ValueError, match="exactly one of option inner"):
        rewards.get("win_rate")
    with pytest.raises(ValueError, match="exactly one of option inner"):
        WinRate(reward=rewards.get("jpeg"), inner={"name": "jpeg"})
    with pytest.raises(TypeError, match="reward must be a vgrl Reward"):
        WinRate(reward="jpeg")
    with pytest.raises(ValueError, match=r"inner\.options\.qualty: Extra inputs"):
        rewards.get("win_rate", inner={"name": "jpeg", "options": {"qualty": 3}})
    with pytest.raises(registry.RegistryError, match=r"inner\.name: unknown reward 'jpg'"):
        rewards.get("win_rate", inner={"name": "jpg"})
    with pytest.raises(ValueError, match=r"inner: unknown field\(s\) 'weight'"):
        rewards.get("win_rate", inner={"name": "jpeg", "weight": 2})


def test_over_the_shapes_checker_the_correct_render_wins():
    world = ShapesWorld(32)
    metas = [p.meta for p in world.prompts("train", "counting")[:4]]
    images = world.render(metas, seed=0)  # image k is a correct render of prompt k
    prompts = [world.prompts("train", "counting")[0].text] * 4  # all four judged against prompt 0
    reward = rewards.get("win_rate", inner={"name": "shapes_checker", "options": {"score": "pass"}})
    out = reward(images, prompts, [metas[0]] * 4)
    passed = out.details["inner/passed"]
    assert passed[0] and out.details["inner"][0] == 1.0
    n_pass = int(passed.sum())
    assert out.scores[0].item() == pytest.approx((3 - n_pass + 1 + 0.5 * (n_pass - 1)) / 3)
    assert all(out.scores[i] < out.scores[0] for i in range(4) if not passed[i])


def test_vgrl_train_config_syntax(tmp_path, capsys):
    from vgrl.training.build import component  # how `vgrl train` builds its reward from the config

    config = tmp_path / "win_rate.yaml"
    config.write_text(
        "backbone: {name: flow, path: models/shapes-flow/pipeline, resolution: 32}\n"
        "kernel: {name: flow_sde}\n"
        "data: {world: shapes, split: train}\n"
        "batch_size: 8\ngroup_size: 4\n"
        "reward: {name: win_rate, tie_margin: 0.0, inner: {name: jpeg, options: {quality: 80}}}\n"
        "algorithm: {name: flow_grpo}\n")
    assert main(["validate", str(config)]) == 0
    assert "win_rate" in capsys.readouterr().out
    cfg = load_config(config, ["reward.inner.options.mode=incompressibility"])
    reward = component("rewards", "reward", cfg.reward)
    assert isinstance(reward, WinRate) and reward.inner.name == "jpeg"
    assert reward.inner.options.quality == 80 and reward.inner.options.mode == "incompressibility"
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    images = torch.cat([torch.full((2, 3, 32, 32), 0.5), noise])  # flat images are smaller JPEGs
    out = reward(images, ["p"] * 4)
    # incompressibility: each flat image ties the other and loses to both noisy ones -> (1/2) / 3; the
    # noisy ones beat both flat ones and split their own comparison (1 + 1/2 + 1/2 whoever wins)
    assert out.scores[:2].tolist() == pytest.approx([1 / 6, 1 / 6])
    assert out.scores[2:].sum().item() == pytest.approx(5 / 3) and (out.scores[2:] >= 2 / 3 - 1e-6).all()
