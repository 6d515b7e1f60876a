"""Runs that must match do match: resume after SIGKILL == uninterrupted (bitwise), batch 8 x accumulation 1
== batch 2 x accumulation 4, one process == two processes (torchrun, gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vgrl.training import checkpoint

BASE = {
    "seed": 3,
    "backbone": {"name": "flow", "tiny": True, "resolution": 32},
    "kernel": {"name": "flow_sde", "noise_level": 0.7},
    "sampling": {"num_steps": 4, "plan": {"kind": "window", "window_start": 1, "window_size": 2}},
    "data": {"world": "shapes", "split": "train"},
    "batch_size": 8, "group_size": 4,
    "reward": {"name": "jpeg"},
    "algorithm": {"name": "flow_grpo", "beta": 0.01, "clip_range": 0.2},
    "train": {"iterations": 1, "lr": 1e-3, "inner_epochs": 2, "checkpoint_every": 1, "threads": 1},
    "eval": {"before": False, "every": None, "per_category": 1},
    "log": {"grid_every": None, "progress": False, "tensorboard": False},
}


def _write(tmp_path, name, **train):
    data = {**BASE, "train": {**BASE["train"], **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(*args, launcher=(sys.executable, "-m", "vgrl")):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([*launcher, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _weights(run_dir, iteration):
    return load_file(str(run_dir / "checkpoints" / f"step-{iteration:06d}" / "trainable.safetensors"))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_resume_after_sigkill_equals_uninterrupted_bitwise(tmp_path):
    # a decaying LR with warm-up: the schedule's state must survive the kill too
    cfg = _write(tmp_path, "resume", iterations=6, keep_checkpoints=10, lr_schedule="cosine", lr_min_ratio=0.1,
                 warmup_iterations=3)
    whole = _cli("train", cfg, "--run-dir", tmp_path / "whole")
    victim = _cli("train", cfg, "--run-dir", tmp_path / "killed")
    deadline = time.time() + 240
    while checkpoint.latest(tmp_path / "killed" / "checkpoints") is None or \
            int(checkpoint.latest(tmp_path / "killed" / "checkpoints").name[5:]) < 3:
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = int(checkpoint.latest(tmp_path / "killed" / "checkpoints").name[5:])
    assert 3 <= killed_at < 6
    _finish(_cli("train", cfg, "--run-dir", tmp_path / "killed", "--resume", "auto"))
    _finish(whole)
    a, b = _weights(tmp_path / "whole", 6), _weights(tmp_path / "killed", 6)
    assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)  # training really moved the weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt_a = checkpoint.load(tmp_path / "whole" / "checkpoints" / "step-000006").state["optimizer"]["state"]
    opt_b = checkpoint.load(tmp_path / "killed" / "checkpoints" / "step-000006").state["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)
    logged = [json.loads(r) for r in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in logged if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]  # re-done, not doubled
    whole = [json.loads(r) for r in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    whole_lrs = [r["lr"] for r in whole if r["kind"] == "train"]
    assert [r["lr"] for r in logged if r["kind"] == "train"] == whole_lrs and whole_lrs[-1] < whole_lrs[1] / 2


def test_batch_8_accum_1_equals_batch_2_accum_4(tmp_path):
    from vgrl.config import load_config
    from vgrl.training.loop import train

    one = load_config(_write(tmp_path, "a", minibatch_size=8, grad_accum=1))
    four = load_config(_write(tmp_path, "b", minibatch_size=2, grad_accum=4))
    train(one, tmp_path / "a")
    train(four, tmp_path / "b")
    a, b = _weights(tmp_path / "a", 1), _weights(tmp_path / "b", 1)
    assert any(v.abs().max() > 1e-4 for k, v in a.items() if "lora_B" in k)
    assert _max_diff(a, b) <= 1e-6


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo")
def test_one_process_equals_two_processes(tmp_path):
    cfg = _write(tmp_path, "dist", minibatch_size=8, grad_accum=1)
    _finish(_cli("train", cfg, "--run-dir", tmp_path / "one"))
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vgrl")
    _finish(_cli("train", cfg, "--run-dir", tmp_path / "two", launcher=torchrun))
    a, b = _weights(tmp_path / "one", 1), _weights(tmp_path / "two", 1)
    assert any(v.abs().max() > 1e-4 for k, v in a.items() if "lora_B" in k)
    assert _max_diff(a, b) <= 1e-6


def test_nft_lagging_sampling_policy_resumes_exactly(tmp_path):
    """theta_old (NFT's soft-updated sampling policy) is checkpointed: 2 + 2 resumed iterations == 4."""
    from vgrl.config import load_config
    from vgrl.training.loop import train

    data = {**BASE, "kernel": {"name": "ode"}, "sampling": {"num_steps": 4, "plan": {"kind": "ode"}},
            "algorithm": {"name": "nft", "old_decay_rate": 0.3, "old_decay_max": 0.5},
            "train": {**BASE["train"], "iterations": 4, "inner_epochs": 1, "minibatch_size": 4}}
    (tmp_path / "nft.yaml").write_text(yaml.safe_dump(data))
    four = load_config(tmp_path / "nft.yaml")
    train(four, tmp_path / "whole")
    train(load_config(tmp_path / "nft.yaml", ["train.iterations=2"]), tmp_path / "split")
    train(four, tmp_path / "split", resume="auto")
    a, b = _weights(tmp_path / "whole", 4), _weights(tmp_path / "split", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    old_a, old_b = (checkpoint.load(tmp_path / run / "checkpoints" / "step-000004").state["algorithm"]
                    for run in ("whole", "split"))
    assert old_a["rollouts"] == old_b["rollouts"] == 4
    assert all(torch.equal(x, y) for x, y in zip(old_a["old"], old_b["old"]))
    trained = [v for k, v in sorted(a.items()) if "lora" in k]
    assert len(old_a["old"]) == len(trained)  # theta_old lags theta: the two differ after training
    assert sum(x.double().abs().sum() for x in old_a["old"]) != sum(y.double().abs().sum() for y in trained)
    rows = [json.loads(r) for r in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [r["old_decay"] for r in rows if r["kind"] == "train"] == [0.0, 0.3, 0.5, 0.5]
