"""Every backbone: its deterministic rollout equals the matching diffusers pipeline, and the contract holds."""

from __future__ import annotations

import pytest
import torch

from vgrl import registry
from vgrl.rollout import StepPlan, kernel_for, rollout

PROMPTS = ["a red circle", "two blue squares", "a green triangle above a cyan cross"]
# backbone key in the session fixture -> registry name
VARIANTS = {"sd-eps": "sd", "sd-v": "sd", "sd-pixel": "sd", "flow": "flow", "flow-pixel": "flow"}
WITH_PIPELINE = ["sd-eps", "sd-v", "flow"]


def test_every_registered_backbone_is_covered():
    assert set(registry.available("backbones")) == set(VARIANTS.values())


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


def _pipeline_output(bb, latents, steps, guidance, output_type):
    extra = {"max_sequence_length": bb.max_sequence_length} if bb.name == "flow" else {}
    out = bb.pipe(prompt=PROMPTS, num_inference_steps=steps, guidance_scale=guidance, latents=latents.clone(),
                  height=32, width=32, output_type=output_type, **extra)
    return out.images


@pytest.mark.parametrize("key", WITH_PIPELINE)
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ode_rollout_equals_diffusers_pipeline(tiny_backbones, key, guidance):
    bb, steps = tiny_backbones[key], 5
    cond = bb.encode(PROMPTS, guidance=guidance > 1)
    seeds = torch.tensor([11, 12, 13])
    traj = rollout(bb, kernel_for(bb, "ode"), cond, steps, StepPlan.ode(steps), seeds=seeds, guidance_scale=guidance)
    latents = _pipeline_output(bb, bb.init_noise(seeds), steps, guidance, "latent")
    assert (traj.x0 - latents.float()).abs().max().item() <= 1e-5
    images = _pipeline_output(bb, bb.init_noise(seeds), steps, guidance, "pt")
    assert (bb.decode(traj.x0) - images).abs().max().item() <= 1e-5


@pytest.mark.parametrize("key", ["sd-eps", "flow"])
def test_save_and_load_round_trip(tiny_backbones, key, tmp_path):
    bb = tiny_backbones[key]
    bb.pipe.save_pretrained(tmp_path)
    loaded = type(bb).from_pretrained(str(tmp_path))
    if key == "flow":
        loaded.max_sequence_length = bb.max_sequence_length
    x = bb.init_noise(torch.tensor([5, 6]))
    t = bb.timesteps(4)[1].expand(2)
    a = bb.predict(x, t, bb.encode(PROMPTS[:2], guidance=True), 2.5)
    b = loaded.predict(x, t, loaded.encode(PROMPTS[:2], guidance=True), 2.5)
    assert torch.equal(a, b)
