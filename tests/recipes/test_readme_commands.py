"""The README's "## Using it" section as a test: every shell line and both Python snippets run, in order, in a
temporary copy of the repository (configs/, benchmarks/, README.md, the shipped models), and each must exit 0
without printing a traceback. A README edit that breaks a command breaks this test.

Commands run as written, with ONE shared rule (:data:`SHORT`): short settings appended to every command that
trains, samples or evaluates, so the whole section runs in about a minute on 2 CPU cores. Two more rewrites keep
parallel runs of this test on one machine apart: the README's port is replaced by a free one, and torchrun gets a
free rendezvous port through its environment (``PET_MASTER_PORT``). A ``vgrl serve-reward`` line is started in
the background, waited for on ``/health``, and left serving for the lines after it.

To keep it cheap, ``vgrl ...`` commands (also inside ``&&`` chains) run in this process through
``vgrl.cli.main`` and the Python snippets through ``exec`` (torch and diffusers are imported once, not a dozen
times); every other line (torchrun, ``python benchmarks/...``) runs in bash, with this tree's ``vgrl`` first on
``PATH``. ``tests/unit/test_mistakes.py`` shows that the console script itself prints no traceback.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

import vgrl

ROOT = Path(__file__).resolve().parents[2]
SRC = Path(vgrl.__file__).resolve().parents[1]
README_PORT = "8765"

# The one rule: what is appended to a command whose tokens contain the key (matched as whole tokens).
TRAIN = ["train.iterations=2", "train.max_minutes=null", "batch_size=8", "group_size=4", "train.minibatch_size=4",
         "sampling.num_steps=2", "eval.before=false", "eval.every=null", "eval.per_category=1", "eval.num_steps=2",
         "eval.monitor=null", "log.tensorboard=false", "log.progress=false"]
SHORT: dict[tuple[str, ...], list[str]] = {
    ("vgrl", "train"): TRAIN,
    ("-m", "vgrl", "train"): TRAIN,                          # torchrun ... -m vgrl train
    ("vgrl", "sample"): ["sampling.num_steps=2"],
    ("vgrl", "eval"): ["--samples-per-category", "1", "--steps", "2"],
    ("vgrl", "train-reward"): ["--steps", "2"],
    ("benchmarks/hacking_demo.py",): [arg for o in TRAIN for arg in ("--override", o)],
}


def section(text: str, title: str) -> str:
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def readme_steps() -> list[tuple[str, str]]:
    """``(kind, text)`` in README order: ``("sh", line)`` for each shell line, ``("py", code)`` per snippet."""
    using = section((ROOT / "README.md").read_text(), "## Using it")
    steps: list[tuple[str, str]] = []
    for lang, block in re.findall(r"^```(bash|python)\n(.*?)^```", using, flags=re.S | re.M):
        if lang == "python":
            steps.append(("py", block))
            continue
        for line in block.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()  # a trailing comment
            if line:
                steps.append(("sh", line))
    return steps


def _contains(tokens: list[str], key: tuple[str, ...]) -> bool:
    return any(tuple(tokens[i:i + len(key)]) == key for i in range(len(tokens)))


def shortened(command: str) -> str:
    """``command`` (one of an ``&&`` chain) with :data:`SHORT`'s settings appended where a key matches."""
    tokens = shlex.split(command)
    for key, extra in SHORT.items():
        if _contains(tokens, key):
            return command.rstrip() + " " + shlex.join(extra)
    return command


def prepared(line: str, port: str) -> str:
    return " && ".join(shortened(c) for c in line.replace(README_PORT, port).split("&&"))


def prepared_python(code: str) -> str:
    """A snippet with :data:`TRAIN` appended to the override list of each ``load_config(PATH, [...])`` call."""
    extra = ", ".join(repr(o) for o in TRAIN)
    return re.sub(r"(load_config\([^\[\)]*\[)([^\]]*)\]", lambda m: f"{m[1]}{m[2]}, {extra}]", code)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_rule_covers_every_command_that_trains_samples_or_evaluates():
    steps = readme_steps()
    assert sum(k == "py" for k, _ in steps) == 2 and sum(k == "sh" for k, _ in steps) >= 10
    for kind, text in steps:
        if kind == "py":
            assert "train(" not in text or TRAIN[0] in prepared_python(text), text
            continue
        for command in text.split("&&"):
            words = shlex.split(command)
            if any(w in words for w in ("train", "sample", "eval", "train-reward")) or "hacking_demo" in command:
                assert shortened(command) != command, f"no short settings for {command!r}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A copy of what the README's commands read, an environment that runs this tree's vgrl, and the servers
    that serve-reward lines start (stopped at the end)."""
    root = tmp_path_factory.mktemp("readme")
    for folder in ("configs", "benchmarks"):
        shutil.copytree(ROOT / folder, root / folder)
    shutil.copy(ROOT / "README.md", root / "README.md")
    (root / "models").mkdir()
    for model in (ROOT / "models").iterdir():  # read-only: linked; new models (train-reward --out) land beside
        (root / "models" / model.name).symlink_to(model)
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    (bin_dir / "vgrl").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vgrl "$@"\n')  # this tree's vgrl
    (bin_dir / "vgrl").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PET_MASTER_PORT": str(free_port()),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    servers: list[subprocess.Popen] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the in-process commands share the cores
    yield {"root": root, "env": env, "port": str(free_port()), "servers": servers}
    torch.set_num_threads(threads)
    for p in servers:
        p.terminate()
        p.wait(timeout=30)


def _serve(sandbox, line: str) -> None:
    log = open(sandbox["root"] / f"server-{len(sandbox['servers'])}.log", "w")
    proc = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=sandbox["root"], env=sandbox["env"], stdout=log,
                            stderr=subprocess.STDOUT)
    sandbox["servers"].append(proc)
    url = f"http://127.0.0.1:{sandbox['port']}/health"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{line!r} exited {proc.returncode}:\n{Path(log.name).read_text()}"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{line!r}: no answer on {url} within 60 s")


STEPS = readme_steps()


def _run_vgrl(sandbox, command: str, capfd) -> None:
    from vgrl.cli import main

    argv = shlex.split(command)[1:]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: a usage error
        code = e.code
    out = "".join(capfd.readouterr())
    assert code == 0, f"{command!r} exited {code}:\n{out[-3000:]}"
    assert "Traceback" not in out, f"{command!r} printed a traceback:\n{out[-3000:]}"


def _run_shell(sandbox, command: str) -> None:
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=sandbox["root"], env=sandbox["env"],
                            capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"{command!r} exited {result.returncode}:\n{out[-3000:]}"
    assert "Traceback" not in out, f"{command!r} printed a traceback:\n{out[-3000:]}"


@pytest.mark.parametrize("kind,text", STEPS, ids=[f"{i:02d}-{t.split()[1] if k == 'sh' else 'python'}"
                                                  for i, (k, t) in enumerate(STEPS)])
def test_readme_command_runs(sandbox, kind, text, monkeypatch, capfd):
    monkeypatch.chdir(sandbox["root"])
    if kind == "py":
        exec(compile(prepared_python(text), "README.md (Using it)", "exec"), {"__name__": "__readme__"})
        return
    line = prepared(text, sandbox["port"])
    if shlex.split(line)[:2] == ["vgrl", "serve-reward"]:
        _serve(sandbox, line)
        return
    commands = [c.strip() for c in line.split("&&")]
    if not all(shlex.split(c)[0] == "vgrl" for c in commands):
        _run_shell(sandbox, line)
        return
    for command in commands:
        _run_vgrl(sandbox, command, capfd)
