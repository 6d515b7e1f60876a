"""DPOK maths: hand-computed loss and KL, ratio 1 on-policy, zero advantages give zero policy gradient,
the KL is 0 for identical weights and positive with a gradient otherwise, fail-fast checks."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from vgrl import algorithms, rewards
from vgrl.algorithms._policy import gaussian_step_kl
from vgrl.algorithms.base import check_compatible
from vgrl.rollout import StepPlan, kernel_for, rollout
from vgrl.types import RewardOutput

STEPS, G = 3, 2
PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]
SCORES = torch.tensor([1.0, 0.0, 0.5, 0.2])


@pytest.fixture(scope="module")
def setup(tiny_backbones):
    bb = tiny_backbones["flow"]
    kernel = kernel_for(bb, "flow_sde")
    cond = bb.encode(PROMPTS, guidance=False).repeat_interleave(G)
    traj = rollout(bb, kernel, cond, STEPS, StepPlan.all(STEPS), torch.Generator().manual_seed(0))
    return bb, kernel, traj, torch.arange(len(PROMPTS)).repeat_interleave(G)


def _perturbed(bb, scale=0.01):
    other = copy.deepcopy(bb)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in other.trainable().parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return other


def test_gaussian_step_kl_by_hand():
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    ref = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    std = torch.tensor([[0.5], [1.0]])
    # sample 0: mean(1, 4) / (2 * 0.25) = 5; sample 1: mean(0, 9) / (2 * 1) = 2.25
    assert torch.allclose(gaussian_step_kl(mean, ref, std), torch.tensor([5.0, 2.25]))
    # equals torch's KL of the two diagonal Gaussians, averaged over elements
    p = torch.distributions.Normal(mean, std.expand_as(mean))
    q = torch.distributions.Normal(ref, std.expand_as(ref))
    assert torch.allclose(gaussian_step_kl(mean, ref, std), torch.distributions.kl_divergence(p, q).mean(1))


def test_advantages_by_hand(setup):
    _, _, traj, ids = setup
    # batch: mean 0.425, population std sqrt(0.141875)
    batch = algorithms.get("dpok").prepare(traj, RewardOutput(scores=SCORES), ids)
    assert torch.allclose(batch.adv, (SCORES - 0.425) / (math.sqrt(0.141875) + 1e-4), atol=1e-6, rtol=0)
    # group: {1, 0} (mean 0.5, std 0.5) and {0.5, 0.2} (mean 0.35, std 0.15)
    group = algorithms.get("dpok", normalize="group").prepare(traj, RewardOutput(scores=SCORES), ids)
    half_gap = torch.tensor([0.5, 0.5, 0.15, 0.15])
    assert torch.allclose(group.adv, torch.tensor([1.0, -1.0, 1.0, -1.0]) * half_gap / (half_gap + 1e-4),
                          atol=1e-6, rtol=0)
    raw = algorithms.get("dpok", normalize="none").prepare(traj, RewardOutput(scores=SCORES), ids)
    assert torch.equal(raw.adv, SCORES)
    nan = RewardOutput(scores=torch.tensor([1.0, math.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="non-finite"):
        algorithms.get("dpok", normalize="none").prepare(traj, nan, ids)


@pytest.mark.parametrize("clip_range,expected", [(None, (-1.5 - 0.5 + 2.1 - 0.5) / 4),
                                                 (0.1, (-1.1 - 0.5 + 2.1 - 0.5) / 4)], ids=["unclipped", "clipped"])
def test_loss_by_hand(setup, clip_range, expected):
    bb, kernel, traj, ids = setup
    algo = algorithms.get("dpok", normalize="none", clip_range=clip_range, beta=0.5)
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 1.0, -2.0, 0.5])), ids)
    old = traj.log_prob.clone()  # on-policy ratios become 1.5, 0.5, 1.05, 1.0 at step 2
    old[:, 2] -= torch.log(torch.tensor([1.5, 0.5, 1.05, 1.0]))
    batch = replace(batch, traj=replace(traj, log_prob=old))
    loss, m = algo.loss(bb, kernel, batch, step_idx=2, ref=bb)
    assert m["kl"] == 0.0
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert m["policy_loss"] == pytest.approx(expected, abs=1e-5)
    assert ("clipfrac" in m) == (clip_range is not None)
    ref = _perturbed(bb)
    loss, m = algo.loss(bb, kernel, batch, step_idx=2, ref=ref)
    assert m["kl"] > 0 and loss.item() == pytest.approx(m["policy_loss"] + 0.5 * m["kl"], rel=1e-5)


def test_ratio_is_one_on_policy_and_zero_advantage_gives_zero_policy_gradient(setup):
    bb, kernel, traj, ids = setup
    algo = algorithms.get("dpok", beta=0.0)
    module = bb.trainable()
    module.zero_grad()
    batch = algo.prepare(traj, RewardOutput(scores=SCORES), ids)
    for step in range(STEPS):
        loss, m = algo.loss(bb, kernel, batch, step_idx=step)
        assert m["ratio_max_dev"] <= 1e-6
        loss.backward()
    assert sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None) > 0
    module.zero_grad()
    flat = algo.prepare(traj, RewardOutput(scores=torch.full((4,), 0.3)), ids)
    assert flat.adv.abs().max() == 0
    loss, _ = algo.loss(bb, kernel, flat, step_idx=1)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in module.parameters())
    module.zero_grad()


def test_kl_is_zero_for_identical_weights_and_positive_with_gradient_otherwise(setup):
    bb, kernel, traj, ids = setup
    algo = algorithms.get("dpok")  # beta 0.01
    flat = algo.prepare(traj, RewardOutput(scores=torch.zeros(4)), ids)  # zero advantages: the KL alone
    module = bb.trainable()
    module.zero_grad()
    loss, m = algo.loss(bb, kernel, flat, step_idx=0, ref=copy.deepcopy(bb))
    assert m["kl"] == 0.0
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in module.parameters())
    module.zero_grad()
    loss, m = algo.loss(bb, kernel, flat, step_idx=0, ref=_perturbed(bb))
    assert m["kl"] > 0 and math.isfinite(m["kl"]) and loss.item() == pytest.approx(0.01 * m["kl"], rel=1e-5)
    loss.backward()
    assert sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None) > 0
    module.zero_grad()
    with pytest.raises(ValueError, match="reference model"):
        algo.loss(bb, kernel, flat, step_idx=0)


def test_needs_and_incompatible_choices(setup):
    bb, _, _, _ = setup
    jpeg = rewards.get("jpeg")
    algo = algorithms.get("dpok")
    cls = type(algo)  # the trainer builds every algorithm as cls(options, reward=reward)
    assert cls(cls.Options(beta=0.1), reward=jpeg).options.beta == 0.1
    assert algo.needs.reference and algo.needs.step_log_probs and not algo.needs.groups
    assert not algorithms.get("dpok", beta=0.0).needs.reference
    assert algorithms.get("dpok", normalize="group").needs.groups
    with pytest.raises(ValueError, match="deterministic"):
        check_compatible(algo, kernel_for(bb, "ode"), jpeg, group_size=1, has_reference=True)
    with pytest.raises(ValueError, match="reference model"):
        check_compatible(algo, kernel_for(bb, "flow_sde"), jpeg, group_size=1, has_reference=False)
    check_compatible(algo, kernel_for(bb, "flow_sde"), jpeg, group_size=1, has_reference=True)
    check_compatible(algorithms.get("dpok", beta=0.0), kernel_for(bb, "flow_sde"), jpeg, group_size=1,
                     has_reference=False)
    with pytest.raises(Exception, match="normalize"):
        algorithms.get("dpok", normalize="prompt")
