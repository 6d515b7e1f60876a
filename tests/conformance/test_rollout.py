"""The rollout invariants, for every backbone x stochastic kernel x step plan."""

from __future__ import annotations

import pytest
import torch

from vgrl import kernels, registry
from vgrl.rollout import StepPlan, kernel_for, recompute_log_prob, rollout

STEPS = 4
PROMPTS = ["a red circle", "two blue squares", "three yellow crosses", "a cyan square"]
PLANS = {  # cps variants: see _plan
    "all": StepPlan.all(STEPS),
    "window": StepPlan.window(STEPS, start=1, size=2),
    "subset": StepPlan.all(STEPS, record=[0, 3]),
}


def _pairs():
    """(backbone key, kernel name) for every compatible pair of a stochastic kernel and a backbone."""
    out = []
    for key, prediction in (("sd-eps", "epsilon"), ("sd-v", "v"), ("flow", "flow"), ("flow-pixel", "flow")):
        for name in kernels.available():
            cls = registry.resolve("kernels", name)
            if cls.stochastic and prediction in cls.predictions:
                out.append((key, name))
    return out


PAIRS = _pairs()


def test_every_stochastic_kernel_has_a_backbone():
    stochastic = {n for n in kernels.available() if registry.resolve("kernels", n).stochastic}
    assert stochastic == {name for _, name in PAIRS}


def _plan(plan_name: str, kernel_name: str) -> StepPlan:
    """cps has no noise on the step into s = 0 (and refuses it): its 'all' plans end with an ODE step."""
    plan = PLANS[plan_name]
    if kernel_name == "cps" and plan.sde[-1]:
        return StepPlan(plan.sde[:-1] + (False,), tuple(i for i in plan.record if i < STEPS - 1))
    return plan


