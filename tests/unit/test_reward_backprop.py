"""Reward backprop (AlignProp / DRaFT-K / DRaFT-LV / ReFL): regeneration equals the rollout, gradients
flow through the last K steps only, ReFL's stop steps, and the build-time compatibility check."""

from __future__ import annotations

import pydantic
import pytest
import torch

from vgrl import rewards
from vgrl.algorithms.base import check_compatible
from vgrl.algorithms.reward_backprop import RewardBackprop, RewardBackpropOptions, refl_stop_steps, replay
from vgrl.rewards.base import Reward
from vgrl.rollout import StepPlan, kernel_for, rollout
from vgrl.types import RewardOutput

STEPS = 3
PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]


class Brightness(Reward):
    """Test reward: mean pixel value, differentiable."""

    name = "brightness"
    differentiable = True
    granularity = "pointwise"

    def compute(self, images, prompts, metadata):
        return RewardOutput(images.float().mean((1, 2, 3)))


def _traj(bb, guidance: float = 1.0, kernel: str = "ode"):
    k = kernel_for(bb, kernel)
    cond = bb.encode(PROMPTS, guidance=guidance > 1)
    traj = rollout(bb, k.ode(), cond, STEPS, StepPlan.ode(STEPS), seeds=torch.tensor([3, 11]), guidance_scale=guidance)
    return k, traj


def _algo(**options) -> RewardBackprop:
    return RewardBackprop(RewardBackpropOptions(**options), reward=Brightness())


def _loss_grad(bb, algo, kernel, traj) -> tuple[torch.Tensor, float]:
    """Flat gradient of the loss w.r.t. the trainable module, and the loss value."""
    batch = algo.prepare(traj, RewardOutput(scores=torch.zeros(len(traj))), torch.arange(len(traj)), PROMPTS)
    assert algo.units(batch) == [0]
    module = bb.trainable()
    module.zero_grad()
    loss, metrics = algo.loss(bb, kernel, batch, 0)
    assert set(metrics) == {"reward_grad_mean", "reward_grad_std"}
    loss.backward()
    grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in module.parameters()])
    module.zero_grad()
    return grad, loss.item()


@pytest.mark.parametrize("name", ["flow", "sd-eps"])
def test_regeneration_equals_the_ode_rollout(tiny_backbones, name):
    bb = tiny_backbones[name]
    kernel, traj = _traj(bb, guidance=2.0, kernel="flow_sde" if name == "flow" else "ddim")
    for k in (0, 1, STEPS):
        x0 = replay(bb, kernel.ode(), traj, k=k)
        assert (x0 - traj.x0).abs().max().item() <= 1e-6
        assert x0.requires_grad == (k > 0)


def test_gradients_flow_through_the_last_k_steps_only(tiny_backbones):
    bb = tiny_backbones["flow"]
    kernel, traj = _traj(bb)
    grad_mode: list[bool] = []
    handle = bb.trainable().register_forward_hook(lambda *_: grad_mode.append(torch.is_grad_enabled()))
    try:
        for k in (1, 2):
            grad_mode.clear()
            _loss_grad(bb, _algo(k=k, checkpointing=False), kernel, traj)
            assert grad_mode == [False] * (STEPS - k) + [True] * k  # the no-grad prefix builds no graph
        grad_mode.clear()
        g1, _ = _loss_grad(bb, _algo(k=1), kernel, traj)
        assert grad_mode == [False] * (STEPS - 1) + [True, True]  # checkpointing recomputes the step in backward
    finally:
        handle.remove()
    g_full, loss_full = _loss_grad(bb, _algo(k=STEPS), kernel, traj)
    g_plain, loss_plain = _loss_grad(bb, _algo(k=STEPS, checkpointing=False), kernel, traj)
    assert g1.abs().sum() > 0 and not torch.allclose(g1, g_full, rtol=1e-3, atol=1e-8)
    assert loss_full == loss_plain == pytest.approx(-Brightness()(bb.decode(traj.x0), PROMPTS).scores.mean().item())
    torch.testing.assert_close(g_full, g_plain, rtol=1e-5, atol=1e-8)


