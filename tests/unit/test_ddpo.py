"""DDPO maths: hand-computed advantages and loss, ratio 1 on-policy, zero advantages give zero gradient,
exact resume of the per-prompt tracker, fail-fast checks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from vgrl import algorithms, rewards
from vgrl.algorithms.base import check_compatible
from vgrl.rollout import StepPlan, kernel_for, rollout
from vgrl.types import RewardOutput

STEPS = 3
PROMPTS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a green cross",
           "a photo of a red circle"]


def _rollout(bb, kernel_name, prompts=PROMPTS):
    kernel = kernel_for(bb, kernel_name)
    cond = bb.encode(prompts, guidance=False)
    traj = rollout(bb, kernel, cond, STEPS, StepPlan.all(STEPS), torch.Generator().manual_seed(0))
    return kernel, traj


@pytest.fixture(scope="module")
def sd_setup(tiny_backbones):
    bb = tiny_backbones["sd-eps"]
    kernel, traj = _rollout(bb, "ddim")
    return bb, kernel, traj, torch.arange(len(PROMPTS))


def _grad_sum(module) -> float:
    return float(sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None))


def test_batch_normalised_advantages_by_hand(sd_setup):
    _, _, traj, ids = sd_setup
    r = torch.tensor([1.0, 2.0, 3.0, 10.0])
    # mean 4, population std sqrt((9 + 4 + 1 + 36) / 4) = sqrt(12.5) ~ 3.54;
    # the last one, 6 / 3.54 ~ 1.70, clips at 1.5.
    expected = ((r - 4.0) / (math.sqrt(12.5) + 1e-6)).clamp(-1.5, 1.5)
    for tracking in (True, False):  # the tracker falls back to batch statistics below min_count
        algo = algorithms.get("ddpo", per_prompt_stat_tracking=tracking, adv_clip=1.5)
        batch = algo.prepare(traj, RewardOutput(scores=r), ids, prompts=PROMPTS)
        assert torch.allclose(batch.adv, expected, atol=1e-6, rtol=0)
        assert batch.adv[3].item() == 1.5


def test_per_prompt_statistics_by_hand(sd_setup):
    _, _, traj, ids = sd_setup
    algo = algorithms.get("ddpo", buffer_size=4, min_count=2, adv_clip=None)
    # prompt 0 ("red circle") appears twice per batch, so it reaches min_count=2 in the first batch.
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 5.0, 7.0, 3.0])), ids, prompts=PROMPTS)
    # red circle: its own rewards {1, 3}: mean 2, std 1; the others use the batch: mean 4, std sqrt(5).
    expected = torch.tensor([(1 - 2) / (1 + 1e-6), (5 - 4) / (math.sqrt(5) + 1e-6),
                             (7 - 4) / (math.sqrt(5) + 1e-6), (3 - 2) / (1 + 1e-6)])
    assert torch.allclose(batch.adv, expected, atol=1e-6, rtol=0)


def test_ddpo_loss_by_hand(sd_setup):
    bb, kernel, traj, ids = sd_setup
    algo = algorithms.get("ddpo", clip_range=0.1)
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 2.0, 3.0, 4.0])), ids, prompts=PROMPTS)
    # shift the recorded log-probs so that the on-policy ratios become 1.5, 0.5, 1.05, 1.0 at step 1.
    old = traj.log_prob.clone()
    old[:, 1] -= torch.log(torch.tensor([1.5, 0.5, 1.05, 1.0]))
    batch = replace(batch, traj=replace(traj, log_prob=old), adv=torch.tensor([1.0, 1.0, -2.0, 0.5]))
    loss, m = algo.loss(bb, kernel, batch, step_idx=1)
    # max(-A rho, -A clip(rho, 0.9, 1.1)): -1.1, -0.5, 2.1, -0.5
    assert loss.item() == pytest.approx((-1.1 - 0.5 + 2.1 - 0.5) / 4, abs=1e-5)
    assert m["clipfrac"] == pytest.approx(0.5)
    assert m["policy_loss"] == pytest.approx(loss.item())


@pytest.mark.parametrize("backbone,kernel_name", [("sd-eps", "ddim"), ("flow", "flow_sde")])
def test_ratio_is_one_on_policy_and_zero_advantage_gives_zero_gradient(tiny_backbones, backbone, kernel_name):
    bb = tiny_backbones[backbone]
    kernel, traj = _rollout(bb, kernel_name)
    ids = torch.arange(len(PROMPTS))  # group size 1
    algo = algorithms.get("ddpo")
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 0.0, 0.5, 0.2])), ids, prompts=PROMPTS)
    module = bb.trainable()
    module.zero_grad()
    for step in range(STEPS):
        loss, m = algo.loss(bb, kernel, batch, step_idx=step)
        assert m["ratio_max_dev"] <= 1e-6 and m["clipfrac"] == 0.0
        loss.backward()
    assert _grad_sum(module) > 0
    module.zero_grad()
    flat = algorithms.get("ddpo").prepare(traj, RewardOutput(scores=torch.ones(4)), ids, prompts=PROMPTS)
    assert flat.adv.abs().max() == 0
    loss, _ = algo.loss(bb, kernel, flat, step_idx=0)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in module.parameters())
    module.zero_grad()


def test_tracker_state_round_trips_exactly(sd_setup, tmp_path):
    _, _, traj, ids = sd_setup
    gen = torch.Generator().manual_seed(1)
    batches = [torch.rand(4, generator=gen) for _ in range(5)]
    opts = {"buffer_size": 4, "min_count": 2}
    straight = algorithms.get("ddpo", **opts)
    expected = [straight.prepare(traj, RewardOutput(scores=r), ids, prompts=PROMPTS).adv for r in batches]

    first = algorithms.get("ddpo", **opts)
    for r in batches[:2]:
        first.prepare(traj, RewardOutput(scores=r), ids, prompts=PROMPTS)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = algorithms.get("ddpo", **opts)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for r, adv in zip(batches[2:], expected[2:]):
        assert torch.equal(resumed.prepare(traj, RewardOutput(scores=r), ids, prompts=PROMPTS).adv, adv)
    assert resumed.state_dict() == straight.state_dict()
    with pytest.raises(ValueError, match="buffer_size"):
        algorithms.get("ddpo", buffer_size=8, min_count=2).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="keeps no state"):
        algorithms.get("ddpo", per_prompt_stat_tracking=False).load_state_dict(first.state_dict())
    assert algorithms.get("ddpo", per_prompt_stat_tracking=False).state_dict() == {}


def test_fail_fast(sd_setup, tiny_backbones):
    _, _, traj, ids = sd_setup
    algo = algorithms.get("ddpo")
    with pytest.raises(ValueError, match="prompts="):
        algo.prepare(traj, RewardOutput(scores=torch.ones(4)), ids)
    with pytest.raises(ValueError, match="min_count"):
        algorithms.get("ddpo", buffer_size=4, min_count=8)
    jpeg = rewards.get("jpeg")
    cls = type(algo)  # the trainer builds every algorithm as cls(options, reward=reward)
    assert cls(cls.Options(min_count=4), reward=jpeg).tracker.min_count == 4
    for name, stochastic in (("sd-eps", "ddim"), ("flow", "flow_sde")):
        bb = tiny_backbones[name]
        with pytest.raises(ValueError, match="deterministic"):
            check_compatible(algo, kernel_for(bb, "ode"), jpeg, group_size=1, has_reference=False)
        check_compatible(algo, kernel_for(bb, stochastic), jpeg, group_size=1, has_reference=False)
