"""Diffusion-NPO: the loss is Diffusion-DPO's with the pair swapped (on either CFG branch), the negative
model enters sampling as the unconditional branch only, and ``vgrl eval --negative-model`` samples with it."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from vgrl import algorithms
from vgrl.algorithms._pairs import paired_trajectory, unconditional
from vgrl.algorithms.diffusion_dpo import preference_loss
from vgrl.algorithms.npo import NegativeGuidance
from vgrl.training.policy import Reference, export_pipeline
from vgrl.rollout import StepPlan, kernel_for, rollout
from vgrl.types import Batch, RewardOutput

PROMPTS = ["a red circle", "two blue squares"]
GROUPS = torch.tensor([0, 0, 1, 1])
SCORES = RewardOutput(scores=torch.tensor([1.0, 0.0, 0.25, 0.5]))


@pytest.fixture(scope="module")
def traj(tiny_backbones):
    bb = tiny_backbones["flow"]
    cond = bb.encode(PROMPTS, guidance=True).repeat_interleave(2)
    return rollout(bb, kernel_for(bb, "ode"), cond, 2, StepPlan.ode(2), seeds=torch.tensor([1, 2, 3, 4]),
                   guidance_scale=2.0)


@pytest.fixture()
def moved(tiny_backbones):
    """The tiny flow backbone with weights moved away from a frozen reference copy; restored afterwards."""
    bb = tiny_backbones["flow"]
    ref = Reference(bb, lora=False)
    saved = copy.deepcopy(bb.trainable().state_dict())
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for q in bb.trainable().parameters():
            q.add_(1e-2 * torch.randn(q.shape, generator=gen))
    yield bb, ref
    bb.trainable().load_state_dict(saved)


def swapped(batch):
    t = batch.traj
    return Batch(traj=paired_trajectory(t.x0[:, 1], t.x0[:, 0], t.cond, t.seeds, t.num_steps), rewards=-batch.rewards,
                 adv=-batch.adv, group_ids=batch.group_ids)


def test_npo_is_dpo_on_the_swapped_pairs(moved, traj):
    bb, ref = moved
    npo = algorithms.get("npo", branch="conditional", beta=50.0)
    dpo = algorithms.get("diffusion_dpo", beta=50.0)
    batch = npo.prepare(traj, SCORES, GROUPS)
    assert torch.equal(batch.traj.x0, dpo.prepare(traj, SCORES, GROUPS).traj.x0)  # same pairs, winner first
    got, m = npo.loss(bb, None, batch, 1, ref)
    want, w = dpo.loss(bb, None, swapped(batch), 1, ref)
    assert got.item() == pytest.approx(want.item(), rel=1e-6) and m["implicit_acc"] == w["implicit_acc"]
    mirror = dpo.loss(bb, None, batch, 1, ref)[1]
    assert m["z_mean"] == pytest.approx(-mirror["z_mean"], rel=1e-5)  # the negative model's z is DPO's negated


def test_npo_branches(moved, traj):
    bb, ref = moved
    opts = dict(beta=50.0)
    batch = algorithms.get("npo").prepare(traj, SCORES, GROUPS)
    cond_loss = algorithms.get("npo", branch="conditional", **opts).loss(bb, None, batch, 0, ref)[0]
    uncond_loss, m = algorithms.get("npo", branch="unconditional", **opts).loss(bb, None, batch, 0, ref)
    both = algorithms.get("npo", **opts).loss(bb, None, batch, 0, ref)[0]
    want = preference_loss(bb, ref, batch, 0, algorithms.get("npo", **opts).options, invert=True,
                           cond=unconditional(batch.traj.cond))[0]
    assert uncond_loss.item() == want.item() and "uncond_implicit_acc" in m and "implicit_acc" not in m
    assert both.item() == pytest.approx((cond_loss.item() + uncond_loss.item()) / 2, rel=1e-6)
    assert cond_loss.item() != pytest.approx(uncond_loss.item())
    batch.traj.cond = bb.encode(PROMPTS, guidance=False)  # rolled out without CFG: no empty-prompt embedding
    with pytest.raises(ValueError, match="sampling.guidance_scale > 1"):
        algorithms.get("npo").loss(bb, None, batch, 0, ref)


def test_negative_guidance_replaces_only_the_unconditional_branch(moved, traj):
    bb, ref = moved  # ref: the unmoved weights, a different "negative" model
    neg = ref.backbone
    sampler = NegativeGuidance(bb, neg)
    x, t, cond = traj.x0, torch.full((4,), 0.5), traj.cond
    with torch.no_grad():
        got = sampler.predict(x, t, cond, 3.0)
        c = bb.predict(x, t, type(cond)(embeds=cond.embeds, pooled=cond.pooled), 1.0)
        u = neg.predict(x, t, unconditional(cond), 1.0)
        assert torch.allclose(got, u + 3.0 * (c - u), atol=1e-6)
        assert torch.equal(sampler.predict(x, t, cond, 1.0), c)  # no guidance: the base model alone
        same = NegativeGuidance(bb, bb)  # the base as its own negative model: ordinary CFG
        assert torch.allclose(same.predict(x, t, cond, 3.0), bb.predict(x, t, cond, 3.0), atol=1e-5)
        plain = rollout(bb, kernel_for(bb, "ode"), cond, 3, StepPlan.ode(3), seeds=traj.seeds, guidance_scale=3.0)
        viasampler = rollout(same, kernel_for(same, "ode"), cond, 3, StepPlan.ode(3), seeds=traj.seeds,
                             guidance_scale=3.0)
        assert torch.allclose(plain.x0, viasampler.x0, atol=1e-4)


def test_negative_model_must_match_the_base(tiny_backbones):
    with pytest.raises(ValueError, match="must match"):
        NegativeGuidance(tiny_backbones["flow"], tiny_backbones["flow-pixel"])


def test_eval_with_a_negative_model(tiny_backbones, tmp_path):
    from vgrl.evaluation.world_eval import run

    bb = tiny_backbones["flow"]
    path = export_pipeline(bb, tmp_path / "model", {"resolution": 32, "max_sequence_length": 4})
    kw = dict(per_category=1, num_steps=2, guidance_scale=2.0)
    base = run(str(path), out_dir=str(tmp_path / "a"), **kw)
    same = run(str(path), out_dir=str(tmp_path / "b"), negative_model=str(path), **kw)
    assert torch.allclose(base.images, same.images, atol=1e-4)
    assert json.loads((tmp_path / "b" / "eval.json").read_text())["negative_model"] == str(path)
    with pytest.raises(ValueError, match="--negative-model acts through classifier-free guidance"):
        run(str(path), out_dir=str(tmp_path / "c"), negative_model=str(path), per_category=1, num_steps=2,
            guidance_scale=1.0)


def test_npo_trains_online_through_train(tmp_path):
    from vgrl.config import load_config
    from vgrl.training.loop import train

    cfg = {"seed": 0, "backbone": {"name": "flow", "tiny": True, "resolution": 32}, "kernel": {"name": "ode"},
           "sampling": {"num_steps": 2, "guidance_scale": 2.0, "plan": {"kind": "ode"}},
           "data": {"world": "shapes", "split": "train"}, "batch_size": 4, "group_size": 2, "reward": {"name": "jpeg"},
           "algorithm": {"name": "npo", "beta": 1000.0}, "train": {"iterations": 2, "lr": 1e-3, "checkpoint_every": 2},
           "eval": {"before": False, "every": None, "per_category": 1, "batch_size": 8},
           "log": {"grid_every": None, "progress": False, "tensorboard": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    summary = train(load_config(tmp_path / "cfg.yaml", []), tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert summary["optimizer_steps"] == 2 and all(r["pairs"] == 2.0 for r in train_rows)
    assert train_rows[0]["dpo_loss"] == pytest.approx(0.6931472) and "uncond_dpo_loss" in train_rows[0]
    assert (tmp_path / "run" / "final" / "pipeline" / "model_index.json").is_file()
