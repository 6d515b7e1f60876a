"""Conformance of every transition kernel found by discovery (``vgrl.kernels.available()``).

Each kernel needs a row in ``SETUP`` (how to build it and which inputs it steps); a kernel that
discovery finds but the table lacks fails ``test_every_kernel_has_a_setup`` and its own rows.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from pydantic import ValidationError

from vgrl import kernels, registry
from vgrl.kernels.base import ZeroNoiseError
from vgrl.types import DeterministicKernelError

B, SHAPE = 3, (2, 4, 4)
STEPS = 5  # DDIM: timesteps 801, 601, 401, 201, 1 (steps_offset=1), ratio 200
FLOW_T, FLOW_S = [1.0, 0.6, 0.3], [0.8, 0.35, 0.05]
DDIM_T, DDIM_S = [801, 401, 1], [601, 201, -199]

# name -> (kind of times, predictions it takes, name of its noise option or None if deterministic)
SETUP = {
    "ddim": ("diffusion", ("epsilon", "v"), "eta"),
    "flow_sde": ("flow", ("flow",), "noise_level"),
    "dance_sde": ("flow", ("flow",), "eta"),
    "cps": ("flow", ("flow",), "noise_level"),
    "ode": ("any", ("epsilon", "v", "flow"), None),
}
NAMES = kernels.available()


def ddim_scheduler(prediction="epsilon", clip=False, alpha_to_one=False):
    sch = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=clip,
                        set_alpha_to_one=alpha_to_one, steps_offset=1,
                        prediction_type={"epsilon": "epsilon", "v": "v_prediction"}[prediction])
    sch.set_timesteps(STEPS)
    return sch


def setup(name):
    if name not in SETUP:
        pytest.fail(f"kernel {name!r} is discovered but has no row in SETUP of test_kernels.py")
    return SETUP[name]


def make(name, prediction="flow", **options):
    """Kernel ``name`` (with a DDIM scheduler where it takes one)."""
    if "scheduler" in registry.resolve("kernels", name).runtime_args and prediction != "flow":
        options.setdefault("scheduler", ddim_scheduler(prediction))
    return kernels.get(name, **options)


def inputs(prediction, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x, pred, noise = (torch.randn((B, *SHAPE), generator=g) for _ in range(3))
    t, s = (FLOW_T, FLOW_S) if prediction == "flow" else (DDIM_T, DDIM_S)
    return pred.to(dtype), x.to(dtype), torch.tensor(t), torch.tensor(s), noise


def cases(stochastic_only=True):
    out = []
    for name in NAMES:
        kind, preds, noise_opt = SETUP.get(name, ("?", ("flow",), "?"))
        if not stochastic_only or noise_opt is not None:
            out += [(name, p) for p in preds]
    return out


def reduce(elem, reduction):
    dims = tuple(range(1, elem.ndim))
    return elem.mean(dims) if reduction == "mean" else elem.sum(dims)


def test_every_kernel_has_a_setup():
    assert set(NAMES) == set(SETUP), f"discovered {NAMES}, SETUP has {sorted(SETUP)}"


@pytest.mark.parametrize("name", NAMES)
def test_stochastic_flag_is_truthful(name):
    _, preds, noise_opt = setup(name)
    kernel = make(name, preds[0])
    pred, x, t, s, noise = inputs(preds[0])
    a = kernel.step(pred, x, t, s, prediction=preds[0], noise=noise)
    b = kernel.step(pred, x, t, s, prediction=preds[0], noise=-noise)
    ode = kernel.ode()
    assert kernel.stochastic is (noise_opt is not None) is a.stochastic
    assert ode.stochastic is False and ode.ode() is ode
    if kernel.stochastic:
        assert not torch.equal(a.x_next, b.x_next) and a.log_prob.shape == (B,)
        assert (a.std > 0).all()
    else:
        assert torch.equal(a.x_next, b.x_next)
        with pytest.raises(DeterministicKernelError):
            a.log_prob


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name,prediction", cases())
def test_log_prob_is_the_gaussian_density(name, prediction, reduction):
    kernel = make(name, prediction, reduction=reduction)
    pred, x, t, s, noise = inputs(prediction)
    tr = kernel.step(pred, x, t, s, prediction=prediction, noise=noise)
    ref = reduce(torch.distributions.Normal(tr.mean, tr.std).log_prob(tr.x_next), reduction)
    assert tr.log_prob.shape == (B,) and tr.log_prob.dtype == torch.float32
    assert (tr.log_prob - ref).abs().max().item() <= 1e-6
    assert (tr.x_next - (tr.mean + tr.std * noise)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name,prediction", cases())
def test_scoring_the_drawn_sample_reproduces_it(name, prediction):
    kernel = make(name, prediction)
    pred, x, t, s, _ = inputs(prediction)
    drawn = kernel.step(pred, x, t, s, prediction=prediction, generator=torch.Generator().manual_seed(3))
    scored = kernel.step(pred, x, t, s, prediction=prediction, x_next=drawn.x_next)
    assert (scored.log_prob - drawn.log_prob).abs().max().item() <= 1e-6
    assert torch.equal(scored.mean, drawn.mean) and torch.equal(scored.x_next, drawn.x_next)


@pytest.mark.parametrize("name,prediction", cases())
def test_scored_log_prob_carries_gradients_to_the_prediction(name, prediction):
    kernel = make(name, prediction)
    pred, x, t, s, noise = inputs(prediction)
    x_next = kernel.step(pred, x, t, s, prediction=prediction, noise=noise).x_next
    pred.requires_grad_(True)
    kernel.step(pred, x, t, s, prediction=prediction, x_next=x_next).log_prob.sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("name,prediction", cases())
def test_zero_noise_limit_is_the_ode(name, prediction):
    _, _, noise_opt = setup(name)
    kernel = make(name, prediction, **{noise_opt: 1e-6})
    pred, x, t, s, noise = inputs(prediction)
    tr = kernel.step(pred, x, t, s, prediction=prediction, noise=noise)
    ode = kernel.ode().step(pred, x, t, s, prediction=prediction)
    assert (tr.mean - ode.x_next).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name,prediction", cases(stochastic_only=False))
def test_bfloat16_inputs_give_float32_maths(name, prediction):
    kernel = make(name, prediction)
    pred, x, t, s, noise = inputs(prediction, dtype=torch.bfloat16)
    tr = kernel.step(pred, x, t, s, prediction=prediction, noise=noise)
    assert tr.x_next.dtype == torch.bfloat16 and tr.mean.dtype == torch.float32
    if kernel.stochastic:
        assert tr.log_prob.dtype == torch.float32 and tr.log_prob.shape == (B,)
        assert torch.isfinite(tr.log_prob).all()


@pytest.mark.parametrize("name,prediction", cases(stochastic_only=False))
def test_per_sample_times_and_scalar_times(name, prediction):
    kernel = make(name, prediction)
    pred, x, t, s, noise = inputs(prediction)
    whole = kernel.step(pred, x, t, s, prediction=prediction, noise=noise)
    for i in range(B):
        row = kernel.step(pred[i:i + 1], x[i:i + 1], t[i], s[i], prediction=prediction, noise=noise[i:i + 1])
        assert (row.x_next[0] - whole.x_next[i]).abs().max().item() <= 1e-6
    with pytest.raises(ValueError, match=r"must have shape \(3,\)"):
        kernel.step(pred, x, t[:2], s[:2], prediction=prediction)
    with pytest.raises(ValueError, match=r"must have shape \(3,\)"):
        kernel.step(pred, x, t[None], s[None], prediction=prediction)
    with pytest.raises(ValueError, match=name):
        kernel.step(pred, x, s, t, prediction=prediction)  # s > t


@pytest.mark.parametrize("alpha_to_one", [False, True])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddim_equals_diffusers(prediction, clip, alpha_to_one):
    eta = 0.8
    sch = ddim_scheduler(prediction, clip, alpha_to_one)
    kernel = kernels.get("ddim", scheduler=sch, eta=eta)
    ode = kernel.ode()
    pred, x, _, _, noise = inputs(prediction)
    x = 3 * x  # large x0_hat: makes clip_sample bite
    ratio = sch.config.num_train_timesteps // sch.num_inference_steps
    clipped = False
    for step_t in sch.timesteps.tolist():
        t, s = torch.full((B,), step_t), torch.full((B,), step_t - ratio)
        ref_ode = sch.step(pred, step_t, x, eta=0.0).prev_sample
        assert (ode.step(pred, x, t, s, prediction=prediction).x_next - ref_ode).abs().max().item() <= 1e-5
        if alpha_to_one and step_t - ratio < 0:  # std = 0 into the final step: no density
            with pytest.raises(ZeroNoiseError, match="set_alpha_to_one"):
                kernel.step(pred, x, t, s, prediction=prediction, noise=noise)
            continue
        out = sch.step(pred, step_t, x, eta=eta, variance_noise=noise)
        clipped |= bool((out.pred_original_sample.abs() == 1).any())
        tr = kernel.step(pred, x, t, s, prediction=prediction, noise=noise)
        assert (tr.x_next - out.prev_sample).abs().max().item() <= 1e-5
    assert clipped == clip


def test_flow_ode_equals_flow_match_euler():
    sch = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sch.set_timesteps(6)
    kernel = kernels.get("ode")
    _, x, _, _, _ = inputs("flow")
    for i, timestep in enumerate(sch.timesteps):
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        ref = sch.step(v, timestep, x).prev_sample
        ours = kernel.step(v, x, sch.sigmas[i].expand(B), sch.sigmas[i + 1].expand(B), prediction="flow")
        assert (ours.x_next - ref).abs().max().item() <= 1e-6
        x = ref


def test_ode_has_no_density():
    kernel = kernels.get("ode")
    pred, x, t, s, _ = inputs("flow")
    tr = kernel.step(pred, x, t, s, prediction="flow")
    with pytest.raises(DeterministicKernelError):
        tr.log_prob
    with pytest.raises(DeterministicKernelError):
        kernel.step(pred, x, t, s, prediction="flow", x_next=tr.x_next)
    assert kernel.ode() is kernel
    with pytest.raises(ValueError, match="scheduler"):
        kernel.step(pred, x, torch.tensor(DDIM_T), torch.tensor(DDIM_S), prediction="epsilon")
    flow_sch = kernels.get("ode", scheduler=FlowMatchEulerDiscreteScheduler())  # as a flow backbone passes it
    assert torch.equal(flow_sch.step(pred, x, t, s, prediction="flow").x_next, tr.x_next)
    with pytest.raises(TypeError, match="DDIMScheduler"):
        flow_sch.step(pred, x, torch.tensor(DDIM_T), torch.tensor(DDIM_S), prediction="epsilon")


@pytest.mark.parametrize("name", NAMES)
def test_wrong_prediction_is_refused(name):
    _, preds, _ = setup(name)
    kernel = make(name, preds[0])
    pred, x, t, s, _ = inputs(preds[0])
    for bad in {"epsilon", "v", "flow", "sample"} - set(preds):
        with pytest.raises(ValueError, match=rf"{name}.*{preds[0]}"):
            kernel.step(pred, x, t, s, prediction=bad)


def test_option_and_runtime_errors():
    with pytest.raises(ValidationError, match="nosie_level"):
        kernels.get("flow_sde", nosie_level=1)
    with pytest.raises(ValueError, match="scheduler="):
        kernels.get("ddim")
    with pytest.raises(NotImplementedError, match="thresholding"):
        kernels.get("ddim", scheduler=DDIMScheduler(thresholding=True))
    with pytest.raises(ValidationError):
        kernels.get("cps", noise_level=1.0)


def test_cps_refuses_the_step_to_zero():
    kernel = kernels.get("cps")
    pred, x, t, _, _ = inputs("flow")
    with pytest.raises(ZeroNoiseError, match="s = 0"):
        kernel.step(pred, x, t, torch.tensor([0.5, 0.0, 0.1]), prediction="flow")


def test_flow_kernels_match_their_papers_sde_forms():
    pred, x, t, s, noise = inputs("flow")
    tb, sb = t.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)
    dt, eps_hat = sb - tb, x + (1 - tb) * pred
    # Flow-GRPO: sigma_t = a sqrt(t / (1 - t)), with s in the denominator at t = 1
    a = 0.7
    sig = a * torch.sqrt(tb / (1 - torch.where(tb == 1, sb, tb)))
    tr = kernels.get("flow_sde", noise_level=a).step(pred, x, t, s, prediction="flow", noise=noise)
    assert torch.allclose(tr.mean, x + (pred + sig**2 / (2 * tb) * eps_hat) * dt, atol=1e-5)
    assert torch.allclose(tr.std, sig * (-dt).sqrt()) and abs(tr.std[0].item() - a) < 1e-6  # t=1, s=0.8
    # DanceGRPO: constant sigma = eta, score = -eps_hat / t
    tr = kernels.get("dance_sde", eta=0.3).step(pred, x, t, s, prediction="flow", noise=noise)
    assert torch.allclose(tr.mean, x + (pred + 0.09 / (2 * tb) * eps_hat) * dt, atol=1e-5)
    # CPS: x_next has the coefficients of x_s: (1 - s) on x0, total noise variance s^2
    x0, eps = torch.randn_like(x), torch.randn_like(x)
    xt = (1 - tb) * x0 + tb * eps
    tr = kernels.get("cps", noise_level=0.8).step(eps - x0, xt, t, s, prediction="flow", noise=noise)
    assert torch.allclose(tr.mean, (1 - sb) * x0 + (sb**2 - tr.std**2).sqrt() * eps, atol=1e-5)
    assert torch.allclose(tr.std, sb * math.sin(0.8 * math.pi / 2))


def test_defaults_follow_the_papers_code():
    assert kernels.get("flow_sde").options.noise_level == 0.7  # flow_grpo sde_step_with_logprob default
    assert kernels.get("dance_sde").options.eta == 0.3  # DanceGRPO finetune_flux_grpo.sh
    assert kernels.get("cps").options.noise_level == 0.8  # flow_grpo CPS configs
    assert kernels.get("ddim", scheduler=ddim_scheduler()).options.eta == 1.0  # DDPO
