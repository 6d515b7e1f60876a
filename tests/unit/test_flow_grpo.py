"""Flow-GRPO maths: hand-computed clipping, ratio 1 on-policy, zero advantages give zero gradient, KL."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from vgrl import algorithms, rewards
from vgrl.algorithms.base import check_compatible
from vgrl.algorithms.flow_grpo import clipped_policy_loss
from vgrl.rollout import StepPlan, kernel_for, rollout
from vgrl.types import RewardOutput

STEPS, G = 3, 2
PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]


def test_clipped_loss_by_hand():
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 0.5, 1.05]))
    adv = torch.tensor([1.0, 1.0, -2.0])
    loss, m = clipped_policy_loss(new, old, adv, clip_range=0.1)
    # sample 0: max(-1.5, -1.1) = -1.1; sample 1: max(-0.5, -0.9) = -0.5; sample 2: max(2.1, 2.1) = 2.1
    assert loss.item() == pytest.approx((-1.1 - 0.5 + 2.1) / 3, abs=1e-6)
    assert m["clipfrac"] == pytest.approx(2 / 3)


@pytest.fixture()
def setup(tiny_backbones):
    bb = tiny_backbones["flow"]
    kernel = kernel_for(bb, "flow_sde")
    cond = bb.encode(PROMPTS, guidance=False).repeat_interleave(G)
    traj = rollout(bb, kernel, cond, STEPS, StepPlan.all(STEPS), torch.Generator().manual_seed(0))
    group_ids = torch.arange(len(PROMPTS)).repeat_interleave(G)
    return bb, kernel, traj, group_ids


def test_ratio_is_one_on_policy_and_zero_advantage_gives_zero_gradient(setup):
    bb, kernel, traj, group_ids = setup
    algo = algorithms.get("flow_grpo")
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 0.0, 0.5, 0.2])), group_ids)
    assert batch.adv.abs().max() > 0.9  # two-sample groups: +-1 / (1 + eps)
    module = bb.trainable()
    module.zero_grad()
    loss, m = algo.loss(bb, kernel, batch, step_idx=1)
    assert m["ratio_max_dev"] <= 1e-6
    loss.backward()
    assert sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None) > 0
    module.zero_grad()
    flat = algo.prepare(traj, RewardOutput(scores=torch.ones(4)), group_ids)
    assert flat.adv.abs().max() == 0
    loss, _ = algo.loss(bb, kernel, flat, step_idx=1)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in module.parameters())
    module.zero_grad()


def test_kl_to_reference_is_zero_for_the_same_weights_and_positive_otherwise(setup):
    bb, kernel, traj, group_ids = setup
    algo = algorithms.get("flow_grpo", beta=1.0)
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 0.0, 0.5, 0.2])), group_ids)
    _, m = algo.loss(bb, kernel, batch, step_idx=0, ref=bb)
    assert m["kl"] == 0.0
    ref = copy.deepcopy(bb)
    with torch.no_grad():
        for p in ref.trainable().parameters():
            p.add_(0.01 * torch.randn_like(p))
    _, m = algo.loss(bb, kernel, batch, step_idx=0, ref=ref)
    assert m["kl"] > 0 and math.isfinite(m["kl"])
    with pytest.raises(ValueError, match="reference"):
        algo.loss(bb, kernel, batch, step_idx=0)


def test_incompatible_choices_fail_in_one_line(tiny_backbones):
    bb = tiny_backbones["flow"]
    algo = algorithms.get("flow_grpo", beta=0.1)
    jpeg = rewards.get("jpeg")
    with pytest.raises(ValueError, match="deterministic"):
        check_compatible(algo, kernel_for(bb, "ode"), jpeg, group_size=4, has_reference=True)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        check_compatible(algo, kernel_for(bb, "flow_sde"), jpeg, group_size=1, has_reference=True)
    with pytest.raises(ValueError, match="reference model"):
        check_compatible(algo, kernel_for(bb, "flow_sde"), jpeg, group_size=4, has_reference=False)
    check_compatible(algo, kernel_for(bb, "flow_sde"), jpeg, group_size=4, has_reference=True)
    with pytest.raises(Exception, match="clip_rnage"):
        algorithms.get("flow_grpo", clip_rnage=0.1)
