"""Proof of generality (issue 21, item 7): the unchanged trainer trains a video and a multi-view generator.

Test-only components (:mod:`tests.support`), reached only by ``package.module:Class`` names in the config as an
out-of-tree user's would be: a frames world and a frames backbone (diffusers' ``WanTransformer3DModel`` at a tiny
config, samples ``(B, F, 3, H, W)``), and the same for views ``(B, V, 3, H, W)``. Every registered algorithm (all
have an online mode) trains two iterations on each; and nothing in ``training/`` or ``algorithms/`` branches on
the modality.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from vgrl import registry
from vgrl.config import load_config
from vgrl.rollout import StepPlan, kernel_for, recompute_log_prob, rollout
from vgrl.training.loop import train

from tests.support.frames_backbone import FramesBackbone
from tests.support.frames_world import FramesWorld
from tests.support.rewards import FramesReward, ViewsReward
from tests.support.views_backbone import ViewsBackbone
from tests.support.views_world import ViewsWorld

SRC = Path(__file__).resolve().parents[2] / "src" / "vgrl"
MODALITIES = {
    "frames": ("tests.support.frames_backbone:FramesBackbone", "tests.support.frames_world:FramesWorld",
               "tests.support.rewards:FramesReward"),
    "views": ("tests.support.views_backbone:ViewsBackbone", "tests.support.views_world:ViewsWorld",
              "tests.support.rewards:ViewsReward"),
}
# Every registered algorithm, in its online mode, with the options a 2-iteration tiny run needs.
ALGORITHMS = {
    "flow_grpo": {},
    "ddpo": {},
    "dpok": {},
    "reward_backprop": {},
    "nft": {},
    "rwr": {},
    "raft": {},
    "diffusion_dpo": {"mode": "online"},
    "npo": {"mode": "online", "branch": "conditional"},
}
def config(tmp_path: Path, modality: str, algorithm: str, **sections):
    backbone, world, reward = MODALITIES[modality]
    data = {
        "seed": 0,
        "backbone": {"name": backbone, "tiny": True, "resolution": 16, "device": "cpu"},
        "kernel": {"name": "flow_sde", "noise_level": 0.7},
        "sampling": {"num_steps": 2},
        "data": {"world": world, "split": "train"},
        "batch_size": 4, "group_size": 2,
        "reward": {"name": reward},
        "algorithm": {"name": algorithm, **ALGORITHMS[algorithm]},
        "train": {"iterations": 2, "lr": 3e-3, "lora": None, "checkpoint_every": 2},
        "eval": {"every": None, "before": False, "split": "heldout", "per_category": 1, "batch_size": 8},
        "log": {"grid_every": None, "progress": False, "tensorboard": False},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, [])


def train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def weights_changed(cls, run_dir: Path) -> bool:
    """The exported transformer differs from the same seeded tiny model the run started from."""
    trained = cls.from_pretrained(str(run_dir / "final" / "pipeline")).transformer.state_dict()
    start = cls.tiny().transformer.state_dict()
    assert trained.keys() == start.keys()
    return any(not torch.equal(trained[k], start[k]) for k in start)


# ------------------------------------------------------------------------------------- the components


@pytest.mark.parametrize("cls,world_cls,reward_cls", [(FramesBackbone, FramesWorld, FramesReward),
                                                      (ViewsBackbone, ViewsWorld, ViewsReward)])
def test_components_agree_on_their_layout(cls, world_cls, reward_cls):
    assert cls.layout == world_cls.layout and reward_cls.layouts == (world_cls.layout,)
    assert cls.layout in ("video", "multiview")
    for name, want in ((MODALITIES[world_cls.name][0], cls), (MODALITIES[world_cls.name][2], reward_cls)):
        kind = "backbones" if want is cls else "rewards"
        assert registry.resolve(kind, name) is want


def test_config_sizes_the_frames_and_views():
    """``backbone.frames`` / ``backbone.views`` reach the family as its keyword; a family without it is refused."""
    from vgrl import backbones
    from vgrl.config import BackboneConfig

    spec = {"tiny": True, "resolution": 16, "device": "cpu"}
    frames = backbones.build(BackboneConfig(name="tests.support.frames_backbone:FramesBackbone", frames=2, **spec))
    views = backbones.build(BackboneConfig(name="tests.support.views_backbone:ViewsBackbone", views=3, **spec))
    assert frames.sample_shape == (2, 3, 16, 16) and views.sample_shape == (3, 3, 16, 16)
    with pytest.raises(ValueError, match="backbone.views: backbone 'tests.support.frames_backbone:FramesBackbone' "
                                         r"\(video samples\) takes no views"):
        backbones.build(BackboneConfig(name="tests.support.frames_backbone:FramesBackbone", views=2, **spec))


@pytest.mark.parametrize("cls,n", [(FramesBackbone, 4), (ViewsBackbone, 2)])
def test_backbone_samples_its_layout_and_recomputes_exactly(cls, n, tmp_path):
    """A stochastic rollout decodes to ``(B, N, 3, H, W)`` in [0, 1]; recomputed log-probs equal the recorded
    ones; the pipeline round-trips through save_pretrained / from_pretrained with identical predictions."""
    backbone = cls.tiny()
    assert backbone.sample_shape == (n, 3, 16, 16)
    cond = backbone.encode(["a dot moving left", "a red block seen from two sides"], guidance=True)
    kernel = kernel_for(backbone, "flow_sde", noise_level=0.7)
    traj = rollout(backbone, kernel, cond, 3, StepPlan.all(3), seeds=torch.tensor([3, 4]), guidance_scale=2.0)
    pixels = backbone.decode(traj.x0)
    assert pixels.shape == (2, n, 3, 16, 16) and 0 <= float(pixels.min()) and float(pixels.max()) <= 1
    for i in range(3):
        assert torch.equal(recompute_log_prob(backbone, kernel, traj, i).log_prob, traj.log_prob[:, i])
    backbone.pipe.save_pretrained(tmp_path)
    (tmp_path / "vgrl.json").write_text(json.dumps(backbone.meta()))
    loaded = cls.from_pretrained(str(tmp_path))
    assert loaded.sample_shape == backbone.sample_shape
    t = torch.tensor([0.3, 0.8])
    assert torch.equal(loaded.predict(traj.x0, t, cond, 2.0), backbone.predict(traj.x0, t, cond, 2.0))


@pytest.mark.parametrize("world_cls", [FramesWorld, ViewsWorld])
def test_world_checker_passes_ground_truth_and_fails_mismatches(world_cls):
    world = world_cls()
    for split in world.splits:
        metas = [p.meta for p in world.prompts(split) for _ in range(3)]
        samples = world.render(metas, seed=list(range(len(metas))))
        assert samples.shape[:2] == (len(metas), 4 if world_cls is FramesWorld else 2) and samples.ndim == 5
        assert torch.equal(world.render(metas, seed=list(range(len(metas)))), samples)  # deterministic
        own = world.check(samples, metas)
        assert bool(own.passed.all()) and torch.equal(own.score, torch.ones(len(metas)))
        wrong = world.check(samples, [world.mismatched(m) for m in metas])
        assert not bool(wrong.passed.any()) and float(wrong.score.max()) < 1


@pytest.mark.parametrize("reward_cls,world_cls", [(FramesReward, FramesWorld), (ViewsReward, ViewsWorld)])
def test_reward_scores_the_world_check_with_a_gradient(reward_cls, world_cls):
    """The reward is the world's check score, in [0, 1], differentiable in the pixels (reward_backprop uses it)."""
    world, reward = world_cls(), reward_cls()
    metas = [p.meta for p in world.prompts("train")]
    truth = world.render(metas)
    samples = (0.5 * truth + 0.5 * torch.rand(truth.shape, generator=torch.Generator().manual_seed(0)))
    samples.requires_grad_(True)
    out = reward.compute(samples, [""] * len(metas), metas)  # compute: the base class's input check is (c)'s
    assert torch.equal(out.scores.detach(), world.check(samples.detach(), metas).score)
    out.scores.sum().backward()
    assert samples.grad is not None and float(samples.grad.abs().sum()) > 0


