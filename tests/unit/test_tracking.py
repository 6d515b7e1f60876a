"""Image grids, SVG plots and the Tracker: metrics.jsonl rows, tensorboard scalars, resume truncation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vgrl.evaluation.report import read_metrics
from vgrl.media import image_grid, save_grid, svg_line_plot
from vgrl.training.tracking import Tracker


def test_grid_places_each_image_in_its_cell(tmp_path):
    images = torch.zeros(5, 3, 4, 6)
    images[3, 0] = 1.0  # fourth image pure red
    grid = np.asarray(image_grid(images, nrow=2, pad=1))
    assert grid.shape == (3 * 5 + 1, 2 * 7 + 1, 3)
    r, c = divmod(3, 2)
    cell = grid[1 + r * 5: 1 + r * 5 + 4, 1 + c * 7: 1 + c * 7 + 6]
    assert (cell == [255, 0, 0]).all()
    path = save_grid(images, tmp_path / "a" / "g.png", nrow=2, scale=2)
    assert Image.open(path).size == (2 * (2 * 8 + 2), 2 * (3 * 6 + 2))  # pad 2, scale 2


def test_grid_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        image_grid(torch.zeros(2, 1, 4, 4))


def test_grid_frames_each_sample_by_its_verdict():
    from vgrl.media import FAIL_COLOUR, PASS_COLOUR

    images = torch.full((2, 3, 4, 4), 0.5)
    grid = np.asarray(image_grid(images, nrow=2, pad=1, passed=[True, False]))  # tiles at columns 2-5 and 8-11
    assert grid.shape == (8, 14, 3) and tuple(grid[0, 0]) == (255, 255, 255)  # a white margin outside the rings
    assert all(tuple(grid[1, c]) == PASS_COLOUR for c in range(1, 7)) and tuple(grid[4, 6]) == PASS_COLOUR
    assert all(tuple(grid[6, c]) == FAIL_COLOUR for c in range(7, 13)) and tuple(grid[4, 7]) == FAIL_COLOUR
    assert (grid[2:6, 2:6] == 128).all() and (grid[2:6, 8:12] == 128).all()  # the pixels themselves untouched
    video = torch.full((2, 3, 3, 4, 4), 0.5)  # a strip per sample: every frame of sample 1 in red
    strip = np.asarray(image_grid(video, pad=1, layout="video", passed=[True, False]))
    assert all(tuple(strip[7, 1 + 6 * k]) == FAIL_COLOUR for k in range(3)) and tuple(strip[1, 1]) == PASS_COLOUR
    with pytest.raises(ValueError, match="3 verdicts for 2 samples"):
        image_grid(images, passed=[True, True, False])


def test_captioned_grid_is_listed_in_the_report(tmp_path):
    from vgrl.evaluation.report import write_report

    with Tracker(tmp_path, tensorboard=False) as tracker:
        tracker.log({"kind": "train", "iteration": 1, "images": 2, "wall_seconds": 1.0, "reward_mean": 0.5})
        tracker.image("eval_after", torch.rand(2, 3, 4, 4), 1, captions=[("a red <circle>", True), ("a cross", False)])
    assert json.loads((tmp_path / "grids" / "eval_after.json").read_text()) == [
        {"prompt": "a red <circle>", "passed": True}, {"prompt": "a cross", "passed": False}]
    html = write_report(tmp_path).read_text()
    assert "1 of 2 passed" in html and "&#10003; a red &lt;circle&gt;</li>" in html and "&#10007; a cross</li>" in html


def test_svg_plot_has_one_line_per_series():
    svg = svg_line_plot({"a": [(0, 1.0), (1, 0.5)], "b": [(0, 2.0), (1, 3.0)]}, title="t", log_y=True)
    assert svg.startswith("<svg") and svg.count('id="series-') == 2 and ">a</text>" in svg and ">b</text>" in svg
    assert ">t</text>" in svg  # the title stays text
    marks = [block.count("<use") for block in re.findall(r'<g id="series-\d">(.*?)</g>', svg, re.S)]
    assert marks == [2, 2]  # short series: every point marked
    one = svg_line_plot({"a <b>": [(0, 1.0)], "c": [(0, 2.0)]})
    assert "a &lt;b&gt;" in one and one.count('id="series-') == 2  # names escaped; one point still draws
    with pytest.raises(ValueError):
        svg_line_plot({"a": []})


def _row(kind: str, iteration: int, **values) -> dict:
    return {"kind": kind, "iteration": iteration, **values}


def _scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_rows_round_trip(tmp_path):
    rows = [_row("train", 1, images=8, reward_mean=0.25, skipped=False, loss=float("nan")),
            _row("eval", 1, accuracy={"colors": 0.5, "counting": 0.0}, samples=12),
            _row("skip", 2, reason="all rewards equal", prompt_ids=[3, 7])]
    with Tracker(tmp_path, tensorboard=False) as tracker:
        for row in rows:
            tracker.log(row)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["train", "eval", "skip"]
    got = read_metrics(tmp_path / "metrics.jsonl")
    assert np.isnan(got[0].pop("loss")) and np.isnan(rows[0].pop("loss"))
    assert got == rows
    assert not (tmp_path / "tensorboard").exists()


def test_log_rejects_rows_it_cannot_store(tmp_path):
    with Tracker(tmp_path, tensorboard=False) as tracker:
        with pytest.raises(ValueError, match="'kind' and an int 'iteration'"):
            tracker.log({"kind": "train", "loss": 1.0})
        with pytest.raises(TypeError, match=r"'accuracy/colors': Tensor is not a number"):
            tracker.log(_row("eval", 0, accuracy={"colors": torch.tensor(0.5)}))
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_tensorboard_scalars_and_grids(tmp_path):
    with Tracker(tmp_path) as tracker:
        tracker.log(_row("train", 1, images=8, reward_mean=0.25, skipped=True, note="text", ids=[1, 2]))
        tracker.log(_row("train", 2, images=16, reward_mean=0.5, skipped=False))
        tracker.log(_row("eval", 2, overall_accuracy=0.4, accuracy={"colors": 0.75}))
        path = tracker.image("eval_after", torch.rand(4, 3, 8, 8), 2, nrow=2)
    assert path == tmp_path / "grids" / "eval_after.png" and Image.open(path).size == (3 * 22, 3 * 22)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"train/images", "train/reward_mean", "train/skipped",
                                          "eval/overall_accuracy", "eval/accuracy/colors"}
    assert _scalars(tmp_path, "train/reward_mean") == [(1, 0.25), (2, 0.5)]
    assert _scalars(tmp_path, "eval/accuracy/colors") == [(2, 0.75)]
    assert acc.Tags()["images"] == ["eval_after"]


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    with Tracker(tmp_path) as tracker:
        for it in range(5):
            tracker.log(_row("train", it, reward_mean=float(it)))
            if it % 2 == 0:
                tracker.log(_row("eval", it, overall_accuracy=0.1 * it))
    before = read_metrics(tmp_path / "metrics.jsonl")
    with Tracker(tmp_path, resume_iteration=2) as tracker:
        assert read_metrics(tmp_path / "metrics.jsonl") == [r for r in before if r["iteration"] <= 2]
        for it in (3, 4):
            tracker.log(_row("train", it, reward_mean=10.0 + it))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["iteration"]) for r in rows] == [
        ("train", 0), ("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("train", 4)]
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["metrics.jsonl"]  # no temp file left
    # tensorboard purges the re-done steps: one value per step, the resumed run's
    assert _scalars(tmp_path, "train/reward_mean") == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]


def test_read_metrics_drops_only_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "iteration": 1}\n{"kind": "tra')
    assert read_metrics(path) == [{"kind": "train", "iteration": 1}]
    path.write_text('{"kind": "train", "iteration": 1}\n{"kind": "tra\n{"kind": "eval", "iteration": 1}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2: not a JSON row"):
        read_metrics(path)


def test_progress_bar_follows_whichever_budget_stops_the_run():
    from pathlib import Path

    from vgrl.config import load_config
    from vgrl.training.state import Counters
    from vgrl.training.tracking import Progress

    quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    timed = Progress(load_config(quickstart, ["train.iterations=1000", "train.max_minutes=10"]).train, Counters(),
                     False)
    assert timed._done(10, 60.0) == 100.0        # 1 of 10 minutes, though only 1% of the iterations
    assert timed._done(900, 30.0) == 900.0       # the iteration cap binds first
    assert timed._done(10, 900.0) == 1000.0      # past the budget: full, never more
    assert timed._count(5) == "5/1000 it (<= 10 min)"
    counted = Progress(load_config(quickstart, ["train.iterations=20", "train.max_minutes=null"]).train, Counters(),
                       False)
    assert counted._done(10, 6000.0) == 500.0 and counted._count(10) == "10/20 it"
