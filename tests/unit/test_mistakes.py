"""Every user mistake is one line: a table of plausible mistakes across the commands, each answered with exactly
one ``error:`` line on stderr, no traceback, the documented exit status (``vgrl --help``: 2 for a usage, config
or input error) and nothing written or overwritten.

The commands run in this process through ``vgrl.cli.main`` (an uncaught exception fails the test, as it
should); one runs as a real process to show that the ``vgrl`` program itself prints no traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.recipes.test_train import TINY
from vgrl.cli import EXIT_CODES, EXIT_CONFIG, build_parser, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A working folder a user might have: a config, a finished tiny run (no EMA), another config, an empty
    folder, a preference dataset, and a port some other server listens on."""
    from vgrl.reward_training import make_brightness_pairs

    w = tmp_path_factory.mktemp("mistakes")
    cfg = {**TINY, "train": {**TINY["train"], "iterations": 1},
           "eval": {"before": False, "every": None, "per_category": 1, "num_steps": 2}}
    (w / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    other = {**cfg, "algorithm": {"name": "flow_grpo", "beta": 0.5}, "seed": 3}
    (w / "other.yaml").write_text(yaml.safe_dump(other))
    cwd = os.getcwd()
    os.chdir(w)
    try:
        assert main(["train", "cfg.yaml", "--run-dir", "run"]) == 0
    finally:
        os.chdir(cwd)
    (w / "empty").mkdir()
    (w / "notes.txt").write_text("not a model\n")
    make_brightness_pairs(w / "prefs", n=6)
    (w / "taken").mkdir()
    (w / "taken" / "keep.txt").write_text("mine\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield w, s.getsockname()[1]


# (id, arguments; {port} is a port in use, every path is relative to the world folder, and what the error names)
MISTAKES = [
    # validate
    ("validate-missing-config", "validate nope.yaml", "no such file"),
    ("validate-run-folder-as-config", "validate run", "cannot read"),
    ("validate-override-without-value", "validate cfg.yaml seed", "expected KEY=VALUE"),
    ("validate-unknown-key", "validate cfg.yaml train.lrr=1e-4", "lrr"),
    ("validate-bad-value", "validate cfg.yaml batch_size=many", "batch_size"),
    ("validate-override-through-scalar", "validate cfg.yaml seed.x=1", "not a mapping"),
    ("validate-unparsable-value", "validate cfg.yaml prompts=[a", "not valid YAML"),
    ("validate-unknown-reward", "validate cfg.yaml reward.name=jpg", "jpeg"),
    ("validate-unknown-option-flag", "validate cfg.yaml --verbose", "unrecognized arguments: --verbose"),
    # train
    ("train-into-a-used-run-folder", "train cfg.yaml --run-dir run", "already holds a run"),
    ("train-resume-with-another-config", "train other.yaml --run-dir run --resume auto", "algorithm.beta"),
    ("train-resume-from-a-non-checkpoint", "train cfg.yaml --run-dir new --resume run/final", "not a complete checkpoint"),
    ("train-run-folder-as-base-model", "train cfg.yaml backbone.tiny=false backbone.path=run --run-dir new",
     "no model_index.json"),
    ("train-missing-base-model", "train cfg.yaml backbone.tiny=false backbone.path=models/none --run-dir new",
     "does not exist"),
    ("train-deterministic-kernel-for-grpo", "train cfg.yaml kernel.name=ode --run-dir new", "kernel"),
    ("train-unknown-algorithm-option", "train cfg.yaml algorithm.clip_rang=0.2 --run-dir new", "clip_rang"),
    ("train-unknown-split", "train cfg.yaml data.split=tarin --run-dir new", "data.split"),
    ("train-remote-reward-without-url", "train cfg.yaml reward.name=remote --run-dir new", "url"),
    ("train-minibatch-not-dividing", "train cfg.yaml train.minibatch_size=3 --run-dir new", "minibatch_size"),
    ("train-offline-without-pairs", "train cfg.yaml algorithm.name=diffusion_dpo algorithm.mode=offline "
                                    "kernel.name=ode sampling.plan.kind=ode --run-dir new", "preferences"),
    # eval
    ("eval-missing-model", "eval --model runs/nope", "no such file or directory"),
    ("eval-folder-that-is-no-model", "eval --model empty", "neither a diffusers pipeline"),
    ("eval-file-that-is-no-model", "eval --model notes.txt", "neither a diffusers pipeline"),
    ("eval-ema-of-a-run-without-ema", "eval --model run --weights ema", "without an EMA"),
    ("eval-unknown-weights", "eval --model run --weights best", "invalid choice"),
    ("eval-unknown-split", "eval --model run/final/pipeline --split tarin --samples-per-category 1 --steps 1",
     "unknown split"),
    ("eval-negative-model-not-a-pipeline", "eval --model run/final/pipeline --negative-model run --guidance 3",
     "--negative-model"),
    ("eval-steps-not-a-number", "eval --model run --steps ten", "invalid int value"),
    ("eval-export-only-option", "eval --model run --checkpoint x", "unrecognized arguments"),
    # export
    ("export-a-pipeline", "export run/final/pipeline --out exported", "already a diffusers pipeline"),
    ("export-missing-checkpoint", "export run/checkpoints/step-000009 --out exported", "neither a complete"),
    ("export-config-file", "export cfg.yaml --out exported", "neither a complete"),
    ("export-over-a-used-folder", "export run --out taken", "already exists"),
    ("export-ema-of-a-run-without-ema", "export run --weights ema --out exported", "without an EMA"),
    ("export-without-out", "export run", "--out"),
    # report, pairs, train-reward
    ("report-not-a-run", "report empty", "metrics.jsonl"),
    ("pairs-run-without-rollouts", "pairs --from-run run --out newpairs", "save_rollouts"),
    ("pairs-over-a-dataset", "pairs --from-run run --out prefs", "rollouts"),
    ("train-reward-missing-pairs", "train-reward --pairs data/none --out rm", "no preference index"),
    ("train-reward-run-folder-as-pairs", "train-reward --pairs run --out rm", "no preference index"),
    ("train-reward-heldout-out-of-range", "train-reward --pairs prefs --heldout 1.5 --out rm", "heldout"),
    # serve-reward, sample, pretrain
    ("serve-reward-port-in-use", "serve-reward --reward jpeg --port {port}", "--port"),
    ("serve-reward-unknown-reward", "serve-reward --reward shapes_checkr --port 0", "shapes_checker"),
    ("serve-reward-option-without-value", "serve-reward --reward jpeg --option quality --port 0", "KEY=VALUE"),
    ("serve-reward-token-env-unset", "serve-reward --reward jpeg --token-env VGRL_NO_SUCH_TOKEN", "VGRL_NO_SUCH_TOKEN"),
    ("sample-missing-config", "sample nope.yaml", "no such file"),
    ("sample-on-a-missing-gpu", "sample cfg.yaml backbone.device=cuda:0", "cuda"),
    ("pretrain-init-from-a-run-folder", "pretrain --init run --out newbase --steps 1", "--init"),
    ("pretrain-unknown-world", "pretrain --world shape --out newbase --steps 1", "shapes"),
    ("pretrain-vae-that-is-no-vae", "pretrain --vae run --out newbase --steps 1", "--vae"),
    ("unknown-command", "trian cfg.yaml", "invalid choice"),
]


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _one_line_error(argv: list[str], world_dir: Path, capsys, monkeypatch) -> str:
    """Run ``vgrl ARGV`` in ``world_dir``; assert one error line, no traceback, exit 2, nothing written."""
    monkeypatch.chdir(world_dir)
    before = _files(world_dir)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert "Traceback" not in out + err
    assert code == EXIT_CONFIG, (code, err)
    assert _files(world_dir) == before, "something was written"
    return err


@pytest.mark.parametrize("argv,needle", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line(world, argv, needle, capsys, monkeypatch):
    world_dir, port = world
    err = _one_line_error(argv.format(port=port).split(), world_dir, capsys, monkeypatch)
    assert needle in err, err


def test_a_command_with_stray_arguments_shows_its_own_usage(world, capsys, monkeypatch):
    err = _one_line_error(["eval", "--model", "run", "--wieghts", "raw"], world[0], capsys, monkeypatch)
    assert err.startswith("usage: vgrl eval")


def test_a_component_name_override_drops_the_old_options(world, capsys, monkeypatch, caplog):
    """``reward.name=remote reward.url=...``: the preset's reward options are dropped (with a note) in validate
    and in train alike; train then fails only for want of a server (here: an unparsable url is refused)."""
    monkeypatch.chdir(world[0])
    (world[0] / "jpeg.yaml").write_text(yaml.safe_dump({**TINY, "reward": {"name": "jpeg", "quality": 50}}))
    try:
        assert main(["validate", "jpeg.yaml", "reward.name=remote", "reward.url=http://127.0.0.1:1"]) == 0
        assert "its options quality are dropped" in caplog.text
        from vgrl.config import load_config

        cfg = load_config("jpeg.yaml", ["reward.name=remote", "reward.url=http://127.0.0.1:1"])
        assert cfg.reward.options() == {"url": "http://127.0.0.1:1"}
        # the same name again keeps the options; a whole section replaces them as it always did
        assert load_config("jpeg.yaml", ["reward.name=jpeg"]).reward.options() == {"quality": 50}
        assert load_config("jpeg.yaml", ["reward={name: jpeg}"]).reward.options() == {}
    finally:
        (world[0] / "jpeg.yaml").unlink()


def test_missing_optional_extra_is_one_line(world, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the 'remote' extra were not installed
    monkeypatch.setitem(sys.modules, "fastapi", None)
    err = _one_line_error(["serve-reward", "--reward", "jpeg", "--port", "0"], world[0], capsys, monkeypatch)
    assert "pip install 'vgrl[remote]'" in err


def test_parquet_pairs_without_pyarrow_is_one_line(world, capsys, monkeypatch):
    pq = world[0] / "pq"
    pq.mkdir()
    (pq / "pairs.parquet").write_bytes(b"PAR1")
    try:
        monkeypatch.setitem(sys.modules, "pyarrow", None)
        monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
        err = _one_line_error(["train-reward", "--pairs", "pq", "--out", "rm"], world[0], capsys, monkeypatch)
        assert "pyarrow" in err
    finally:
        shutil.rmtree(pq)


def test_exit_codes_are_documented(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "exit status: 0 done; 1 the run itself failed" in " ".join(capsys.readouterr().out.split())
    assert "2 a usage, config or input error" in EXIT_CODES
    assert "**2** a usage, config or input error" in (ROOT / "docs" / "training.md").read_text()
    assert build_parser().epilog.endswith(EXIT_CODES)


def test_the_program_prints_no_traceback(world):
    """The ``vgrl`` program itself (a real process): the README's mistake of issue 25, a run folder with nothing
    to evaluate, is one line and exit status 2."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    exe = shutil.which("vgrl")
    cmd = [exe] if exe else [sys.executable, "-m", "vgrl"]
    result = subprocess.run([*cmd, "eval", "--model", "empty"], cwd=world[0], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == EXIT_CONFIG and "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1 and result.stderr.startswith("error: empty: neither"), result.stderr


def test_resume_auto_says_where_it_resumed_and_takes_the_runs_own_config(world, tmp_path, capsys, monkeypatch):
    """The way out the refusal above names: the run's own config.yaml continues it, and says from where."""
    shutil.copytree(world[0] / "run", tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "run/config.yaml", "train.iterations=2", "--run-dir", "run", "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert f"resuming run from {Path('run') / 'checkpoints' / 'step-000001'} (iteration 1)" in out
