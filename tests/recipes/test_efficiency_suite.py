"""The sample-efficiency suite (``benchmarks/efficiency.yaml``): every row is a valid config whose algorithm,
kernel and reward fit, and trains two iterations end to end on the tiny flow model (the benchmark itself runs
for an hour a row; a row that cannot start must fail here, not after the previous rows' hours)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from vgrl.config import load_config
from vgrl.trainer import train

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "efficiency.yaml"
ROWS = yaml.safe_load(SUITE.read_text())["rows"]
BASE = str(ROOT / yaml.safe_load(SUITE.read_text())["base"])
# The shipped model replaced by the tiny one, and a run small enough for CI; everything else is the row's.
SMALL = ["backbone={name: flow, tiny: true, resolution: 32}", "sampling.num_steps=3", "train.iterations=2",
         "train.max_minutes=null", "train.checkpoint_every=1", "eval.per_category=1", "eval.every=null",
         "log.progress=false", "log.tensorboard=false", "log.grid_every=null"]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("sample_efficiency", ROOT / "benchmarks" / "sample_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_suite_lists_every_online_algorithm():
    names = {load_config(BASE, row["overrides"]).algorithm.name for row in ROWS.values()}
    assert names == {"nft", "rwr", "raft", "diffusion_dpo", "flow_grpo", "ddpo", "dpok", "reward_backprop"}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_suite_row_trains(tmp_path, name):
    row = ROWS[name]
    cfg = load_config(BASE, [*row["overrides"], *SMALL, "batch_size=16"])
    summary = train(cfg, tmp_path / name)
    assert summary["iterations"] == 2 and summary["images_generated"] == 32
    assert summary["heldout_accuracy_before"] is not None and summary["heldout_accuracy_after"] is not None
    table = _benchmark_module().milestones(tmp_path / name)
    assert table["iterations"] == 2 and table["images"] == 32
    assert table["before"] == summary["heldout_accuracy_before"]


def test_suite_file_errors_name_the_row(tmp_path):
    bad = tmp_path / "suite.yaml"
    bad.write_text("base: configs/quickstart.yaml\nrows: {nft: {overrides: [], every: 3}}\n")
    with pytest.raises(SystemExit, match="row 'nft': valid keys are 'overrides' and 'eval_every'"):
        _benchmark_module().read_suite(bad)
