"""Device placement and mixed precision: config errors, ``device: cpu`` == default bitwise, bf16 autocast on
CPU end to end with fp32 master weights, the fp16 loss scaler's skip logic (on CPU), checkpoints readable
with ``map_location``, and tensors landing on the requested device (the ``meta`` device stands in for a GPU:
this machine has none, so the CUDA paths themselves are not run here)."""

from __future__ import annotations

import copy
import json
import math
import warnings

import pytest
import torch
import yaml

from vgrl.training import checkpoint
from vgrl.config import ConfigError, apply_overrides, dump_config, load_config, validate_config
from vgrl.device import DeviceError, Precision, resolve_device, to_cpu
from vgrl.training.loop import TrainingError, build, train

from tests.recipes.test_train import TINY as TRAIN_TINY

TINY = {**json.loads(json.dumps(TRAIN_TINY)),
        "train": {**TRAIN_TINY["train"], "iterations": 1},
        "eval": {"before": False, "every": None, "per_category": 1, "batch_size": 8},
        "log": {"grid_every": None, "progress": False, "tensorboard": False}}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    torch.use_deterministic_algorithms(True)  # a deterministic: false run switched it off (conftest's mode)


def config(tmp_path, **sections):
    data = json.loads(json.dumps(TINY))
    for key, value in sections.items():
        named = key in ("kernel", "reward", "algorithm")
        data[key] = {**data[key], **value} if isinstance(value, dict) and not named else value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def errors_for(overrides):
    with pytest.raises(ConfigError) as info:
        validate_config(apply_overrides(copy.deepcopy(TINY), overrides))
    return info.value.messages


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("overrides, path, needles", [
    (["backbone.device=gpu"], "backbone.device", ["'gpu' is not a device", "valid: auto, cpu, cuda, cuda:N"]),
    (["backbone.device='cuda:x'"], "backbone.device", ["'cuda:x' is not a device", "valid: auto, cpu, cuda"]),
    (["train.mixed_precision=bf16"], "train.mixed_precision",
     ["'bf16' with deterministic: true", "valid: 'no', or set deterministic: false"]),
    (["train.mixed_precision=fp16", "deterministic=false", "backbone.device=cpu"], "train.mixed_precision",
     ["'fp16' is not supported on backbone.device 'cpu'", "valid on cpu: 'no', 'bf16'"]),
    (["train.mixed_precision=fp32", "deterministic=false"], "train.mixed_precision", ["'no', 'bf16' or 'fp16'"]),
    (["sampling.mixed_precision=bf16"], "sampling.mixed_precision",
     ["'bf16' with deterministic: true", "valid: 'no', or set deterministic: false"]),
    (["eval.mixed_precision=fp16", "deterministic=false", "backbone.device=cpu"], "eval.mixed_precision",
     ["'fp16' is not supported on backbone.device 'cpu'"]),
    (["sampling.mixed_precision=half", "deterministic=false"], "sampling.mixed_precision", ["'no', 'bf16' or 'fp16'"]),
])
def test_bad_device_or_precision_names_the_field(overrides, path, needles):
    messages = [m for m in errors_for(overrides) if m.startswith(f"{path}: ")]
    assert messages, errors_for(overrides)
    assert all(n in messages[0] for n in needles), messages[0]


def test_good_settings_validate_and_round_trip():
    for overrides in (["backbone.device=cuda:1"], ["train.mixed_precision=no"],  # YAML reads a bare no as false
                      ["train.mixed_precision=fp16", "deterministic=false", "backbone.device=cuda"],
                      ["train.mixed_precision=bf16", "deterministic=false", "backbone.device=cpu"],
                      ["sampling.mixed_precision=bf16", "eval.mixed_precision=no", "deterministic=false"]):
        cfg = validate_config(apply_overrides(copy.deepcopy(TINY), overrides))
        assert validate_config(yaml.safe_load(dump_config(cfg))) == cfg
    cfg = validate_config(apply_overrides(copy.deepcopy(TINY), ["train.mixed_precision=no", "eval.mixed_precision=no"]))
    assert cfg.train.mixed_precision == "no" and cfg.eval.mixed_precision == "no" and cfg.backbone.device == "auto"
    assert cfg.sampling.mixed_precision is None  # null: rollouts follow train.mixed_precision


