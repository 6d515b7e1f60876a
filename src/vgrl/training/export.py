"""A training checkpoint as a diffusers pipeline directory (``vgrl export``), for ``vgrl eval`` or any diffusers code.

A run writes ``final/pipeline`` only at its end; its ``checkpoints/step-N`` hold the complete training state of
earlier iterations. :func:`export_checkpoint` rebuilds the run from the ``config.yaml`` in the run folder, restores
the checkpoint exactly as ``vgrl train --resume`` does, and exports the model the way the trainer exports its final
one: LoRA merged, the EMA weights (``weights="ema"``, when the run keeps an EMA) or the trained weights themselves
(``weights="raw"``).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from vgrl.training import checkpoint
from vgrl.training.checkpoint import CheckpointError

Weights = Literal["ema", "raw"]


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a complete checkpoint directory; the newest complete checkpoint if it is a run folder."""
    path = Path(path)
    if checkpoint.is_valid(path):
        return path
    newest = checkpoint.latest(path / "checkpoints")
    if newest is not None:
        return newest
    siblings = [p.name for p in checkpoint.list_checkpoints(path.parent)]
    raise CheckpointError(f"{path}: neither a complete checkpoint directory (RUN_DIR/checkpoints/step-N with "
                          f"{', '.join(checkpoint.FILES)}) nor a run folder holding one"
                          + (f"; complete checkpoints beside it: {', '.join(siblings)}" if siblings else ""))


def export_checkpoint(path: str | Path, out: str | Path, weights: Weights = "ema") -> Path:
    """Export checkpoint ``path`` (or a run folder's newest) to the pipeline directory ``out``; returns ``out``.

    The run's ``config.yaml`` (two levels above the checkpoint) says how to build it; the base model it names
    must be where it was at training time (relative paths are read from the working directory, as in training).

    Raises:
        CheckpointError: no checkpoint, no ``config.yaml`` beside it, or ``weights="ema"`` for a run trained
            without an EMA.
    """
    from vgrl.config import ConfigError, load_config
    from vgrl.training.state import restore
    from vgrl.training.loop import build, export

    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    ckpt = resolve_checkpoint(path)
    config = ckpt.parent.parent / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"{ckpt}: the run folder {ckpt.parent.parent} holds no config.yaml, which says how "
                              "to build the model this checkpoint belongs to")
    try:
        cfg = load_config(config, [])
    except ConfigError as e:
        raise CheckpointError(f"{config}: " + "; ".join(e.messages)) from None
    if weights == "ema" and cfg.train.ema_decay is None:
        raise CheckpointError(f"{ckpt}: the run was trained without an EMA (train.ema_decay: null in {config}); "
                              "export its trained weights with --weights raw")
    run = build(cfg)
    counters, _ = restore(run, ckpt)
    if weights == "raw":
        run.ema = None
    return export(run, Path(out), counters, extra={"checkpoint": str(ckpt), "weights": weights})


@contextlib.contextmanager
def pipeline_dir(model: str, weights: Weights = "ema") -> Iterator[str]:
    """``model`` itself, or a training checkpoint (``RUN/checkpoints/step-N``) exported to a temporary pipeline
    directory (:func:`export_checkpoint`), removed when the block ends."""
    if not checkpoint.is_valid(model):
        yield model
        return
    with tempfile.TemporaryDirectory(prefix="vgrl-eval-") as tmp:
        yield str(export_checkpoint(model, Path(tmp) / "pipeline", weights))
