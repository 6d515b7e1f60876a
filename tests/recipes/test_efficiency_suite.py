"""The sample-efficiency suite (``benchmarks/efficiency.yaml``): every row is a valid config whose algorithm,
kernel and reward fit, and trains two iterations end to end on the tiny flow model (the benchmark itself runs
for an hour a row; a row that cannot start must fail here, not after the previous rows' hours)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark
from vgrl.config import load_config
from vgrl.training.loop import train

ROOT = Path(__file__).resolve().parents[2]
# The shipped model replaced by the tiny one, and a run small enough for CI; everything else is the row's.
SMALL = ["backbone={name: flow, tiny: true, resolution: 32}", "sampling.num_steps=3", "train.iterations=2",
         "train.max_minutes=null", "train.checkpoint_every=1", "eval.per_category=1", "eval.every=null",
         "log.progress=false", "log.tensorboard=false", "log.grid_every=null"]


_bench = load_benchmark("sample_efficiency")
_base, ROWS = _bench.read_suite(_bench.SUITE)
BASE = str(ROOT / _base)


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
    table = _bench.milestones(tmp_path / name)
    assert table["iterations"] == 2 and table["images"] == 32
    assert table["before"] == summary["heldout_accuracy_before"]


def test_suite_file_errors_name_the_row(tmp_path):
    bad = tmp_path / "suite.yaml"
    bad.write_text("base: configs/quickstart.yaml\nrows: {nft: {overrides: [], every: 3}}\n")
    with pytest.raises(SystemExit, match="row 'nft': valid keys are 'overrides' and 'eval_every'"):
        _bench.read_suite(bad)


def test_a_longer_budget_continues_the_finished_run(tmp_path):
    """``--minutes`` larger than a finished row's budget resumes it from its final checkpoint: the iterations
    go on from where they stopped (none repeated), the training clock accumulates, and a budget already met
    trains nothing."""
    bench = _bench
    small = [o for o in SMALL if not o.startswith(("train.iterations", "train.max_minutes", "eval.every"))]
    row = {"overrides": ROWS["nft"]["overrides"], "eval_every": 1000}
    run_dir = bench.run_one("nft", BASE, row, tmp_path, 0.02, 1, [*small, "batch_size=16"])
    first = json.loads((run_dir / "summary.json").read_text())
    assert first["wall_seconds"] >= 1.2 and first["iterations"] >= 1
    bench.run_one("nft", BASE, row, tmp_path, 0.05, 1, [*small, "batch_size=16"])
    second = json.loads((run_dir / "summary.json").read_text())
    assert second["wall_seconds"] >= 3.0 and second["iterations"] > first["iterations"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["kind"] == "train"] == list(range(1, second["iterations"] + 1))
    assert second["heldout_accuracy_before"] == first["heldout_accuracy_before"]
    mtime = (run_dir / "summary.json").stat().st_mtime_ns
    bench.run_one("nft", BASE, row, tmp_path, 0.05, 1, [*small, "batch_size=16"])
    assert (run_dir / "summary.json").stat().st_mtime_ns == mtime