@NO_CUDA
def test_cuda_without_cuda_is_one_line(tmp_path):
    with pytest.raises(DeviceError, match=r"^backbone.device: 'cuda:0' but CUDA is not available here .*"
                                          r"valid here: auto, cpu$"):
        resolve_device("cuda:0")
    with pytest.raises(TrainingError, match=r"backbone.device: 'cuda' but CUDA is not available"):
        train(config(tmp_path, backbone={"device": "cuda"}), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


@NO_CUDA
def test_fp16_on_cpu_is_refused(tmp_path):
    # 'auto' resolves to the CPU here: the config cannot know, the run refuses at build time
    with pytest.raises(TrainingError, match=r"train.mixed_precision: 'fp16' needs a CUDA device, but the run is "
                                            r"on cpu .*valid on cpu: 'no', 'bf16'"):
        train(config(tmp_path, deterministic=False, train={"mixed_precision": "fp16"}), tmp_path / "run")
    with pytest.raises(DeviceError, match="'fp16' needs a CUDA device"):
        Precision.build("fp16", torch.device("cpu"))


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch):
    import vgrl.device as device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match=r"sampling.mixed_precision: 'bf16' on a CPU without native bfloat16"):
        assert Precision.build("bf16", torch.device("cpu"), "sampling.mixed_precision", training=False).mode == "bf16"
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Precision.build("bf16", torch.device("cpu"))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto", launcher="cpu:0") == torch.device("cpu")  # a gloo launcher's cpu:0
    assert resolve_device("auto") == (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
                                      else torch.device("cpu"))
    with pytest.raises(DeviceError, match="'tpu' is not a device"):
        resolve_device("tpu")


# ------------------------------------------------------------------------------------------ runs


def _weights(run_dir):
    return checkpoint.load(checkpoint.latest(run_dir / "checkpoints")).trainable


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_explicit_cpu_equals_default_bitwise(tmp_path):
    train(config(tmp_path), tmp_path / "default")
    train(config(tmp_path, backbone={"device": "cpu"}), tmp_path / "cpu")
    a, b = _weights(tmp_path / "default"), _weights(tmp_path / "cpu")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)  # the step moved the weights
    drop = ("seconds", "wall_seconds", "eval_seconds")
    clean = (lambda rows: [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rows])
    assert clean(_rows(tmp_path / "default")) == clean(_rows(tmp_path / "cpu"))
    state = checkpoint.load(checkpoint.latest(tmp_path / "cpu" / "checkpoints")).state
    assert state["scaler"] is None  # fp32: no loss scaler


