"""Preference datasets: every bad-record kind is rejected with a message naming the record, a round trip
loses nothing, and ``vgrl pairs`` builds a valid dataset from a tiny run's saved rollouts."""

from __future__ import annotations

import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
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
    from vgrl.training.loop import train

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


# ------------------------------------------------------------------------------------------- parquet


def write_parquet(path, rows, **columns):
    """``rows`` as a parquet index (columns inferred from the first row, a missing key is null); ``columns``
    adds or replaces columns with given arrow arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    for name, array in columns.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, array)
        else:
            table = table.append_column(name, array)
    pq.write_table(table, path)
    return path


def parquet_dataset(root, n=3):
    """:func:`dataset` with its index as ``pairs.parquet`` instead of ``pairs.jsonl``; returns the rows."""
    rows = dataset(root, n)
    (root / "pairs.jsonl").unlink()
    write_parquet(root / "pairs.parquet", rows)
    return rows


def test_parquet_loads_the_same_records_and_images_as_jsonl(tmp_path):
    rows = dataset(tmp_path / "j")
    shutil.copytree(tmp_path / "j" / "images", tmp_path / "p" / "images")
    write_parquet(tmp_path / "p" / "pairs.parquet", rows)
    j, p = PreferenceDataset.load(tmp_path / "j"), PreferenceDataset.load(tmp_path / "p")  # directories
    assert p.index == tmp_path / "p" / "pairs.parquet" and p.records == j.records and p.sizes == j.sizes
    assert [r.raw for r in p.records] == rows and p.records[1].name() == "row 2 (id 'p1')"
    meta = p.records[0].metadata  # a struct column -> a plain dict, its list cell -> a list with the null kept
    assert type(meta) is dict and meta == {"category": "colors", "k": [0, None]} and type(meta["k"]) is list
    assert p.records[2].raw["annotator"] == {"name": "x", "votes": 3} and p.records[2].margin == pytest.approx(2.5)
    for a, b in zip(j.images([2, 0, 1]), p.images([2, 0, 1])):
        assert torch.equal(a, b)
    # saving writes jsonl with the same records, and copies the images
    index = p.save(tmp_path / "s")
    assert index == tmp_path / "s" / "pairs.jsonl" and not (tmp_path / "s" / "pairs.parquet").exists()
    assert [json.loads(x) for x in index.read_text().splitlines()] == rows
    assert PreferenceDataset.load(tmp_path / "s").records == j.records
    # an index file named anything: parquet by its magic bytes
    shutil.copyfile(tmp_path / "p" / "pairs.parquet", tmp_path / "p" / "train.idx")
    assert PreferenceDataset.load(tmp_path / "p" / "train.idx").records == j.records


# a string in a float column cannot be written to parquet at all: "bad score" is checked with NaN below
@pytest.mark.parametrize("kind", [k for k in BAD if k != "bad score"])
def test_each_bad_parquet_row_is_rejected_naming_the_row(tmp_path, kind):
    rows = dataset(tmp_path)
    (tmp_path / "pairs.jsonl").unlink()
    spoil, message = BAD[kind]
    spoil(rows, tmp_path)
    write_parquet(tmp_path / "pairs.parquet", rows)
    with pytest.raises(PreferenceDataError, match=message.replace("line ", "row ")) as info:
        PreferenceDataset.load(tmp_path)
    assert len(info.value.problems) == 1, info.value.problems


def test_parquet_nulls_types_and_unusual_columns(tmp_path):
    import pyarrow as pa

    rows = parquet_dataset(tmp_path)
    write_parquet(tmp_path / "pairs.parquet", rows,
                  chosen_score=pa.array([None, 1.0, 1.0]),                       # null: absent, margin NaN
                  metadata=pa.array([{"a": 1}, None, {"a": 3}]),                 # null struct: no metadata
                  tags=pa.array([[("x", 1)], [], None], pa.map_(pa.string(), pa.int64())),  # map -> dict
                  lab=pa.array(["u", "v", "u"]).dictionary_encode(),            # categorical -> str
                  __index_level_0__=pa.array([7, 8, 9]))                         # pandas' unnamed index
    data = PreferenceDataset.load(tmp_path / "pairs.parquet")
    first, second = data.records[0].raw, data.records[1].raw
    assert "chosen_score" not in first and math.isnan(data.records[0].margin)
    assert "metadata" not in second and data.records[1].metadata is None and data.records[2].metadata == {"a": 3}
    assert first["tags"] == {"x": 1} and second["tags"] == {} and "tags" not in data.records[2].raw
    assert first["lab"] == "u" and "__index_level_0__" not in first
    assert set(first) == {"id", "prompt", "chosen", "rejected", "metadata", "rejected_score", "annotator", "tags",
                          "lab"}
    # a non-finite score is the same error as in jsonl
    write_parquet(tmp_path / "pairs.parquet", rows, rejected_score=pa.array([0.5, math.nan, -1.5]))
    with pytest.raises(PreferenceDataError, match=r"row 2 \(id 'p1'\): rejected_score must be a finite number"):
        PreferenceDataset.load(tmp_path)
    # columns JSON cannot hold are refused by name (a saved dataset is jsonl)
    write_parquet(tmp_path / "pairs.parquet", rows, when=pa.array([1, 2, 3], pa.timestamp("ms")),
                  blob=pa.array([b"x", b"y", b"z"]))
    with pytest.raises(PreferenceDataError) as info:
        PreferenceDataset.load(tmp_path)
    assert [p.split(",")[0] for p in info.value.problems] == ["column 'when' has type timestamp[ms]",
                                                               "column 'blob' has type binary"]
    (tmp_path / "pairs.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(PreferenceDataError, match="not a readable parquet file"):
        PreferenceDataset.load(tmp_path)


def test_a_folder_with_both_indexes_is_an_error_and_config_accepts_parquet(tmp_path):
    from vgrl.config.train import DataConfig

    rows = parquet_dataset(tmp_path / "p")
    assert DataConfig(preferences=str(tmp_path / "p")).preferences == str(tmp_path / "p")
    write_index(tmp_path / "p" / "pairs.jsonl", rows[:1])
    with pytest.raises(ValueError, match=r"holds both pairs.jsonl and pairs.parquet: which one is the dataset\?"):
        PreferenceDataset.load(tmp_path / "p")
    assert len(PreferenceDataset.load(tmp_path / "p" / "pairs.jsonl")) == 1  # the file itself is unambiguous
    assert len(PreferenceDataset.load(tmp_path / "p" / "pairs.parquet")) == 3
    with pytest.raises(FileExistsError, match="two indexes"):  # saving jsonl beside a parquet index
        PreferenceDataset.load(tmp_path / "p" / "pairs.jsonl").save(tmp_path / "p")
    with pytest.raises(FileNotFoundError, match="expected a pairs.jsonl or pairs.parquet file"):
        PreferenceDataset.load(tmp_path / "p" / "images")


def test_without_pyarrow_parquet_fails_clearly_and_jsonl_still_loads(tmp_path, monkeypatch):
    parquet_dataset(tmp_path / "p")
    dataset(tmp_path / "j")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"needs pyarrow: pip install pyarrow \(or pip install 'vgrl\[parquet\]'\)"):
        PreferenceDataset.load(tmp_path / "p")
    assert len(PreferenceDataset.load(tmp_path / "j")) == 3


def test_parquet_dataset_feeds_the_same_offline_batch(tmp_path):
    from vgrl.algorithms._pairs import offline_batch
    from vgrl.backbones.flow import FlowBackbone

    rows = []
    for i in range(2):
        png(tmp_path / "j" / "images" / f"{i}a.png", 2 * i, size=32)
        png(tmp_path / "j" / "images" / f"{i}b.png", 2 * i + 1, size=32)
        rows.append({"id": f"p{i}", "prompt": f"a red circle {i}", "chosen": f"images/{i}a.png",
                     "rejected": f"images/{i}b.png", "metadata": {"category": "colors"}, "chosen_score": 1.0,
                     "rejected_score": 0.25 * i})
    write_index(tmp_path / "j" / "pairs.jsonl", rows)
    shutil.copytree(tmp_path / "j" / "images", tmp_path / "p" / "images")
    write_parquet(tmp_path / "p" / "pairs.parquet", rows)
    bb = FlowBackbone.tiny()
    batches = [offline_batch(bb, PreferenceDataset.load(tmp_path / d), [1, 0], torch.tensor([5, 6]), 2)
               for d in ("j", "p")]
    a, b = batches
    assert torch.equal(a.traj.x0, b.traj.x0) and a.traj.x0.shape == (2, 2, *bb.sample_shape)
    assert torch.equal(a.traj.cond.embeds, b.traj.cond.embeds) and torch.equal(a.rewards, b.rewards)
    assert a.prompts == b.prompts == ["a red circle 1", "a red circle 0"] and a.rewards.tolist() == [0.75, 1.0]
    assert a.metadata == b.metadata == [{"category": "colors"}] * 2