def test_non_differentiable_reward_is_refused_in_one_line(tiny_backbones):
    ode = kernel_for(tiny_backbones["flow"], "ode")
    with pytest.raises(ValueError, match="not differentiable") as err:
        check_compatible(_algo(), ode, rewards.get("jpeg"), group_size=1, has_reference=False)
    assert "\n" not in str(err.value) and "reward_backprop" in str(err.value)
    check_compatible(_algo(), ode, Brightness(), group_size=1, has_reference=False)  # ODE kernel, no groups: fine
    with pytest.raises(ValueError, match="reward=reward"):
        RewardBackprop(RewardBackpropOptions())


def test_options_are_validated():
    with pytest.raises(pydantic.ValidationError, match="lv_samples"):
        RewardBackpropOptions(lv_samples=2, k=2)
    with pytest.raises(pydantic.ValidationError, match="refl_range"):
        RewardBackpropOptions(refl_range=(3, 1))
    with pytest.raises(pydantic.ValidationError, match="extra"):
        RewardBackpropOptions(kk=1)


def test_k_larger_than_the_schedule_is_refused(tiny_backbones):
    bb = tiny_backbones["flow"]
    kernel, traj = _traj(bb)
    with pytest.raises(ValueError, match="algorithm.k=4"):
        _loss_grad(bb, _algo(k=4), kernel, traj)


def test_refl_stops_inside_the_range_deterministically():
    seeds = torch.arange(300, dtype=torch.int64) * 7919
    stop = refl_stop_steps(seeds, 10, (2, 4))
    assert set(stop.tolist()) == {6, 7, 8}  # 2..4 steps before the end of 10
    assert torch.equal(stop, refl_stop_steps(seeds, 10, (2, 4)))
    assert torch.equal(refl_stop_steps(seeds[7:9], 10, (2, 4)), stop[7:9])  # per sample, whatever the batch
    with pytest.raises(ValueError, match="refl_range"):
        refl_stop_steps(seeds, 3, (2, 4))


@pytest.mark.parametrize("name", ["flow", "sd-eps"])
def test_refl_and_draft_lv_losses_have_gradients(tiny_backbones, name):
    bb = tiny_backbones[name]
    kernel, traj = _traj(bb)
    for options in ({"mode": "refl", "refl_range": (1, STEPS)}, {"lv_samples": 2}):
        g, loss = _loss_grad(bb, _algo(**options), kernel, traj)
        g2, loss2 = _loss_grad(bb, _algo(**options), kernel, traj)
        assert g.abs().sum() > 0 and torch.isfinite(g).all()
        assert loss == loss2 and torch.equal(g, g2)  # a function of the seeds and the weights


def test_refl_at_the_last_flow_step_rewards_the_sample(tiny_backbones):
    bb = tiny_backbones["flow"]  # the last Euler step lands on t = 0, so x0 = x_t - t v is the final sample
    kernel, traj = _traj(bb)
    _, loss = _loss_grad(bb, _algo(mode="refl", refl_range=(1, 1)), kernel, traj)
    assert loss == pytest.approx(-Brightness()(bb.decode(traj.x0), PROMPTS).scores.mean().item(), abs=1e-6)


def test_the_shapes_critic_drives_the_loss(tiny_backbones):
    from vgrl.worlds.shapes import ShapesWorld

    bb = tiny_backbones["flow"]
    kernel, traj = _traj(bb)
    metas = [p.meta for p in ShapesWorld(32).prompts("train", "colors")[:2]]
    algo = RewardBackprop(RewardBackpropOptions(), reward=rewards.get("shapes_critic"))
    batch = algo.prepare(traj, RewardOutput(scores=torch.zeros(2)), torch.arange(2), PROMPTS, metas)
    loss, metrics = algo.loss(bb, kernel, batch, 0)
    loss.backward()
    assert 0 <= metrics["reward_grad_mean"] <= 1
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.trainable().parameters())
    bb.trainable().zero_grad()