@pytest.mark.parametrize("modality", ["frames", "views"])
def test_reward_call_accepts_its_layout(modality):
    """Through the Reward contract's own input checks (not only ``compute``)."""
    world = FramesWorld() if modality == "frames" else ViewsWorld()
    reward = FramesReward() if modality == "frames" else ViewsReward()
    metas = [p.meta for p in world.prompts("train")]
    out = reward(world.render(metas), [p.text for p in world.prompts("train")], metas)
    assert torch.equal(out.scores, torch.ones(len(metas)))


# ----------------------------------------------------------------------- training, every algorithm


@pytest.mark.parametrize("modality", ["frames", "views"])
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_trains_two_iterations(tmp_path, modality, algorithm):
    run_dir = tmp_path / "run"
    summary = train(config(tmp_path, modality, algorithm), run_dir)
    rows = train_rows(run_dir)
    assert [r["iteration"] for r in rows] == [1, 2] and summary["iterations"] == 2
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses))), f"{algorithm}: losses {losses}"
    assert summary["optimizer_steps"] >= 1 and summary["skipped_steps"] == 0
    assert all(0 <= r["reward_mean"] <= 1 for r in rows)
    cls = FramesBackbone if modality == "frames" else ViewsBackbone
    assert weights_changed(cls, run_dir), f"{algorithm} on {modality}: the trainable weights did not change"
    assert summary["heldout_accuracy_after"] is not None  # the world's held-out evaluation ran on its samples