@pytest.mark.parametrize("plan_name", list(PLANS))
@pytest.mark.parametrize("key,kernel_name", PAIRS)
def test_recompute_equals_recorded(tiny_backbones, key, kernel_name, plan_name):
    bb, plan = tiny_backbones[key], _plan(plan_name, kernel_name)
    kernel = kernel_for(bb, kernel_name)
    traj = rollout(bb, kernel, bb.encode(PROMPTS, guidance=True), STEPS, plan, torch.Generator().manual_seed(0),
                   guidance_scale=2.0)
    assert traj.log_prob.shape == (len(PROMPTS), len(plan.record))
    assert traj.step_idx.tolist() == list(plan.record)
    assert torch.isfinite(traj.log_prob).all()
    for k, i in enumerate(plan.record):
        with torch.no_grad():
            tr = recompute_log_prob(bb, kernel, traj, i)
        assert (tr.log_prob - traj.log_prob[:, k]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("key,kernel_name", PAIRS)
def test_sample_alone_equals_sample_in_batch_of_8(tiny_backbones, key, kernel_name):
    bb = tiny_backbones[key]
    kernel = kernel_for(bb, kernel_name)
    prompts = (PROMPTS * 2)[:8]
    seeds = torch.arange(100, 108)
    plan = _plan("all", kernel_name)
    batch = rollout(bb, kernel, bb.encode(prompts, guidance=False), STEPS, plan, seeds=seeds)
    for i in (0, 5):
        alone = rollout(bb, kernel, bb.encode([prompts[i]], guidance=False), STEPS, plan, seeds=seeds[i:i + 1])
        assert (alone.log_prob[0] - batch.log_prob[i]).abs().max().item() <= 1e-6
        assert (alone.x0[0] - batch.x0[i]).abs().max().item() <= 1e-4  # measured up to 1.5e-5 (docs)


@pytest.mark.parametrize("key,kernel_name", PAIRS[:1] + PAIRS[-1:])
def test_seeded_runs_are_identical(tiny_backbones, key, kernel_name):
    bb = tiny_backbones[key]
    kernel = kernel_for(bb, kernel_name)
    cond = bb.encode(PROMPTS, guidance=False)
    a = rollout(bb, kernel, cond, STEPS, StepPlan.all(STEPS), torch.Generator().manual_seed(7))
    b = rollout(bb, kernel, cond, STEPS, StepPlan.all(STEPS), torch.Generator().manual_seed(7))
    c = rollout(bb, kernel, cond, STEPS, StepPlan.all(STEPS), torch.Generator().manual_seed(8))
    assert torch.equal(a.x0, b.x0) and torch.equal(a.log_prob, b.log_prob) and torch.equal(a.seeds, b.seeds)
    assert not torch.equal(a.x0, c.x0)


def test_recompute_carries_gradients(tiny_backbones):
    bb = tiny_backbones["flow"]
    kernel = kernel_for(bb, "flow_sde")
    traj = rollout(bb, kernel, bb.encode(PROMPTS, guidance=False), STEPS, StepPlan.all(STEPS),
                   torch.Generator().manual_seed(1))
    module = bb.trainable()
    module.zero_grad()
    recompute_log_prob(bb, kernel, traj, 2).log_prob.sum().backward()
    grads = [p.grad.abs().sum() for p in module.parameters() if p.grad is not None]
    assert grads and sum(grads) > 0
    module.zero_grad()


def test_window_plan_uses_ode_outside_the_window(tiny_backbones):
    """Steps outside the window are deterministic: two seeds that share init noise differ only via the window."""
    bb = tiny_backbones["flow"]
    kernel = kernel_for(bb, "flow_sde")
    cond = bb.encode(PROMPTS[:1], guidance=False)
    plan = StepPlan.window(STEPS, start=2, size=1)
    traj = rollout(bb, kernel, cond, STEPS, plan, seeds=torch.tensor([3]))
    ode = rollout(bb, kernel_for(bb, "ode"), cond, STEPS, StepPlan.ode(STEPS), seeds=torch.tensor([3]))
    assert traj.sde_steps.tolist() == [False, False, True, False]
    # before the window both chains are identical
    assert not torch.equal(traj.x0, ode.x0)
    assert torch.equal(traj.x_t[:, 0], _state_before(bb, ode_kernel=kernel_for(bb, "ode"), cond=cond, upto=2))


def _state_before(bb, ode_kernel, cond, upto):
    x = bb.init_noise(torch.tensor([3]))
    grid = bb.timesteps(STEPS)
    with torch.no_grad():
        for i in range(upto):
            pred = bb.predict(x, grid[i].expand(1), cond, 1.0)
            x = ode_kernel.step(pred, x, grid[i].expand(1), grid[i + 1].expand(1), prediction="flow").x_next
    return x


def test_cps_refuses_the_noiseless_final_step(tiny_backbones):
    from vgrl.kernels.base import ZeroNoiseError

    bb = tiny_backbones["flow"]
    with pytest.raises(ZeroNoiseError):
        rollout(bb, kernel_for(bb, "cps"), bb.encode(PROMPTS, guidance=False), STEPS, StepPlan.all(STEPS))


def test_bad_plans_and_kernels_raise(tiny_backbones):
    bb = tiny_backbones["flow"]
    with pytest.raises(ValueError, match="not stochastic steps"):
        StepPlan.window(STEPS, start=0, size=2, record=[3])
    with pytest.raises(ValueError, match="does not fit"):
        StepPlan.window(STEPS, start=3, size=2)
    with pytest.raises(ValueError, match="deterministic"):
        rollout(bb, kernel_for(bb, "ode"), bb.encode(PROMPTS, guidance=False), STEPS, StepPlan.all(STEPS))
    with pytest.raises(ValueError, match="valid kernels for it"):
        kernel_for(bb, "ddim")
    traj = rollout(bb, kernel_for(bb, "flow_sde"), bb.encode(PROMPTS, guidance=False), STEPS,
                   StepPlan.window(STEPS, 0, 1), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="not recorded"):
        recompute_log_prob(bb, kernel_for(bb, "flow_sde"), traj, 2)


def test_bfloat16_model_gives_float32_log_probs_that_recompute_exactly():
    from vgrl.backbones.flow import FlowBackbone

    bb = FlowBackbone.tiny(dtype="bfloat16")
    kernel = kernel_for(bb, "flow_sde")
    traj = rollout(bb, kernel, bb.encode(PROMPTS, guidance=True), STEPS, StepPlan.all(STEPS),
                   torch.Generator().manual_seed(0), guidance_scale=2.0)
    assert traj.log_prob.dtype == torch.float32 and torch.isfinite(traj.log_prob).all()
    with torch.no_grad():
        tr = recompute_log_prob(bb, kernel, traj, 1)
    assert torch.equal(tr.log_prob, traj.log_prob[:, 1])
