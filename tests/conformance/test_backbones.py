"""Every backbone x each of its tiny variants: its deterministic rollout equals the matching diffusers pipeline,
and the contract holds (time grid, noise, forward process, prediction, decoding)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.backbone_variants import backbone_variants
from vgrl import backbones, registry
from vgrl.backbones.base import META_FILE, PipelineBackbone
from vgrl.rollout import StepPlan, kernel_for, rollout

PROMPTS = ["a red circle", "two blue squares", "a green triangle above a cyan cross"]
# test key in the session fixture -> registry name, over every backbone's tiny_variants()
VARIANTS = {key: name for key, (name, _) in backbone_variants().items()}
FIRST = list({name: key for key, name in reversed(VARIANTS.items())}.values())  # each backbone's first variant


def test_every_registered_backbone_has_variants():
    assert set(registry.available("backbones")) == set(VARIANTS.values())


def test_pipeline_families_come_from_the_classes():
    families = backbones.pipeline_families()
    assert families == {"StableDiffusionPipeline": "sd", "StableDiffusion3Pipeline": "flow"}
    for cls_name, name in families.items():
        assert registry.resolve("backbones", name).pipeline_class == cls_name


@pytest.mark.parametrize("key", list(VARIANTS))
def test_contract(tiny_backbones, key):
    bb = tiny_backbones[key]
    cls = registry.resolve("backbones", VARIANTS[key])
    assert type(bb) is cls and bb.prediction in cls.predictions
    cond = bb.encode(PROMPTS, guidance=True)
    assert cond.embeds.shape[0] == len(PROMPTS) and cond.uncond_embeds.shape == cond.embeds.shape
    grid = bb.timesteps(6)
    assert grid.shape == (7,)
    x = bb.init_noise(torch.tensor([1, 2, 3]))
    assert x.shape == (3, *bb.sample_shape) and x.dtype == torch.float32
    assert torch.equal(x[1], bb.init_noise(torch.tensor([2]))[0]), "init noise must depend on the seed alone"
    pred = bb.predict(x, grid[0].expand(3), cond, 2.0)
    assert pred.shape == x.shape
    pixels = bb.decode(x)
    assert pixels.shape[:2] == (3, 3) and pixels.min() >= 0 and pixels.max() <= 1
    with pytest.raises(ValueError, match="guidance"):
        bb.predict(x, grid[0].expand(3), bb.encode(PROMPTS, guidance=False), 2.0)


@pytest.mark.parametrize("key", list(VARIANTS))
def test_forward_process(tiny_backbones, key):
    """x_t interpolates the clean sample and the noise; the target's x0 estimate recovers x0 exactly."""
    bb = tiny_backbones[key]
    x0, eps = bb.init_noise(torch.tensor([1, 2])), bb.init_noise(torch.tensor([3, 4]))
    t = bb.train_time(torch.tensor([0.25, 0.75]))
    assert t.shape == (2,) and t.dtype == (torch.float32 if bb.time_kind == "flow" else torch.int64)
    x_t = bb.add_noise(x0, t, eps)
    assert x_t.shape == x0.shape and not torch.equal(x_t, x0)
    a, b = bb.x0_coefficients(t, x0)
    assert a.shape == b.shape == (2, *[1] * len(bb.sample_shape))
    torch.testing.assert_close(a * x_t + b * bb.target(x0, eps, t), x0, atol=1e-4, rtol=1e-4)
    early, late = bb.add_noise(x0, bb.train_time(torch.tensor([0.0, 0.0])), eps), bb.add_noise(
        x0, bb.train_time(torch.tensor([0.999, 0.999])), eps)
    assert (early - x0).abs().max() < (late - x0).abs().max(), "t must move from data (small) to noise (large)"


@pytest.mark.parametrize("key", list(VARIANTS))
def test_rollout_draws_noise_through_init_noise(tiny_backbones, key):
    """The ODE rollout from seeds starts at init_noise(seeds): the first step's prediction sees that x_T."""
    bb, steps = tiny_backbones[key], 2
    cond, seeds = bb.encode(PROMPTS[:2], guidance=False), torch.tensor([7, 8])
    traj = rollout(bb, kernel_for(bb, "ode"), cond, steps, StepPlan.ode(steps), seeds=seeds)
    x, grid, ode = bb.init_noise(seeds), bb.timesteps(steps), kernel_for(bb, "ode")
    for i in range(steps):
        t, s = grid[i].expand(2), grid[i + 1].expand(2)
        x = ode.step(bb.predict(x, t, cond, 1.0), x, t, s, prediction=bb.prediction).x_next
    assert torch.equal(traj.x0, x)


def _pipeline_output(bb, latents, steps, guidance, output_type):
    side = bb.sample_shape[-1] * bb.vae_scale
    out = bb.pipe(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=guidance, latents=latents.clone(),
                  height=side, width=side, output_type=output_type, **bb.meta())  # meta: sampling settings
    return out.images


@pytest.mark.parametrize("key", list(VARIANTS))
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ode_rollout_equals_diffusers_pipeline(tiny_backbones, key, guidance):
    bb, steps = tiny_backbones[key], 5
    if not isinstance(bb, PipelineBackbone) or bb.vae is None:
        pytest.skip("pixel space: the diffusers pipelines assume an autoencoder")
    cond = bb.encode(PROMPTS, guidance=guidance > 1)
    seeds = torch.tensor([11, 12, 13])
    traj = rollout(bb, kernel_for(bb, "ode"), cond, steps, StepPlan.ode(steps), seeds=seeds, guidance_scale=guidance)
    latents = _pipeline_output(bb, bb.init_noise(seeds), steps, guidance, "latent")
    assert (traj.x0 - latents.float()).abs().max().item() <= 1e-5
    images = _pipeline_output(bb, bb.init_noise(seeds), steps, guidance, "pt")
    assert (bb.decode(traj.x0) - images).abs().max().item() <= 1e-5


@pytest.mark.parametrize("key", FIRST)
def test_save_and_load_round_trip(tiny_backbones, key, tmp_path):
    bb = tiny_backbones[key]
    bb.pipe.save_pretrained(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps(bb.meta()))
    loaded = backbones.load(str(tmp_path))
    assert type(loaded) is type(bb)
    x = bb.init_noise(torch.tensor([5, 6]))
    t = bb.timesteps(4)[1].expand(2)
    a = bb.predict(x, t, bb.encode(PROMPTS[:2], guidance=True), 2.5)
    b = loaded.predict(x, t, loaded.encode(PROMPTS[:2], guidance=True), 2.5)
    assert torch.equal(a, b)