def test_every_registered_algorithm_is_covered():
    """A new algorithm must be added to ALGORITHMS (with its online options), so it is proven general too."""
    assert set(ALGORITHMS) == set(registry.available("algorithms"))


@pytest.mark.parametrize("modality", ["frames", "views"])
def test_run_artefacts_of_five_dimensional_samples(tmp_path, modality):
    run_dir = tmp_path / "run"
    cfg = config(tmp_path, modality, "flow_grpo", log={"grid_every": 1, "progress": False, "tensorboard": False,
                                                       "save_rollouts": True},
                 eval={"every": None, "before": True, "split": "heldout", "per_category": 1, "batch_size": 8})
    train(cfg, run_dir)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.html", "grids/train_000001.png",
                 "grids/train_000002.png", "grids/eval_before.png", "grids/eval_after.png",
                 "final/pipeline/model_index.json", "final/pipeline/vgrl.json"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "rollouts").iterdir()) == ["iter_00001", "iter_00002"]


def test_generic_world_checker_rewards_a_video_world(tmp_path):
    run_dir = tmp_path / "run"
    cfg = config(tmp_path, "frames", "flow_grpo",
                 reward={"name": "world_checker", "world": "tests.support.frames_world:FramesWorld", "resolution": 16})
    train(cfg, run_dir)
    assert weights_changed(FramesBackbone, run_dir)


def test_layout_mismatch_is_refused_at_build_time_naming_both_sides(tmp_path):
    """An image backbone with the video world and reward: one line naming the backbone and what refuses it."""
    cfg = config(tmp_path, "frames", "flow_grpo", backbone={"name": "flow", "tiny": True, "resolution": 16,
                                                             "device": "cpu"})
    with pytest.raises(Exception, match=r"(?s)^[^\n]*flow[^\n]*image[^\n]*video[^\n]*$"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------ no modality branches

# A branch on the modality: a layout compared with a literal layout name, a literal "video" / "multiview", the old
# ``modality`` attribute, or a sample's rank or channel axis tested against an image's. Comparing two components'
# layouts with each other (an agreement check) is not a branch.
MODALITY_BRANCH = re.compile(
    r"""layout\s*(==|!=|\bin\b|\bnot\s+in\b)\s*[("'\[]|["'](image|video|multiview)["']\s*(==|!=|\bin\b)"""
    r"""|["'](video|multiview)["']|\.modality\b|ndim\s*(==|!=|<|>|<=|>=)\s*[45]\b|shape\[[12]\]\s*(==|!=)\s*3\b""")


def test_no_modality_branch_in_training_or_algorithms():
    hits = []
    for folder in ("training", "algorithms"):
        for path in sorted((SRC / folder).rglob("*.py")):
            for no, line in enumerate(path.read_text().splitlines(), 1):
                if MODALITY_BRANCH.search(line.split("#")[0]):
                    hits.append(f"{path.relative_to(SRC)}:{no}: {line.strip()}")
    assert not hits, "modality branches:\n" + "\n".join(hits)
