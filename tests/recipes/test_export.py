"""``vgrl export``: a training checkpoint as a pipeline directory, the same model the trainer exports at the end."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.recipes.test_train import config
from vgrl.training.checkpoint import CheckpointError
from vgrl.cli import main
from vgrl.training.export import export_checkpoint, exported_weights
from vgrl.training.loop import train


def weights(pipeline) -> dict[str, torch.Tensor]:
    files = sorted((pipeline / "transformer").glob("*.safetensors"))
    assert files, pipeline
    return {k: v for f in files for k, v in load_file(str(f)).items()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    cfg = config(tmp, train={"iterations": 3, "ema_decay": 0.5, "checkpoint_every": 1},
                 eval={"before": False, "every": None})
    train(cfg, tmp / "run")
    return tmp / "run"


def test_newest_checkpoint_exports_the_final_pipeline_bitwise(run_dir, tmp_path):
    out = export_checkpoint(run_dir, tmp_path / "newest")  # a run folder: its newest checkpoint (step 3)
    final, exported = weights(run_dir / "final" / "pipeline"), weights(out)
    assert set(final) == set(exported)
    assert all(torch.equal(final[k], exported[k]) for k in final)


def test_export_builds_the_model_only(run_dir, tmp_path, monkeypatch):
    """No process group, reward, optimiser or evaluator: exporting never builds a training run."""
    import vgrl.training.build
    import vgrl.training.distributed

    def refuse(*args, **kwargs):
        raise AssertionError("export built a training run")

    monkeypatch.setattr(vgrl.training.build, "build", refuse)
    monkeypatch.setattr(vgrl.training.distributed, "init", refuse)
    out = export_checkpoint(run_dir, tmp_path / "newest")
    assert json.loads((out / "vgrl.json").read_text())["iterations"] == 3


def test_earlier_checkpoint_and_raw_weights_are_other_models(run_dir, tmp_path):
    ckpts = run_dir / "checkpoints"
    ema_2 = weights(export_checkpoint(ckpts / "step-000002", tmp_path / "ema2"))
    raw_2 = weights(export_checkpoint(ckpts / "step-000002", tmp_path / "raw2", weights="raw"))
    raw_3 = weights(export_checkpoint(ckpts / "step-000003", tmp_path / "raw3", weights="raw"))
    final = weights(run_dir / "final" / "pipeline")
    def moved(a, b):
        return max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved(ema_2, final) > 0 and moved(raw_2, ema_2) > 0 and moved(raw_3, final) > 0 and moved(raw_2, raw_3) > 0


def test_cli_exports_and_names_the_bad_path(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir / "checkpoints" / "step-000002"), "--out", str(tmp_path / "two")]) == 0
    assert "step-000002" in (tmp_path / "two" / "vgrl.json").read_text()
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "neither a complete checkpoint" in err
    # a checkpoint the run no longer keeps (keep_checkpoints): the error lists the ones it has
    assert main(["export", str(run_dir / "checkpoints" / "step-000001"), "--out", str(tmp_path / "one")]) == 2
    assert "beside it: step-000002, step-000003" in capsys.readouterr().err
    assert not (tmp_path / "none").exists() and not (tmp_path / "one").exists()


def test_ema_of_a_run_without_ema_is_refused(tmp_path):
    cfg = config(tmp_path, train={"iterations": 1, "checkpoint_every": 1}, eval={"before": False, "every": None})
    train(cfg, tmp_path / "run")
    with pytest.raises(CheckpointError, match="without an EMA"):
        export_checkpoint(tmp_path / "run", tmp_path / "out", weights="ema")
    assert not (tmp_path / "out").exists()
    raw = export_checkpoint(tmp_path / "run", tmp_path / "raw", weights="raw")
    auto = export_checkpoint(tmp_path / "run", tmp_path / "auto")  # the default: EMA if kept, else the raw weights
    assert exported_weights(auto) == "raw"
    a, b = weights(raw), weights(auto)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_of_a_checkpoint_is_the_eval_of_its_export(run_dir, tmp_path):
    from vgrl.cli import main

    ckpt = str(run_dir / "checkpoints" / "step-000002")
    kw = ["--world", "shapes", "--split", "heldout", "--samples-per-category", "2", "--steps", "3", "--guidance", "1"]
    assert main(["eval", "--model", ckpt, "--out", str(tmp_path / "a"), *kw]) == 0
    exported = str(export_checkpoint(ckpt, tmp_path / "p"))
    assert main(["eval", "--model", exported, "--out", str(tmp_path / "b"), *kw]) == 0
    direct, again = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("a", "b"))
    assert {k: v for k, v in direct.items() if k != "model"} == {k: v for k, v in again.items() if k != "model"}
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["model"] == ckpt
