"""``vgrl train`` end to end on tiny models: artefacts, pinned values, clear errors, non-finite handling."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from vgrl.training import checkpoint
from vgrl.config import load_config
from vgrl.training.loop import TrainingError, train

TINY = {
    "seed": 0,
    "backbone": {"name": "flow", "tiny": True, "resolution": 32},
    "kernel": {"name": "flow_sde", "noise_level": 0.7},
    "sampling": {"num_steps": 4, "plan": {"kind": "window", "window_start": 0, "window_size": 2}},
    "data": {"world": "shapes", "split": "train"},
    "batch_size": 8, "group_size": 4,
    "reward": {"name": "jpeg"},
    "algorithm": {"name": "flow_grpo", "beta": 0.01},
    "train": {"iterations": 3, "lr": 1e-3, "minibatch_size": 4, "grad_accum": 2, "checkpoint_every": 1},
    "eval": {"every": 2, "per_category": 2, "batch_size": 32},
    "log": {"grid_every": 1, "progress": False, "tensorboard": False},
}


def config(tmp_path, overrides=(), **sections):
    data = json.loads(json.dumps(TINY))
    for key, value in sections.items():
        named = key in ("kernel", "reward", "algorithm")  # a component's options are replaced, not merged
        data[key] = {**data[key], **value} if isinstance(value, dict) and not named else value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, list(overrides))


def rows(run_dir, kind=None):
    found = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in found if kind is None or r["kind"] == kind]


def test_run_writes_every_artefact_and_pinned_values(tmp_path):
    run_dir = tmp_path / "run"
    summary = train(config(tmp_path), run_dir)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.html", "grids/eval_before.png",
                 "grids/eval_after.png", "grids/train_000003.png"):
        assert (run_dir / name).is_file(), name
    assert [p.name for p in checkpoint.list_checkpoints(run_dir / "checkpoints")] == ["step-000002", "step-000003"]
    assert summary["images_generated"] == 24 and summary["iterations"] == 3 and summary["optimizer_steps"] == 3
    assert summary["heldout_accuracy_before"] is not None and summary["heldout_accuracy_after"] is not None
    train_rows = rows(run_dir, "train")
    assert [r["iteration"] for r in rows(run_dir, "eval")] == [0, 2, 3]
    # The first inner step after a rollout is on-policy: the importance ratio is exactly 1.
    assert all(r["ratio_max_dev"] <= 1e-6 for r in train_rows)
    # Pinned: rewards of the three rollouts (JPEG size of the tiny model's samples), fp32 CPU.
    assert [round(r["reward_mean"], 4) for r in train_rows] == pytest.approx(PINNED_REWARDS, abs=2e-4)
    assert all(r["grad_norm"] > 0 for r in train_rows)


PINNED_REWARDS = [-1.5814, -1.5745, -1.5805]


def test_existing_run_dir_is_refused_without_resume(tmp_path):
    cfg = config(tmp_path, train={"iterations": 1}, eval={"before": False, "every": None})
    train(cfg, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(TrainingError, match="already holds a run.*--resume auto"):
        train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_bad_algorithm_option_names_the_field(tmp_path):
    from vgrl.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"algorithm\.clip_rnge: unknown option 'clip_rnge' .*did you mean "
                                          r"'clip_range'"):  # refused when the config is read, before any model
        config(tmp_path, algorithm={"name": "flow_grpo", "clip_rnge": 0.1})
    assert not (tmp_path / "run").exists()


def test_incompatible_kernel_is_one_line(tmp_path):
    cfg = config(tmp_path, kernel={"name": "ode"}, sampling={"num_steps": 4, "plan": {"kind": "ode"}})
    with pytest.raises(TrainingError, match="needs per-step log-probabilities, but kernel 'ode' is deterministic"):
        train(cfg, tmp_path / "run")


class NaNOnce:
    """Wraps a reward: NaN for sample 5 on the given calls."""

    def __init__(self, reward, calls):
        self.reward, self.calls, self.n = reward, set(calls), 0

    def __call__(self, images, prompts, metadata):
        from vgrl.rewards.base import NonFiniteRewardError

        self.n += 1
        if self.n in self.calls:
            raise NonFiniteRewardError("reward 'jpeg': non-finite scores for samples [5]", [5])
        return self.reward(images, prompts, metadata)


def _patched_build(monkeypatch, patch):
    import vgrl.training.loop as trainer

    original = trainer.build

    def build(cfg):
        run = original(cfg)
        patch(run)
        return run

    monkeypatch.setattr(trainer, "build", build)


def test_non_finite_reward_skips_and_logs_prompt_ids(tmp_path, monkeypatch):
    _patched_build(monkeypatch, lambda run: setattr(run, "reward", NaNOnce(run.reward, {2})))
    summary = train(config(tmp_path, eval={"before": False, "every": None}), tmp_path / "run")
    skipped = [r for r in rows(tmp_path / "run", "train") if r.get("skipped") == 1.0]
    assert len(skipped) == 1 and skipped[0]["iteration"] == 2 and skipped[0]["skip_reason"] == "non-finite reward"
    assert len(skipped[0]["skip_prompt_ids"]) == 1  # sample 5 belongs to the second prompt group
    assert summary["skipped_steps"] == 1 and summary["optimizer_steps"] == 2


def test_consecutive_non_finite_losses_stop_the_run_and_never_reach_a_checkpoint(tmp_path, monkeypatch):
    def poison(run):
        loss = run.algorithm.loss

        def nan_loss(*args, **kwargs):
            value, metrics = loss(*args, **kwargs)
            return value * float("nan"), metrics

        run.algorithm.loss = nan_loss

    _patched_build(monkeypatch, poison)
    cfg = config(tmp_path, train={"max_consecutive_skips": 2}, eval={"before": False, "every": None})
    with pytest.raises(TrainingError, match="2 consecutive optimiser steps had a non-finite loss or gradient"):
        train(cfg, tmp_path / "run")
    ckpts = checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["step-000001"]
    lora_b = [v for k, v in checkpoint.load(ckpts[0]).trainable.items() if "lora_B" in k]
    assert all(bool(torch.isfinite(v).all()) and v.abs().max() == 0 for v in lora_b)  # never updated


def test_non_finite_gradient_skips_the_step(tmp_path, monkeypatch):
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * float("nan") if calls["n"] <= 4 else grad  # first optimiser step: 2 minibatches x 2 steps

    _patched_build(monkeypatch, lambda run: run.params[0].register_hook(hook))
    summary = train(config(tmp_path, eval={"before": False, "every": None}), tmp_path / "run")
    assert summary["skipped_steps"] == 1 and summary["optimizer_steps"] == 2
    assert [r["skipped"] for r in rows(tmp_path / "run", "train")] == [1.0, 0.0, 0.0]


def test_checkpoint_refuses_non_finite_tensors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="non-finite trainable weights: w"):
        checkpoint.save(tmp_path, 1, {"w": torch.tensor([1.0, float("inf")])}, {}, {})
    with pytest.raises(checkpoint.CheckpointError, match="optimiser or RNG state: opt/m"):
        checkpoint.save(tmp_path, 1, {"w": torch.ones(2)}, {"opt": {"m": torch.tensor([float("nan")])}}, {})
    assert checkpoint.latest(tmp_path) is None and not any(tmp_path.iterdir())


def test_quickstart_config_runs_on_the_shipped_model(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs/quickstart.yaml", [
        f"backbone.path={root / 'models/shapes-flow/pipeline'}", "train.iterations=1", "train.max_minutes=null",
        "batch_size=4", "group_size=2", "train.minibatch_size=4", "train.inner_epochs=1", "sampling.num_steps=3",
        "eval.per_category=1",
        "log.progress=false", "log.tensorboard=false"])
    summary = train(cfg, tmp_path / "run")
    assert summary["images_generated"] == 4 and summary["optimizer_steps"] == 1
    assert summary["after"]["samples"] == 5  # one per held-out category
    assert summary["heldout_strict_accuracy_after"] == summary["after"]["overall_strict_accuracy"]
    assert summary["heldout_strict_accuracy_after"] <= summary["heldout_accuracy_after"]
    assert (tmp_path / "run" / "report.html").is_file()


def test_exported_pipeline_predicts_like_the_trained_model(tmp_path):
    from vgrl import backbones
    from vgrl.training import loop as trainer
    from vgrl.rollout import StepPlan, kernel_for, rollout

    cfg = config(tmp_path, train={"iterations": 2}, eval={"before": False, "every": None})
    run = trainer.build(cfg)
    counters = trainer.Counters()
    for _ in range(2):
        trainer.iterate(run, counters)
    out = trainer.export(run, tmp_path / "final", counters)
    loaded = backbones.load(str(out))
    cond = run.backbone.encode(["a photo of a red circle"] * 2, guidance=False)
    seeds = torch.tensor([1, 2])
    ode = kernel_for(run.backbone, "ode")
    trained = rollout(run.backbone, ode, cond, 4, StepPlan.ode(4), seeds=seeds).x0
    exported = rollout(loaded, kernel_for(loaded, "ode"), loaded.encode(["a photo of a red circle"] * 2,
                                                                        guidance=False), 4, StepPlan.ode(4), seeds=seeds).x0
    base = rollout(backbones.build(cfg.backbone), ode, cond, 4, StepPlan.ode(4), seeds=seeds).x0
    assert (trained - base).abs().max() > 1e-4            # training changed the samples
    assert (trained - exported).abs().max() <= 1e-5      # the export is that trained model


def test_compose_reward_from_yaml_logs_every_term(tmp_path):
    reward = {"name": "compose", "normalise": "before",
              "terms": [{"name": "shapes_checker"}, {"name": "jpeg", "weight": 0.5, "label": "size"}]}
    cfg = config(tmp_path, reward=reward, train={"iterations": 1}, eval={"before": False, "every": None})
    train(cfg, tmp_path / "run")
    row = rows(tmp_path / "run", "train")[0]
    assert {"reward/shapes_checker", "reward/size", "reward/size/size_kb", "reward/total"} <= set(row)
    assert row["reward/size"] == pytest.approx(-row["reward/size/size_kb"])   # jpeg compressibility = -size
    assert row["reward_mean"] == pytest.approx(row["reward/total"], abs=1e-6)  # normalise: before -> raw total
    from vgrl.config.schema import ConfigError  # bad compose specs are refused when the config is read

    with pytest.raises(ConfigError, match="reward.terms: a non-empty list of mappings"):
        config(tmp_path, reward={"name": "compose"})
    with pytest.raises(ConfigError, match=r"reward\.terms\.1\.name: unknown reward 'jpg'"):
        config(tmp_path, reward={"name": "compose", "terms": [{"name": "jpeg"}, {"name": "jpg"}]})


def test_data_categories_restrict_the_training_prompts(tmp_path):
    from vgrl.config.schema import ConfigError
    from vgrl.training.build import prompt_sampler

    cfg = config(tmp_path, data={"categories": ["counting", "position"]})
    sampler = prompt_sampler(cfg)
    drawn = sampler.draw(200)
    assert {m.category for m in drawn.metas} == {"counting", "position"}
    counts = sum(m.category == "counting" for m in drawn.metas)
    assert 70 < counts < 130  # each selected category is drawn equally often
    # refused when the config is read (vgrl validate), no longer only when the run is built
    with pytest.raises(ConfigError, match=r"data\.categories: 'count': not a category of world 'shapes'; "
                                          r"valid in split 'train': single_object"):
        config(tmp_path, data={"categories": ["count"]})
    with pytest.raises(ConfigError, match=r"data\.categories.*cannot apply to plain prompts"):
        config(tmp_path, prompts=["a red circle"], data={"world": None, "categories": ["counting"]})


def test_training_reward_is_logged_per_prompt_category(tmp_path):
    from vgrl.training.loop import _category_means
    from vgrl.worlds.shapes import ObjectSpec, PromptMeta

    # by hand: prompts (counting, colors, counting), 2 samples each
    metas = [PromptMeta("counting", (ObjectSpec("circle", "red", 2),)),
             PromptMeta("colors", (ObjectSpec("square", "blue"),)),
             PromptMeta("counting", (ObjectSpec("cross", "green", 3),))]
    scores = torch.tensor([1.0, 0.0, 0.5, 0.75, 0.0, 0.5])
    got = _category_means(scores, metas, 2)
    assert got == pytest.approx({"reward_by_category/counting": 0.375, "reward_by_category/colors": 0.625})
    assert _category_means(scores, [None] * 3, 2) == {}

    # end to end with the shipped critic: a continuous, prompt-dependent score (the checker scores the tiny
    # random model's samples all alike); the saved rollouts give each sample's reward and category
    cfg = config(tmp_path, reward={"name": "shapes_critic"}, batch_size=16, group_size=2,
                 train={"iterations": 2}, eval={"before": False, "every": None},
                 log={**TINY["log"], "save_rollouts": True})
    train(cfg, tmp_path / "run")
    for i, row in enumerate(rows(tmp_path / "run", "train"), start=1):
        saved = [json.loads(line) for line in
                 (tmp_path / "run" / "rollouts" / f"iter_{i:05d}" / "index.jsonl").read_text().splitlines()]
        expect = {}
        for sample in saved:
            expect.setdefault(sample["metadata"]["category"], []).append(sample["reward"])
        logged = {k.split("/", 1)[1]: v for k, v in row.items() if k.startswith("reward_by_category/")}
        assert len(expect) > 1 and len({round(sum(v) / len(v), 6) for v in expect.values()}) == len(expect)
        assert logged == pytest.approx({c: sum(v) / len(v) for c, v in expect.items()}, abs=1e-6)
    plain = config(tmp_path, prompts=["a red circle", "a blue square"], data={"world": None},
                   train={"iterations": 1}, eval={"before": False, "every": None})
    train(plain, tmp_path / "plain")
    assert not any(k.startswith("reward_by_category/") for k in rows(tmp_path / "plain", "train")[0])
