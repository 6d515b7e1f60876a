"""Preference training end to end on tiny models: an online Diffusion-DPO run that saves its rollouts,
``vgrl pairs`` on them, an offline run on the built dataset whose DPO loss falls (pinned values, fp32
CPU); and the shipped flow model with the bench config and its autoencoder round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from vgrl.cli import main
from vgrl.config import load_config
from vgrl.training.loop import train

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "seed": 0, "backbone": {"name": "flow", "tiny": True, "resolution": 32}, "kernel": {"name": "ode"},
    "sampling": {"num_steps": 3, "guidance_scale": 2.0, "plan": {"kind": "ode"}},
    "data": {"world": "shapes", "split": "train"}, "batch_size": 8, "group_size": 4, "reward": {"name": "jpeg"},
    "algorithm": {"name": "diffusion_dpo", "beta": 2000.0, "pairing": "all", "margin": 0.01},
    "train": {"iterations": 3, "lr": 1e-3, "minibatch_size": 4, "checkpoint_every": 3},
    "eval": {"before": False, "every": None, "per_category": 1, "batch_size": 8},
    "log": {"grid_every": None, "progress": False, "tensorboard": False, "save_rollouts": True},
}
# Pinned on the dev machine (fp32, deterministic CPU): rollout rewards (JPEG size) and pairs per iteration of
# the online run; DPO loss per iteration of the offline run on the pairs built from it.
ONLINE_REWARDS = [-1.5828, -1.5751, -1.5800]
ONLINE_PAIRS = [7.0, 5.0, 2.0]
OFFLINE_LOSS = [0.6931, 0.6903, 0.6795]


def config(tmp_path, name, **sections):
    data = json.loads(json.dumps(TINY))
    data.update(sections)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, [])


def train_rows(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def test_online_dpo_then_pairs_then_offline_dpo(tmp_path):
    summary = train(config(tmp_path, "online"), tmp_path / "online")
    rows = train_rows(tmp_path / "online")
    assert summary["images_generated"] == 24 and summary["skipped_steps"] == 0
    assert [round(r["reward_mean"], 4) for r in rows] == pytest.approx(ONLINE_REWARDS, abs=2e-4)
    assert [r["pairs"] for r in rows] == ONLINE_PAIRS
    assert all(r["pair_margin"] >= 0.01 for r in rows)

    assert main(["pairs", "--from-run", str(tmp_path / "online"), "--out", str(tmp_path / "pairs")]) == 0
    offline = config(tmp_path, "offline", batch_size=4, group_size=1,
                     data={"world": "shapes", "preferences": str(tmp_path / "pairs")},
                     algorithm={"name": "diffusion_dpo", "mode": "offline", "beta": 2000.0},
                     train={"iterations": 3, "lr": 1e-3, "checkpoint_every": 3})
    summary = train(offline, tmp_path / "offline")
    rows = train_rows(tmp_path / "offline")
    assert summary["images_generated"] == 0 and [r["pairs"] for r in rows] == [4, 4, 4]
    losses = [r["dpo_loss"] for r in rows]
    assert losses == pytest.approx(OFFLINE_LOSS, abs=1e-3)
    assert losses[0] == pytest.approx(math.log(2.0))  # the first step: policy == reference
    assert losses[-1] < losses[0] and [r["implicit_acc"] for r in rows] == [0.0, 0.75, 0.75]


def test_bench_config_runs_on_the_shipped_model(tmp_path):
    cfg = load_config(ROOT / "configs/bench/diffusion_dpo.yaml", [
        f"backbone.path={ROOT / 'models/shapes-flow/pipeline'}", "train.iterations=1", "train.max_minutes=null",
        "batch_size=8", "group_size=4", "train.minibatch_size=8", "sampling.num_steps=3", "eval.per_category=1",
        "eval.num_steps=3", "log.progress=false", "log.tensorboard=false", "algorithm.margin=0.0"])
    summary = train(cfg, tmp_path / "run")
    assert summary["images_generated"] == 8 and summary["algorithm"] == "diffusion_dpo"
    assert summary["after"]["samples"] == 5


def test_shipped_autoencoder_round_trips_decoded_samples():
    from vgrl import backbones
    from vgrl.rollout import StepPlan, kernel_for, rollout

    bb = backbones.load(str(ROOT / "models/shapes-flow/pipeline"))
    cond = bb.encode(["a photo of a red circle", "a photo of two blue squares"], guidance=True)
    traj = rollout(bb, kernel_for(bb, "ode"), cond, 4, StepPlan.ode(4), seeds=torch.tensor([1, 2]), guidance_scale=3.0)
    with torch.no_grad():
        images = bb.decode(traj.x0)
        again = bb.decode(bb.encode_images(images))
    assert (again - images).abs().mean().item() < 0.015  # the trained VAE: offline pairs train on near-exact latents
