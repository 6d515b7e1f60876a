"""Complete, atomic training checkpoints.

A checkpoint is a directory ``checkpoints/step-{iteration:06d}/`` holding

* ``trainable.safetensors`` — the trained weights (LoRA adapters only, or the whole denoiser);
* ``state.pt`` — optimiser, LR schedule, EMA, algorithm state (DDPO's per-prompt statistics), the fp16
  loss scaler, every RNG state and the data position, saved from the CPU with ``torch.save`` and read
  back with ``weights_only=True``;
* ``meta.json`` — counters (iteration, images, wall seconds) and the file list, written last.

Writes are atomic: everything goes to a hidden temporary directory, each file is fsync'd, the
directory is renamed into place and the parent fsync'd. A directory without a readable
``meta.json`` naming all its files is not a checkpoint, so a run killed mid-write leaves nothing
that ``--resume auto`` would take. No tensor that is not finite is ever written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

PREFIX = "step-"
FILES = ("trainable.safetensors", "state.pt", "meta.json")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written (non-finite tensors) or read (missing or corrupt files)."""


@dataclass
class Checkpoint:
    """What :func:`load` returns."""

    path: Path
    trainable: dict[str, Tensor]
    state: dict[str, Any]
    meta: dict[str, Any]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_finite(tensors: dict[str, Tensor], what: str) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"refusing to save a checkpoint with non-finite {what}: {', '.join(bad[:5])}")


def _state_tensors(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """Every floating tensor inside nested dicts/lists of ``obj``, by path (for the finiteness check)."""
    if isinstance(obj, Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    out: dict[str, Tensor] = {}
    for k, v in items:
        out.update(_state_tensors(v, f"{prefix}/{k}" if prefix else str(k)))
    return out


def save(root: str | Path, iteration: int, trainable: dict[str, Tensor], state: dict[str, Any],
         meta: dict[str, Any], keep: int | None = None) -> Path:
    """Write checkpoint ``step-{iteration}`` under ``root`` atomically; keep the newest ``keep``.

    Replaces an existing checkpoint of the same iteration (a resumed run re-doing it).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _check_finite(trainable, "trainable weights")
    _check_finite(_state_tensors(state), "optimiser or RNG state")
    final = root / f"{PREFIX}{iteration:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / FILES[0]))
    torch.save(state, tmp / FILES[1])
    (tmp / FILES[2]).write_text(json.dumps({**meta, "iteration": iteration, "files": list(FILES)}, indent=2))
    for name in FILES:
        _fsync(tmp / name)
    _fsync(tmp)
    if final.exists():
        old = root / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        shutil.rmtree(old)
    tmp.rename(final)
    _fsync(root)
    if keep is not None:
        for stale in list_checkpoints(root)[:-keep]:
            shutil.rmtree(stale)
    return final


def is_valid(path: str | Path) -> bool:
    """Whether ``path`` is a complete checkpoint directory (meta.json readable and every file present)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and all((path / f).is_file() for f in meta.get("files", FILES))


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and is_valid(p)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint directory (``state.pt`` with ``weights_only=True``) with its tensors on ``map_location``.

    Checkpoints are written from the CPU, so any device can read them. ``vgrl train --resume`` reads onto
    the CPU (RNG states must stay there) and lets each piece follow the run's parameters to its device.
    """
    path = Path(path)
    if not is_valid(path):
        raise CheckpointError(f"{path} is not a complete vgrl checkpoint (needs {', '.join(FILES)})")
    try:
        trainable = load_file(str(path / FILES[0]), device=str(map_location))
        state = torch.load(path / FILES[1], weights_only=True, map_location=map_location)
    except Exception as e:  # corrupt file: say which checkpoint
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e
    return Checkpoint(path, trainable, state, json.loads((path / FILES[2]).read_text()))