def test_bf16_autocast_on_cpu_end_to_end(tmp_path):
    from vgrl.training import loop as trainer
    from vgrl.rollout import rollout
    from vgrl.types import RewardOutput

    sections = dict(deterministic=False, train={"mixed_precision": "bf16"})
    bf16 = train(config(tmp_path, **sections), tmp_path / "bf16")  # flow_grpo
    assert bf16["optimizer_steps"] == 1 and bf16["skipped_steps"] == 0
    assert bf16["after"]["samples"] == 5  # evaluation ran under autocast too
    row = _rows(tmp_path / "bf16")[0]
    assert row["kind"] == "train" and math.isfinite(row["loss"]) and row["grad_norm"] > 0
    assert row["ratio_max_dev"] == 0.0  # rollout and loss under the same autocast: still exactly on-policy
    # master weights stay float32 (in the checkpoint and in the run), the optimiser state too
    weights = _weights(tmp_path / "bf16")
    assert weights and all(v.dtype == torch.float32 for v in weights.values())
    state = checkpoint.load(checkpoint.latest(tmp_path / "bf16" / "checkpoints")).state
    moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    # the same batch's loss under autocast differs from fp32 by a small amount (bf16 keeps 8 mantissa bits);
    # its gradients reach the fp32 master weights in fp32
    run = trainer.build(config(tmp_path, **sections, algorithm={"name": "rwr"}))
    assert all(p.dtype == torch.float32 for p in run.params)
    texts = ["a red circle", "two blue squares"]
    traj = rollout(run.backbone, run.kernel, run.backbone.encode(texts, guidance=False).repeat_interleave(4), 4,
                   run.plan, seeds=torch.arange(8))
    batch = run.algorithm.prepare(traj, RewardOutput(scores=torch.linspace(-1, 1, 8)),
                                  torch.arange(2).repeat_interleave(4), [p for p in texts for _ in range(4)], None)
    loss32, _ = run.algorithm.loss(run.backbone, run.kernel, batch, 0, run.ref)
    with run.precision.autocast():
        loss16, _ = run.algorithm.loss(run.backbone, run.kernel, batch, 0, run.ref)
    assert loss16.dtype == torch.float32 and loss32.item() > 0
    # measured: 2.151757 (fp32) vs 2.151849 (bf16), relative 4.3e-5
    assert 0 < abs(loss16.item() - loss32.item()) <= 1e-3 * loss32.item(), (loss32.item(), loss16.item())
    with run.precision.autocast():  # the same seeds' samples move a little (measured: max 0.0102, std 1.19)
        x0_16 = rollout(run.backbone, run.kernel, traj.cond, 4, run.plan, seeds=torch.arange(8)).x0
    assert x0_16.dtype == torch.float32 and 0 < (x0_16 - traj.x0).abs().max() <= 0.05
    loss16.backward()
    grads = [p.grad for p in run.params if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)
    # inside autocast the network computes in bfloat16; the kernel's log-probability stays float32
    cond = run.backbone.encode(["a red circle"], guidance=False)
    x = run.backbone.init_noise(torch.tensor([1]))
    t = torch.tensor([0.5])
    with run.precision.autocast():
        pred = run.backbone.predict(x, t, cond, 1.0)
        tr = run.kernel.step(pred, x, t, torch.tensor([0.25]), prediction="flow", noise=torch.zeros_like(x))
    assert pred.dtype == torch.bfloat16 and tr.log_prob.dtype == torch.float32
    assert run.backbone.predict(x, t, cond, 1.0).dtype == torch.float32  # outside: fp32


class _Log:
    """The tracker's two calls that ``evaluate`` makes, kept in a list."""

    def __init__(self) -> None:
        self.rows = []

    def log(self, row) -> None:
        self.rows.append(row)

    def image(self, *args) -> None:
        pass


def _prediction_dtypes(run, phase):
    """Wrap ``run.backbone.predict`` to record ``(phase(), output dtype)`` of every call."""
    seen, predict = [], run.backbone.predict

    def recording(*args, **kwargs):
        out = predict(*args, **kwargs)
        seen.append((phase(), out.dtype))
        return out

    run.backbone.predict = recording
    return seen


@pytest.mark.parametrize("eval_mode, eval_dtype", [(None, torch.float32), ("bf16", torch.bfloat16)])
def test_rollout_and_eval_precision_apart_from_training(tmp_path, eval_mode, eval_dtype):
    # nft (no log-probs): rollouts under sampling.mixed_precision bf16, the update in fp32, the evaluation
    # in eval.mixed_precision (null: the training precision)
    from vgrl.training.loop import Counters, evaluate, iterate

    ode = {**TINY["sampling"], "plan": {"kind": "ode"}}
    common = dict(deterministic=False, algorithm={"name": "nft", "num_timesteps": 1}, kernel={"name": "ode"},
                  eval={**TINY["eval"], "mixed_precision": eval_mode})
    run = build(config(tmp_path, sampling={**ode, "mixed_precision": "bf16"}, **common))
    assert (run.precision.mode, run.sampling_precision.mode) == ("no", "bf16") and run.sampling_precision.scaler is None
    phase = {"now": "rollout"}
    seen = _prediction_dtypes(run, lambda: phase["now"])
    row, images = iterate(run, Counters())
    phase["now"] = "eval"
    evaluate(run, Counters(), _Log(), None)
    dtypes = {p: {d for q, d in seen if q == p} for p in ("rollout", "eval")}
    assert dtypes["rollout"] == {torch.bfloat16, torch.float32}  # sampling forwards bf16, then the fp32 update
    assert [d for _, d in seen[:4]] == [torch.bfloat16] * 4  # the 4 sampling steps
    assert dtypes["eval"] == {eval_dtype}
    assert math.isfinite(row["loss"]) and row["grad_norm"] > 0
    # the same run in fp32 throughout samples other pixels from the same noise: close, not equal (the rewards,
    # discrete counts of detected objects, may coincide on the tiny model's samples)
    _, plain = iterate(build(config(tmp_path, sampling=ode, **common)), Counters())
    difference = (plain - images).abs()
    assert difference.max() > 0 and difference.mean() < 0.1 * plain.abs().mean()


