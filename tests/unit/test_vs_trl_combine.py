"""``benchmarks/vs_trl.py --combine``: runs made side by side by separate invocations are merged into one table only
when they were trained with the same settings; the sample-efficiency verdict is read from the merged curves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark

SHARED = {"model": "models/shapes-sd/pipeline", "iterations": 3, "batch_size": 32, "minibatch_size": 8,
          "num_steps": 10, "guidance": 3.0, "lr": 3e-4, "per_category": 64, "seed": 0, "smoke": False}


vs_trl = load_benchmark("vs_trl")


def _run(accuracies: list[float]) -> dict:
    curve = [{"images": 32 * i, "accuracy": a, "score": 0.5, "strict": a} for i, a in enumerate(accuracies)]
    return {"images": curve[-1]["images"], "wall_seconds": 10.0, "seconds_rollout": 4.0, "seconds_update": 6.0,
            "images_per_second": 9.6, "images_per_cpu_second": 9.0, "curve": curve}


def _invocation(directory: Path, key: str, accuracies: list[float], **settings) -> Path:
    directory.mkdir(parents=True)
    record = {"settings": {**SHARED, "eval_every": 1, "threads": 1, "only": [key], **settings}, key: _run(accuracies)}
    (directory / "results.json").write_text(json.dumps(record))
    return directory


def test_combined_table_compares_the_curves_of_both_invocations(tmp_path):
    trl = _invocation(tmp_path / "trl", "trl", [0.30, 0.31, 0.32, 0.34], threads=2)
    nft = _invocation(tmp_path / "nft", "nft", [0.30, 0.35, 0.33, 0.36])
    settings, res = vs_trl.combine([trl, nft])
    assert sorted(res) == ["nft", "trl"] and settings.threads == {"trl": 2, "nft": 1}
    text = vs_trl.table(settings, res)
    # TRL first reaches its final 0.34 at 96 images, nft at 32: 3x fewer
    assert "vgrl nft reached TRL's final accuracy 0.340 at 32 images; TRL at 96: 3.0x fewer images" in text
    assert "TRL DDPOTrainer (ddpo): 2 thread(s)" in text and "vgrl nft: 1 thread(s)" in text


def test_the_base_evaluation_never_counts_as_reaching(tmp_path):
    trl = _invocation(tmp_path / "trl", "trl", [0.30, 0.32, 0.31])
    nft = _invocation(tmp_path / "nft", "nft", [0.31, 0.30, 0.30])  # only its base evaluation is at 0.31
    text = vs_trl.table(*vs_trl.combine([trl, nft]))
    assert "vgrl nft did not reach TRL's final accuracy 0.310" in text


def test_runs_trained_differently_are_refused_naming_the_setting(tmp_path):
    trl = _invocation(tmp_path / "trl", "trl", [0.30, 0.31])
    nft = _invocation(tmp_path / "nft", "nft", [0.30, 0.31], iterations=4, lr=1e-4)
    with pytest.raises(SystemExit, match=r"nft/results.json differs .* in iterations \(4 vs 3\), lr"):
        vs_trl.combine([trl, nft])


def test_a_run_in_two_invocations_is_refused(tmp_path):
    first = _invocation(tmp_path / "a", "nft", [0.30, 0.31])
    second = _invocation(tmp_path / "b", "nft", [0.30, 0.32])
    with pytest.raises(SystemExit, match="run 'nft' is in more than one"):
        vs_trl.combine([first, second])


def test_an_unfinished_invocation_is_named(tmp_path):
    trl = _invocation(tmp_path / "trl", "trl", [0.30, 0.31])
    (tmp_path / "nft").mkdir()
    with pytest.raises(SystemExit, match=r"nft/results.json does not exist"):
        vs_trl.combine([trl, tmp_path / "nft"])


def test_combine_writes_the_table_and_never_overwrites(tmp_path, monkeypatch, capsys):
    trl = _invocation(tmp_path / "trl", "trl", [0.30, 0.34])
    nft = _invocation(tmp_path / "nft", "nft", [0.30, 0.35])
    out = tmp_path / "both"
    monkeypatch.setattr(sys, "argv", ["vs_trl.py", "--combine", str(trl), str(nft), "--out", str(out)])
    vs_trl.main()
    written = (out / "table.md").read_text()
    assert "at 32 images; TRL at 32: 1.0x fewer images" in written
    assert json.loads((out / "results.json").read_text())["combined"] == [str(trl), str(nft)]
    with pytest.raises(SystemExit, match="is not empty"):
        vs_trl.main()
    assert (out / "table.md").read_text() == written
