"""The learning-rate schedule: hand-computed factors, the budget fraction, the config refusal under
deterministic mode, and a tiny run whose logged step LRs follow the schedule over its iterations."""

from __future__ import annotations

import math

import pytest

from vgrl.config import ConfigError, validate_config
from vgrl.training.schedule import LRSchedule, budget_fraction


def test_factors_by_hand():
    cos = LRSchedule("cosine", warmup_steps=0, min_ratio=0.1)
    assert cos.decay(0.0) == 1.0 and cos.decay(1.0) == pytest.approx(0.1)
    assert cos.decay(0.5) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos.decay(0.25) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    lin = LRSchedule("linear", min_ratio=0.0)
    assert lin.decay(0.3) == pytest.approx(0.7) and lin.decay(2.0) == 0.0 and lin.decay(-1.0) == 1.0
    const = LRSchedule("constant", warmup_steps=4)
    const.progress = 0.9
    assert [const(k) for k in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]  # warm-up only
    warm_cos = LRSchedule("cosine", warmup_steps=2, min_ratio=0.0, progress=0.5)
    assert warm_cos(0) == pytest.approx(0.5 * 0.5) and warm_cos(7) == pytest.approx(0.5)


def test_bad_schedule_values_are_refused():
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'; valid: constant, cosine, linear"):
        LRSchedule("step")
    with pytest.raises(ValueError, match=r"lr_min_ratio must lie in \[0, 1\]"):
        LRSchedule("cosine", min_ratio=1.5)


def test_budget_fraction_is_the_larger_of_iterations_and_minutes():
    assert budget_fraction(10, 30.0, 100, None) == 0.1
    assert budget_fraction(10, 300.0, 100, 10.0) == 0.5     # time is further along
    assert budget_fraction(90, 60.0, 100, 10.0) == 0.9      # iterations are further along
    assert budget_fraction(200, 0.0, 100, None) == 1.0      # clamped


BASE = {"backbone": {"name": "flow", "tiny": True}, "kernel": {"name": "flow_sde"}, "prompts": ["a red circle"],
        "batch_size": 2, "group_size": 2}


def test_deterministic_mode_refuses_a_wall_clock_schedule():
    data = {**BASE, "train": {"lr_schedule": "cosine", "max_minutes": 5}}
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    (msg,) = info.value.messages
    assert msg.startswith("train.lr_schedule: 'cosine' with train.max_minutes") and "deterministic: false" in msg
    validate_config({**data, "deterministic": False})                              # the wall-clock is accepted
    validate_config({**BASE, "train": {"lr_schedule": "cosine", "iterations": 5}})  # iterations: deterministic
    with pytest.raises(ConfigError, match="train.lr_min_ratio"):
        validate_config({**BASE, "train": {"lr_schedule": "linear", "lr_min_ratio": 2}})
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        validate_config({**BASE, "train": {"lr_schedule": "step"}})


def test_logged_step_lrs_follow_the_schedule(tmp_path):
    """4 iterations x 2 optimiser steps, 1 warm-up step, cosine to 0.2 over the iterations: the steps of
    iteration i use lr * decay((i - 1) / 4) (the first step also the warm-up factor, here 1)."""
    from tests.recipes.test_train import config, rows
    from vgrl.training.loop import train

    cfg = config(tmp_path, train={"iterations": 4, "lr": 1e-3, "minibatch_size": 4, "grad_accum": 1,
                                  "checkpoint_every": 4, "lr_schedule": "cosine", "lr_min_ratio": 0.2,
                                  "warmup_iterations": 1},
                 eval={"every": None, "before": False, "per_category": 1})
    train(cfg, tmp_path / "run")
    sched = LRSchedule("cosine", min_ratio=0.2)
    logged = [r["lr"] for r in rows(tmp_path / "run", "train")]
    assert logged == pytest.approx([1e-3 * sched.decay(i / 4) for i in range(4)], rel=1e-12)
    assert logged[0] == pytest.approx(1e-3) and logged[-1] < 0.5e-3
