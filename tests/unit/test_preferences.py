"""Preference datasets: every bad-record kind is rejected with a message naming the record, a round trip
loses nothing, and ``vgrl pairs`` builds a valid dataset from a tiny run's saved rollouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from vgrl.cli import main
from vgrl.data.preferences import PreferenceDataError, PreferenceDataset, write_index


def png(path, seed, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def dataset(tmp_path, n=3):
    """``n`` good pairs (distinct random images) with every optional field; returns the rows."""
    rows = []
    for i in range(n):
        png(tmp_path / "images" / f"{i}a.png", 2 * i)
        png(tmp_path / "images" / f"{i}b.png", 2 * i + 1)
        rows.append({"id": f"p{i}", "prompt": f"prompt {i} \u00e9", "chosen": f"images/{i}a.png",
                     "rejected": f"images/{i}b.png", "metadata": {"category": "colors", "k": [i, None]},
                     "chosen_score": 1.0, "rejected_score": 0.5 - i, "annotator": {"name": "x", "votes": 3}})
    write_index(tmp_path / "pairs.jsonl", rows)
    return rows


def test_round_trip_loses_nothing(tmp_path):
    rows = dataset(tmp_path / "a")
    with open(tmp_path / "a" / "pairs.jsonl", "a") as f:
        f.write("\n")  # blank lines are skipped
    data = PreferenceDataset.load(tmp_path / "a")  # a directory holding pairs.jsonl
    assert [r.raw for r in data.records] == rows and data.sizes == [(8, 8)] * 3
    assert data.records[2].margin == pytest.approx(2.5) and data.records[0].metadata["k"] == [0, None]
    index = data.save(tmp_path / "b")
    again = PreferenceDataset.load(index)
    assert [r.raw for r in again.records] == rows
    for r in rows:
        for key in ("chosen", "rejected"):
            assert (tmp_path / "b" / r[key]).read_bytes() == (tmp_path / "a" / r[key]).read_bytes()
    chosen, rejected = again.images([0, 2])
    want = np.asarray(Image.open(tmp_path / "a" / "images" / "2b.png"))
    assert chosen.shape == (2, 3, 8, 8) and np.array_equal((rejected[1].permute(1, 2, 0) * 255).round().byte(), want)


BAD = {
    "missing image": (lambda rows, root: rows[1].update(chosen="images/nope.png"),
                      r"line 2 \(id 'p1'\): chosen image 'images/nope.png' not found"),
    "corrupt image": (lambda rows, root: (root / "images" / "1b.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png"),
                      r"line 2 \(id 'p1'\): rejected image 'images/1b.png' is not a readable image"),
    "truncated image": (lambda rows, root: (root / "images" / "0a.png").write_bytes(
                            (root / "images" / "0a.png").read_bytes()[:60]),
                        r"line 1 \(id 'p0'\): chosen image 'images/0a.png' is not a readable image"),
    "unequal sizes": (lambda rows, root: png(root / "images" / "2b.png", 9, size=16),
                      r"line 3 \(id 'p2'\): unequal image sizes: chosen is 8x8, rejected is 16x16"),
    "empty prompt": (lambda rows, root: rows[0].update(prompt="  "), r"line 1 \(id 'p0'\): empty prompt"),
    "duplicate pair": (lambda rows, root: rows.append({**rows[0], "id": "copy"}),
                       r"line 4 \(id 'copy'\): duplicate pair: the same prompt, chosen and rejected images as line 1"),
    "duplicate content": (lambda rows, root: [(root / "images" / "c.png").write_bytes(
                              (root / "images" / "0a.png").read_bytes()),
                              rows.append({**rows[0], "id": "p9", "chosen": "images/c.png"})],
                          r"line 4 \(id 'p9'\): duplicate pair"),
    "duplicate id": (lambda rows, root: rows[2].update(id="p0"), r"line 3 \(id 'p0'\): id 'p0' already used on line 1"),
    "missing field": (lambda rows, root: rows[1].pop("rejected"),
                      r"line 2 \(id 'p1'\): missing required field 'rejected'"),
    "absolute path": (lambda rows, root: rows[1].update(chosen=str(root / "images" / "1a.png")),
                      r"line 2 \(id 'p1'\): chosen: .* must be relative to the index's directory"),
    "same file": (lambda rows, root: rows[1].update(rejected="images/1a.png"),
                  r"line 2 \(id 'p1'\): chosen and rejected are the same file"),
    "bad score": (lambda rows, root: rows[0].update(rejected_score="high"),
                  r"line 1 \(id 'p0'\): rejected_score must be a finite number or null"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_each_bad_record_kind_is_rejected_naming_the_record(tmp_path, kind):
    rows = dataset(tmp_path)
    spoil, message = BAD[kind]
    spoil(rows, tmp_path)
    write_index(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(PreferenceDataError, match=message) as info:
        PreferenceDataset.load(tmp_path / "pairs.jsonl")
    assert len(info.value.problems) == 1, info.value.problems  # only the spoiled record


def test_invalid_json_and_every_problem_reported_at_once(tmp_path):
    rows = dataset(tmp_path)
    rows[0]["prompt"] = ""
    lines = [json.dumps(r) for r in rows] + ["{not json", "[1, 2]"]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(PreferenceDataError) as info:
        PreferenceDataset.load(tmp_path / "pairs.jsonl")
    problems = info.value.problems
    assert problems[0] == "line 1 (id 'p0'): empty prompt"
    assert problems[1].startswith("line 4: not valid JSON")
    assert problems[2] == "line 5: expected a JSON object, got list"
    assert str(info.value).startswith(f"{tmp_path / 'pairs.jsonl'}: 3 bad record(s):")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PreferenceDataError, match="no records"):
        PreferenceDataset.load(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="no preference index"):
        PreferenceDataset.load(tmp_path / "images")


def test_vgrl_pairs_from_a_tiny_run_with_saved_rollouts(tmp_path, capsys):
    from vgrl.config import load_config
    from vgrl.trainer import train

    cfg = {"seed": 0, "backbone": {"name": "flow", "tiny": True, "resolution": 32}, "kernel": {"name": "ode"},
           "sampling": {"num_steps": 2, "plan": {"kind": "ode"}}, "data": {"world": "shapes", "split": "train"},
           "batch_size": 6, "group_size": 3, "reward": {"name": "jpeg"}, "algorithm": {"name": "rwr"},
           "train": {"iterations": 2, "lr": 1e-3, "checkpoint_every": 2},
           "eval": {"before": False, "every": None, "per_category": 1, "batch_size": 8},
           "log": {"grid_every": None, "progress": False, "tensorboard": False, "save_rollouts": True}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    train(load_config(tmp_path / "cfg.yaml", []), tmp_path / "run")
    saved = tmp_path / "run" / "rollouts" / "iter_00002"
    samples = [json.loads(x) for x in (saved / "index.jsonl").read_text().splitlines()]
    assert [s["group"] for s in samples] == [0, 0, 0, 1, 1, 1] and len(set(s["seed"] for s in samples)) == 6
    assert samples[0]["metadata"]["category"] and samples[0]["prompt"] == samples[2]["prompt"]
    assert Image.open(saved / samples[4]["image"]).size == (32, 32)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rewards = [s["reward"] for s in samples]
    assert sum(rewards) / 6 == pytest.approx([r for r in metrics if r["kind"] == "train"][1]["reward_mean"], rel=1e-6)

    capsys.readouterr()
    assert main(["pairs", "--from-run", str(tmp_path / "run"), "--out", str(tmp_path / "pairs")]) == 0
    assert capsys.readouterr().out.startswith("wrote 4 pairs to")
    data = PreferenceDataset.load(tmp_path / "pairs")
    first = data.records[2].raw  # iteration 2, group 0
    group = samples[:3]
    best, worst = max(group, key=lambda s: s["reward"]), min(group, key=lambda s: s["reward"])
    assert first["id"] == "iter_00002-group000" and first["chosen_score"] == best["reward"]
    assert first["rejected_score"] == worst["reward"] and first["source"]["chosen_seed"] == best["seed"]
    assert (tmp_path / "pairs" / first["chosen"]).read_bytes() == (saved / best["image"]).read_bytes()
    assert all(r.margin > 0 for r in data.records)

    assert main(["pairs", "--from-run", str(tmp_path / "run"), "--out", str(tmp_path / "pairs")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["pairs", "--from-run", str(tmp_path / "run"), "--out", str(tmp_path / "p2"), "--margin", "9"]) == 2
    assert "no group has a reward margin" in capsys.readouterr().err
    assert main(["pairs", "--from-run", str(tmp_path), "--out", str(tmp_path / "p3")]) == 2
    assert "log.save_rollouts=true" in capsys.readouterr().err
