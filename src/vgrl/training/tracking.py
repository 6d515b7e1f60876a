"""Run artefacts: ``metrics.jsonl`` and tensorboard (:class:`Tracker`), training grids and the training progress bar
(:class:`Progress`).

Importing this module does not import torch (``vgrl report`` stays light); the tensorboard writer is
imported when a :class:`Tracker` turns it on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vgrl.evaluation.report import read_metrics
from vgrl.media import save_samples

if TYPE_CHECKING:
    from torch import Tensor


def _check_value(key: str, value) -> None:
    """Raise ``TypeError`` naming ``key`` unless ``value`` is a number, string, bool, list or dict of them."""
    if isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_value(f"{key}[{i}]", v)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_value(f"{key}/{k}", v)
    else:
        raise TypeError(f"metrics row field {key!r}: {type(value).__name__} is not a number, string, bool, "
                        f"list or dict (convert tensors with .item() or .tolist())")


def _scalars(prefix: str, values: dict) -> dict[str, float]:
    """Numeric (and bool) values of ``values`` keyed ``prefix/key``, nested dicts flattened ``prefix/key/sub``."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_scalars(f"{prefix}/{key}", value))
        elif isinstance(value, (bool, int, float)):
            out[f"{prefix}/{key}"] = float(value)
    return out


class Tracker:
    """A run's metrics: one JSON line per :meth:`log` in ``run_dir/metrics.jsonl`` (flushed and fsync'd)
    and, when ``tensorboard`` is on, scalars and grids under ``run_dir/tensorboard/``.

    Every row has ``kind`` (``train``, ``eval``, ``skip``, ...) and ``iteration``; tensorboard gets each
    numeric value of a row as the scalar ``{kind}/{key}`` at step ``iteration`` (nested dicts flattened,
    ``eval/accuracy/colors``; bools as 0/1).

    Args:
        run_dir: the run folder (created).
        tensorboard: also write tensorboard events.
        resume_iteration: a resumed run restarts after this iteration: rows with a larger ``iteration``
            are removed from ``metrics.jsonl`` (rewritten atomically) and tensorboard purges its events
            from step ``resume_iteration + 1`` on, since the run re-does them.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_iteration: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_iteration is not None and self.metrics_path.exists():
            kept = [r for r in read_metrics(self.metrics_path) if r["iteration"] <= resume_iteration]
            _atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = self.metrics_path.open("a")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_iteration is None else resume_iteration + 1
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)

    def log(self, row: dict) -> None:
        """Append ``row`` (needs ``kind`` and an int ``iteration``) to metrics.jsonl and its numbers to tensorboard."""
        if not isinstance(row.get("kind"), str) or not isinstance(row.get("iteration"), int):
            raise ValueError(f"a metrics row needs a string 'kind' and an int 'iteration', got {row!r}")
        for key, value in row.items():
            _check_value(key, value)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._writer is not None:
            values = {k: v for k, v in row.items() if k not in ("kind", "iteration")}
            for tag, value in _scalars(row["kind"], values).items():
                self._writer.add_scalar(tag, value, global_step=row["iteration"])
            self._writer.flush()

    def image(self, name: str, images: Tensor, iteration: int, nrow: int | None = None, layout: str = "image",
              captions: list[tuple[str, bool]] | None = None) -> Path:
        """Save a batch of pixels in [0, 1] in ``layout`` as ``run_dir/grids/{name}.png`` (scale 3; a video: one strip
        of frames per sample, plus ``{name}.gif``; views: one row per sample, :func:`vgrl.media.save_samples`) and
        add the PNG to tensorboard; returns the PNG's path. ``captions``: per sample its prompt and the checker's
        verdict, drawn as a green / red frame and written beside it as ``{name}.json`` (report.html lists them)."""
        passed = None if captions is None else [ok for _, ok in captions]
        path = save_samples(images, self.run_dir / "grids" / f"{name}.png", layout, nrow=nrow, scale=3,
                            passed=passed)[0]
        if captions is not None:
            _atomic_write(path.with_suffix(".json"),
                          json.dumps([{"prompt": p, "passed": bool(ok)} for p, ok in captions], indent=1))
        if self._writer is not None:
            with Image.open(path) as grid:
                self._writer.add_image(name, np.asarray(grid.convert("RGB")), iteration, dataformats="HWC")
            self._writer.flush()
        return path

    def close(self) -> None:
        """Close metrics.jsonl and the tensorboard writer (idempotent)."""
        self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: temp file in the same folder, fsync, ``os.replace``, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Progress:
    """A rich progress bar over the run's budget with ETA and the live reward. The bar's fraction is the larger
    of ``iteration / train.iterations`` and ``training time / train.max_minutes``, whichever stops the run
    first, so the ETA is right under a time budget too; the iteration count is shown beside it."""

    STEPS = 1000  # resolution of the bar

    def __init__(self, train, counters, enabled: bool) -> None:
        """``train``: the run's ``TrainConfig``; ``counters``: where a resumed run starts."""
        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.iterations, self.budget = train.iterations, train.max_minutes
        self.bar = RichProgress(TextColumn("train"), BarColumn(), TextColumn("{task.fields[count]}"),
                                TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled)
        self.task = self.bar.add_task("train", total=self.STEPS, completed=self._done(counters.iteration,
                                                                                       counters.wall_seconds),
                                      count=self._count(counters.iteration), info="")
        self.bar.start()

    def _done(self, iteration: int, wall_seconds: float) -> float:
        from vgrl.training.schedule import budget_fraction

        return self.STEPS * budget_fraction(iteration, wall_seconds, self.iterations, self.budget)

    def _count(self, iteration: int) -> str:
        return f"{iteration}/{self.iterations} it" + (f" (<= {self.budget:g} min)" if self.budget else "")

    def update(self, row: dict) -> None:
        info = f"reward {row['reward_mean']:.3f}" if "reward_mean" in row else row.get("skip_reason", "")
        self.bar.update(self.task, completed=self._done(row["iteration"], row["wall_seconds"]),
                        count=self._count(row["iteration"]), info=info)

    def close(self) -> None:
        self.bar.stop()