def test_ratio_algorithms_refuse_a_rollout_precision_of_their_own(tmp_path):
    cfg = config(tmp_path, deterministic=False, sampling={**TINY["sampling"], "mixed_precision": "bf16"})
    with pytest.raises(TrainingError, match=r"sampling.mixed_precision: 'bf16' differs from train.mixed_precision "
                                            r"'no', but 'flow_grpo' recomputes the rollout's log-probs"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _cpu_fp16(monkeypatch, init_scale, inf_steps):
    """Patch the trainer's build: an fp16 loss scaler on the CPU (what fp16 does on CUDA) and infinite gradients
    from the first optimiser steps' backward passes (2 minibatches x 2 recorded steps per optimiser step)."""
    import vgrl.training.loop as trainer

    original, calls = trainer.build, {"n": 0}

    def hook(grad):
        calls["n"] += 1
        return grad * float("inf") if calls["n"] <= 4 * inf_steps else grad

    def build(cfg):
        run = original(cfg)
        run.precision = Precision(run.device, "fp16", torch.amp.GradScaler("cpu", init_scale=init_scale,
                                                                            growth_interval=1000))
        run.params[0].register_hook(hook)
        return run

    monkeypatch.setattr(trainer, "build", build)


def test_fp16_scale_overflow_is_skipped_and_counted_not_an_error(tmp_path, monkeypatch):
    _cpu_fp16(monkeypatch, init_scale=2.0**10, inf_steps=2)
    cfg = config(tmp_path, deterministic=False, train={"iterations": 3, "max_consecutive_skips": 1})
    summary = train(cfg, tmp_path / "run")  # 2 overflows in a row with max_consecutive_skips 1: no error
    rows = [r for r in _rows(tmp_path / "run") if r["kind"] == "train"]
    assert [r["skipped"] for r in rows] == [1.0, 1.0, 0.0] and rows[0]["scale_overflow"] == 1.0
    assert summary["skipped_steps"] == 2 and summary["optimizer_steps"] == 1
    assert rows[2]["loss_scale"] == 2.0**8  # halved by each overflow
    state = checkpoint.load(checkpoint.latest(tmp_path / "run" / "checkpoints")).state
    assert state["scaler"]["scale"] == 2.0**8  # saved for an exact resume


def test_non_finite_gradient_at_scale_one_still_stops_the_run(tmp_path, monkeypatch):
    _cpu_fp16(monkeypatch, init_scale=1.0, inf_steps=3)
    cfg = config(tmp_path, deterministic=False, train={"iterations": 3, "max_consecutive_skips": 2})
    with pytest.raises(TrainingError, match="2 consecutive optimiser steps had a non-finite loss or gradient"):
        train(cfg, tmp_path / "run")


def test_resume_refuses_another_loss_scaler(tmp_path):
    with pytest.raises(DeviceError, match="ckpt: train.mixed_precision differs from the run that wrote"):
        Precision().load_state_dict({"scale": 2.0}, "ckpt")


# ---------------------------------------------------------------------------------- placement, checkpoints


def test_checkpoint_loads_with_map_location(tmp_path):
    cfg = config(tmp_path, train={"iterations": 1})
    train(cfg, tmp_path / "run")
    path = checkpoint.latest(tmp_path / "run" / "checkpoints")
    default, mapped = checkpoint.load(path), checkpoint.load(path, map_location=torch.device("cpu"))
    assert all(torch.equal(default.trainable[k], mapped.trainable[k]) for k in default.trainable)
    assert all(v.device.type == "cpu" for v in mapped.trainable.values())
    # a resumed run on another device reads the same file: here, resume it (on the CPU) for one more iteration
    train(config(tmp_path, train={"iterations": 2}), tmp_path / "run", resume="auto")
    assert checkpoint.latest(tmp_path / "run" / "checkpoints").name == "step-000002"


def test_state_goes_to_cpu_for_saving():
    # CPU tensors are kept as they are (a CPU run saves exactly what it saved before); nesting is preserved
    state = {"a": [torch.ones(2), 3], "b": {"c": (torch.zeros(1), "x")}, "d": None}
    out = to_cpu(state)
    assert out == {"a": [state["a"][0], 3], "b": {"c": (state["b"]["c"][0], "x")}, "d": None}
    assert out["a"][0] is state["a"][0] and isinstance(out["b"]["c"], tuple)


def test_tensors_land_on_the_requested_device():
    """``meta`` stands in for a GPU: the backbone moves, conditioning and predictions come back there, and
    CPU-drawn times and noise follow the sample; seeds stay on the CPU."""
    from vgrl.algorithms._forward import noise
    from vgrl.backbones.flow import FlowBackbone
    from vgrl.backbones.sd import SDBackbone
    from vgrl.types import Batch, Cond, Trajectory

    for bb in (FlowBackbone.tiny(), SDBackbone.tiny()):
        assert bb.to("cpu") is bb and bb.device == torch.device("cpu")
        bb.to("meta")
        assert bb.device.type == "meta"
        assert all(p.device.type == "meta" for p in bb.trainable().parameters())
        cond = bb.encode(["a red circle", "two blue squares"], guidance=True)
        assert cond.embeds.device.type == "meta" and cond.uncond_embeds.device.type == "meta"
        x = bb.init_noise(torch.tensor([1, 2]))  # drawn on the CPU generator of each seed ...
        assert x.device.type == "cpu"
        x = x.to(bb.device)                      # ... and moved
        t = bb.timesteps(4)[:1].expand(2)        # the schedule comes from the (CPU) scheduler
        assert bb.predict(x, t, cond, 2.0).device.type == "meta"
        nz = noise(bb, x, t.to(torch.float32) if bb.time_kind == "flow" else t, torch.randn(2, *bb.sample_shape))
        assert nz.x_t.device.type == "meta" and nz.target.device.type == "meta"

    traj = Trajectory(x_t=torch.zeros(2, 1, 4), x_next=torch.zeros(2, 1, 4), t=torch.zeros(2, 1), s=torch.zeros(2, 1),
                      log_prob=torch.zeros(2, 1), step_idx=torch.tensor([0]), x0=torch.zeros(2, 4),
                      seeds=torch.tensor([5, 6]), cond=Cond(embeds=torch.zeros(2, 3, 8)), guidance_scale=1.0,
                      num_steps=1, sde_steps=torch.tensor([True]))
    batch = Batch(traj=traj, rewards=torch.ones(2), adv=torch.ones(2), group_ids=torch.zeros(2, dtype=torch.long),
                  weights=torch.ones(2)).to("meta")
    assert {batch.traj.x_t.device.type, batch.traj.cond.embeds.device.type, batch.adv.device.type,
            batch.weights.device.type} == {"meta"}
    assert batch.traj.seeds.device.type == "cpu" and batch.traj.step_idx.device.type == "cpu"
    sub = batch.index(torch.tensor([1]))
    assert torch.equal(sub.traj.seeds, torch.tensor([6])) and sub.traj.x_t.shape == (1, 1, 4)
    assert sub.traj.x_t.device.type == "meta" and sub.adv.device.type == "meta"
