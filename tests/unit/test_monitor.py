"""The reward-hacking monitor: Fréchet distance, the warning rule, and its rows in a tiny training run."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from vgrl.config import load_config
from vgrl.evaluation.monitor import HackingMonitor, frechet_distance, rising_while_falling
from vgrl.training.loop import train

from tests.recipes.test_train import TINY


def test_frechet_distance_by_hand():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 5, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # a pure shift d moves only the mean term: FD = ||d||^2
    d = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    assert frechet_distance(a + d, a) == pytest.approx(float((d**2).sum()), rel=1e-9)
    # scaling by s: mean term s-1 shifted means and Tr(S + s^2 S - 2 s S) = (1 - s)^2 Tr(S)
    s = 3.0
    cov = torch.cov(a.T)
    want = float(((a.mean(0) * (s - 1)) ** 2).sum() + (1 - s) ** 2 * cov.trace())
    assert frechet_distance(s * a, a) == pytest.approx(want, rel=1e-6)


def test_warning_needs_patience_consecutive_proxy_up_gold_down():
    up_down = [(0.1, 0.5), (0.2, 0.4), (0.3, 0.3), (0.4, 0.2)]
    assert rising_while_falling(up_down, 3) and not rising_while_falling(up_down[:3], 3)
    assert not rising_while_falling([(0.1, 0.5), (0.2, 0.4), (0.3, 0.45), (0.4, 0.2)], 3)  # gold recovered once
    assert not rising_while_falling([(0.1, 0.5), (0.2, 0.4), (0.2, 0.3), (0.4, 0.2)], 3)   # proxy flat once
    assert rising_while_falling(up_down[1:], 2)


class _Proxy:
    """A stand-in proxy reward whose value the test sets (the monitor only calls it)."""

    def __init__(self):
        self.value = 0.0

    def __call__(self, images, prompts, metadata):
        from vgrl.types import RewardOutput

        return RewardOutput(torch.full((len(images),), self.value))

    def monitor_scores(self, images, prompts, metadata):
        return self(images, prompts, metadata).scores


def test_monitor_observes_drift_diversity_and_warns():
    proxy = _Proxy()
    mon = HackingMonitor(proxy, patience=2, feature_resolution=32)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 32, 32, generator=g)
    same = images[:1].expand(4, -1, -1, -1)
    groups = torch.tensor([0, 0, 1, 1])
    first = mon.observe(images, [""] * 12, [None] * 12, gold=0.5, diversity_images=same, diversity_groups=groups)
    assert first["frechet"] == pytest.approx(0.0, abs=1e-6)       # the first evaluation is the base
    assert first["diversity"] == pytest.approx(0.0, abs=1e-6)      # identical samples: no diversity
    assert first["hacking_warning"] == 0.0
    proxy.value = 1.0
    second = mon.observe(images * 0.2, [""] * 12, [None] * 12, gold=0.4)
    assert second["frechet"] > 0 and second["hacking_warning"] == 0.0
    proxy.value = 2.0
    third = mon.observe(images * 0.1, [""] * 12, [None] * 12, gold=0.3)
    assert third["hacking_warning"] == 1.0 and third["proxy_reward"] == 2.0
    restored = HackingMonitor(proxy, patience=2, feature_resolution=32)
    restored.load_state_dict(mon.state_dict())
    assert torch.equal(restored.base_features, mon.base_features) and restored.history == mon.history


def test_groupwise_rewards_give_a_pointwise_proxy_or_none():
    from vgrl import rewards
    from vgrl.rewards.compose import Compose

    g = torch.Generator().manual_seed(1)
    images = torch.rand(6, 3, 32, 32, generator=g)
    prompts = [f"prompt {i}" for i in range(6)]  # one sample per prompt, as in an evaluation set
    jpeg = rewards.get("jpeg")
    want = jpeg(images, prompts).scores.mean().item()
    # win_rate alone would raise (every sample alone in its group) and averages 0.5 anyway: its inner reward
    win = rewards.get("win_rate", inner={"name": "jpeg"})
    assert HackingMonitor(win, feature_resolution=32).observe(images, prompts, [None] * 6, 0.1)["proxy_reward"] \
        == pytest.approx(want, rel=1e-6)
    # a standardised composition averages 0: the monitor takes the unstandardised weighted sum
    comp = Compose([(jpeg, 2.0, "jpeg")], normalise="after")
    assert comp(images, prompts).scores.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert HackingMonitor(comp, feature_resolution=32).observe(images, prompts, [None] * 6, 0.1)["proxy_reward"] \
        == pytest.approx(2 * want, rel=1e-6)
    # diversity has no pointwise counterpart: no proxy, one warning, the rest still measured
    mon = HackingMonitor(rewards.get("diversity", resolution=32), feature_resolution=32)
    with pytest.warns(UserWarning, match="eval.monitor: no proxy_reward.*diversity"):
        first = mon.observe(images, prompts, [None] * 6, 0.1)
    assert "proxy_reward" not in first and "frechet" in first and mon.proxy_error is not None
    assert "proxy_reward" not in mon.observe(images, prompts, [None] * 6, 0.1)


def test_training_run_logs_the_monitor_and_reports_it(tmp_path):
    data = json.loads(json.dumps(TINY))
    data["train"]["iterations"] = 2
    data["eval"] = {"every": 1, "per_category": 2, "batch_size": 32,
                    "monitor": {"patience": 2, "diversity_prompts": 2, "diversity_seeds": 2, "feature_resolution": 32}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    train(load_config(path), tmp_path / "run")
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert [r["iteration"] for r in evals] == [0, 1, 2]
    for r in evals:
        assert {"proxy_reward", "gold", "frechet", "diversity", "hacking_warning"} <= set(r)
        assert r["gold"] == r["overall_strict_accuracy"] <= r["overall_accuracy"]  # the shapes checker: strict
    assert evals[0]["frechet"] == pytest.approx(0.0, abs=1e-6) and evals[-1]["frechet"] > 0
    assert "Reward-hacking monitor" in (tmp_path / "run" / "report.html").read_text()
