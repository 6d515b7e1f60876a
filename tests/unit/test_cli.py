"""The ``vgrl`` command line: validate exits 0 / 2 with readable output, help works, and the validate
path never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vgrl import __version__
from vgrl.cli import main

ROOT = Path(__file__).resolve().parents[2]


def vgrl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "vgrl", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_validate_sample_config_subprocess():
    result = vgrl("validate", "configs/sample.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: configs/sample.yaml")
    assert "flow_sde (noise_level=0.7, reduction=mean)" in result.stdout


def test_validate_bad_config_subprocess(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "sample.yaml").read_text().replace("noise_level", "nosie_level"))
    result = vgrl("validate", str(bad), "seed=-1")
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {bad}"
    assert lines[1].strip().startswith("seed: input should be greater than or equal to 0")
    assert lines[2].strip().startswith("kernel.nosie_level: unknown option 'nosie_level'")


def test_import_does_not_pull_torch():
    code = ("import sys, vgrl.config, vgrl.cli; "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["validate", "--help"], ["sample", "--help"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage: vgrl" in capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"vgrl {__version__}"


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["validate"], ["validate", "configs/sample.yaml", "--bogus"]])
def test_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: vgrl" in capsys.readouterr().err


def test_validate_in_process_with_overrides(capsys):
    config = str(ROOT / "configs" / "sample.yaml")
    assert main(["validate", config, "sampling.plan.kind=window", "sampling.plan.window_start=3"]) == 0
    out = capsys.readouterr().out
    assert "plan window (start 3, size 2)" in out and "SDE steps 3-4" in out
    assert main(["validate", config, "--print-config", "kernel.noise_level=0.5"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["kernel"] == {"name": "flow_sde", "noise_level": 0.5, "reduction": "mean"}


def test_validate_shows_mixed_precision_only_when_used(capsys):
    config = str(ROOT / "configs" / "bench" / "nft.yaml")
    assert main(["validate", config, "deterministic=false", "sampling.mixed_precision=bf16"]) == 0
    assert "  precision training fp32, rollouts bf16, evaluation fp32\n" in capsys.readouterr().out
    assert main(["validate", config, "deterministic=false", "train.mixed_precision=bf16",
                 "eval.mixed_precision=no"]) == 0
    assert "  precision training bf16, rollouts bf16, evaluation fp32\n" in capsys.readouterr().out
    assert main(["validate", config]) == 0
    assert "precision" not in capsys.readouterr().out


def test_validate_errors_in_process(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'missing.yaml'}") and "no such file" in err
    assert main(["validate", str(ROOT / "configs" / "sample.yaml"), "kernel={name: ddim}"]) == 2
    assert "kernel.name: 'ddim' cannot step a 'flow'-prediction backbone" in capsys.readouterr().err


def test_sample_calls_run_lazily(monkeypatch, tmp_path):
    import types

    calls = []
    fake = types.ModuleType("vgrl.sample")
    fake.run = lambda cfg, out_dir: calls.append((cfg, str(out_dir)))
    monkeypatch.setitem(sys.modules, "vgrl.sample", fake)
    config = str(ROOT / "configs" / "sample.yaml")
    assert main(["sample", config, "seed=3", "--out", str(tmp_path)]) == 0
    assert main(["sample", config]) == 0
    assert main(["sample", config, "run_dir=null"]) == 0
    assert main(["sample", config, "seed=-1"]) == 2
    assert [(cfg.seed, out) for cfg, out in calls] == [(3, str(tmp_path)), (0, "runs/sample"), (0, "runs/sample")]
