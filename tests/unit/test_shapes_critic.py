"""The shapes critic: a truthful differentiable flag, the shipped weights' ranking on held-out prompts,
clear errors, the metadata encoding and a train-save-load round trip."""

from __future__ import annotations

import re

import pytest
import torch

from vgrl import rewards
from vgrl.cli import build_parser
from vgrl.rewards.base import RewardInputError
from vgrl.rewards.shapes_critic import META_DIM, encode_meta, train_critic
from vgrl.worlds.shapes import ObjectSpec, PromptMeta, ShapesWorld


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(32)


@pytest.fixture(scope="module")
def critic():
    return rewards.get("shapes_critic")


def test_scores_carry_a_gradient_to_the_images(critic, world):
    metas = [p.meta for p in world.prompts("heldout")[:4]]
    images = world.render(metas, seed=0).requires_grad_(True)
    out = critic(images, [""] * 4, metas)
    assert critic.differentiable and out.scores.shape == (4,) and out.scores.dtype == torch.float32
    assert bool(((out.scores >= 0) & (out.scores <= 1)).all())
    (grad,) = torch.autograd.grad(out.scores.sum(), images)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    assert not any(p.requires_grad for p in critic.net.parameters())  # frozen: the trainer never updates it


def test_shipped_critic_ranks_ground_truth_above_a_mismatched_render(critic, world):
    prompts = world.prompts("heldout")
    pick = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(0))[:64].tolist()
    metas = [prompts[i].meta for i in pick]
    others = metas[1:] + metas[:1]  # each prompt scored on the render of another held-out prompt
    with torch.no_grad():
        own = critic(world.render(metas, seed=1), [""] * 64, metas).scores
        mismatched = critic(world.render(others, seed=1), [""] * 64, metas).scores
    assert (own > mismatched).float().mean().item() >= 0.9


def test_missing_weights_error_names_the_path(tmp_path):
    path = tmp_path / "no-critic-here"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        rewards.get("shapes_critic", path=str(path))


def test_inputs_are_checked(critic, world):
    images = world.render([world.prompts("train")[0].meta], seed=0)
    with pytest.raises(RewardInputError, match="PromptMeta"):
        critic(images, ["a photo of a circle"], None)
    with pytest.raises(RewardInputError, match="32x32"):
        critic(torch.zeros(1, 3, 64, 64), [""], [world.prompts("train")[0].meta])


def test_metadata_encoding_is_one_hot_per_field():
    meta = PromptMeta("position", (ObjectSpec("circle", "red"), ObjectSpec("square", None, 1)), "above")
    v = encode_meta([meta, PromptMeta("counting", (ObjectSpec("cross", "blue", 3),))])
    assert v.shape == (2, META_DIM) and set(v.unique().tolist()) == {0.0, 1.0}
    # category 1 + two slots x (present, shape, colour | any, count) 8 + relation 1
    assert v[0].sum() == 10 and v[1].sum() == 5


def test_train_save_load_round_trip(tmp_path, world):
    out = tmp_path / "critic"
    record = train_critic(out, steps=2, seed=0, threads=1, base_models=(), batch_size=16, evaluate=False)
    assert record["params"] < 1_000_000 and (out / "model.safetensors").stat().st_size < 2_000_000
    critic = rewards.get("shapes_critic", path=str(out))
    metas = [p.meta for p in world.prompts("train")[:2]]
    assert critic(world.render(metas), ["", ""], metas).scores.shape == (2,)
    args = build_parser().parse_args(["train-critic", "--out", str(out), "--steps", "5"])
    assert (args.out, args.steps, args.seed, args.threads) == (str(out), 5, 0, 1)
