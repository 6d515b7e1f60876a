"""report.html from a run folder: plots, before/after numbers, embedded grids; partial runs; ``vgrl report``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vgrl.cli import main
from vgrl.evaluation.report import write_report
from vgrl.training.tracking import Tracker

ROOT = Path(__file__).resolve().parents[2]


def _eval_row(iteration: int, images: int, colors: float, counting: float) -> dict:
    return {"kind": "eval", "iteration": iteration, "images": images, "wall_seconds": 10.0 * iteration,
            "overall_accuracy": (colors + counting) / 2, "overall_score": 0.5,
            "accuracy": {"colors": colors, "counting": counting}, "score": {"colors": 0.6, "counting": 0.4},
            "samples": 16, "eval_seconds": 3.0}


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished synthetic run: 6 iterations (one skipped), evals at 0, 3, 6, a summary and grids."""
    with Tracker(tmp_path, tensorboard=False) as tracker:
        tracker.log(_eval_row(0, 0, 0.25, 0.0))
        for it in range(1, 7):
            skipped = it == 4
            tracker.log({"kind": "train", "iteration": it, "images": 8 * it, "wall_seconds": 10.0 * it,
                         "reward_mean": 0.1 * it, "reward_std": 0.2, "loss": float("nan") if skipped else 1.0 / it,
                         "lr": 1e-4, "grad_norm": 2.0 / it, "skipped": skipped, "clipfrac": 0.05 * it,
                         # a category is logged only in the iterations that drew it
                         **({"reward_by_category/colors": 0.1 * it} if it % 2 else {"reward_by_category/counting": 0.5})})
            if skipped:
                tracker.log({"kind": "skip", "iteration": it, "reason": "all rewards equal", "prompt_ids": [3, 7]})
            if it % 3 == 0:
                tracker.log(_eval_row(it, 8 * it, 0.25 + 0.1 * it, 0.05 * it))
        for name in ("eval_before", "eval_after", "train_2", "train_10"):
            tracker.image(name, torch.rand(4, 3, 8, 8), 0)
    summary = {"heldout_accuracy_before": 0.125, "heldout_accuracy_after": 0.5, "images_generated": 48,
               "wall_seconds": 600.0, "eval_seconds": 90.0, "iterations": 6, "algorithm": "flow_grpo",
               "config": {"seed": 0, "algorithm": {"name": "flow_grpo"}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return tmp_path


def test_report_of_a_finished_run(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    html = path.read_text()
    for title in ("training reward (batch mean)", "held-out accuracy", "loss", "grad norm (before clipping)",
                  "clipfrac", "lr"):
        assert f">{title}</text>" in html, title
    assert html.count("<svg") == 7  # reward, loss, grad norm, reward per category, accuracy, clipfrac, lr
    assert ">training reward per prompt category (mean of its last 10 logged values)</text>" in html
    assert "reward_by_category" not in html  # one plot with a series per category, not one plot per key
    assert ">overall<" in html and ">colors<" in html and ">counting<" in html  # accuracy series
    assert "12.5% -&gt; 50.0%" in html and "+37.5 points" in html
    assert "<td>10.0</td>" in html and "<td>1.5</td>" in html  # training and eval minutes
    assert "<td>flow_grpo</td>" in html and "&quot;seed&quot;: 0" in html  # extra summary field and config
    assert "Missing" not in html
    assert "all rewards equal" in html and "<td>3, 7</td>" in html
    images = html.count("data:image/png;base64,")
    assert images == 3 and "latest training samples (train_10.png)" in html
    start = html.index("data:image/png;base64,") + len("data:image/png;base64,")
    embedded = base64.b64decode(html[start:html.index("'", start)])
    assert embedded == (run_dir / "grids" / "eval_before.png").read_bytes()


def test_report_of_a_run_that_crashed_early(tmp_path):
    with Tracker(tmp_path, tensorboard=False) as tracker:
        tracker.log({"kind": "train", "iteration": 1, "images": 8, "wall_seconds": 30.0, "reward_mean": 0.1,
                     "reward_std": 0.2, "loss": 0.5, "lr": 1e-4, "grad_norm": 1.0, "skipped": False})
    html = write_report(tmp_path).read_text()
    assert "summary.json: the run did not finish" in html and "no summary.json" in html
    assert "no held-out evaluation logged" in html and "no grids/eval_before.png" in html
    assert "<td>0.5</td>" in html  # training minutes from the last row
    assert html.count("<svg") == 4  # reward, loss, grad norm, lr: one point each
    (tmp_path / "metrics.jsonl").write_text("")
    html = write_report(tmp_path).read_text()
    assert "0 rows in metrics.jsonl" in html and "no training reward logged" in html


def test_cli_report(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    missing = tmp_path / "nope"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {missing / 'metrics.jsonl'} not found")


def test_report_does_not_import_torch():
    code = ("import sys, vgrl.evaluation.report; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_running_mean_of_a_category_series():
    from vgrl.evaluation.report import _running_mean

    assert _running_mean([(8, 1.0), (24, 3.0), (40, 5.0)], 2) == [(8, 1.0), (24, 2.0), (40, 4.0)]
    assert _running_mean([], 10) == []
