"""What a run carries across a restart: its counters, complete checkpoints of a built run (save / restore)
and the resume point. Checkpoints hold everything the next iteration depends on (trainable weights,
optimiser, LR schedule, EMA, algorithm and sampler state, every RNG, the fp16 loss scaler, the hacking
monitor), so a resumed run continues bit for bit (fp32, ``deterministic: true``, CPU)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vgrl.training import TrainingError, checkpoint
from vgrl.device import DeviceError, to_cpu
from vgrl.training.policy import load_trainable_state, trainable_state

if TYPE_CHECKING:
    from vgrl.training.build import Run


@dataclass
class Counters:
    """Progress that a checkpoint restores."""

    iteration: int = 0
    images: int = 0
    wall_seconds: float = 0.0          # training time: collect + update, evaluation excluded
    eval_seconds: float = 0.0
    optimizer_steps: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0


def save(run: Run, counters: Counters, before: dict | None, run_dir: Path) -> None:
    """Write a complete checkpoint (main process) of everything the next iteration depends on."""
    if run.dist.main:
        state = {"optimizer": run.optimizer.state_dict(),
                 "algorithm": run.algorithm.state_dict(), "sampler": run.sampler.state_dict(),
                 "generators": {k: g.get_state() for k, g in run.generators.items()},
                 "torch_rng": torch.get_rng_state(), "counters": asdict(counters), "before": before,
                 "ema": run.ema.state_dict() if run.ema is not None else None,
                 "monitor": run.monitor.state_dict() if run.monitor is not None else None,
                 "scaler": run.precision.state_dict()}
        checkpoint.save(run_dir / "checkpoints", counters.iteration, trainable_state(run.module), to_cpu(state),
                        {"images": counters.images, "wall_seconds": counters.wall_seconds},
                        keep=run.cfg.train.keep_checkpoints)
    run.dist.barrier()


def restore(run: Run, path: Path) -> tuple[Counters, dict | None]:
    """Load a checkpoint into the built run; returns its counters and the before-training evaluation.

    The checkpoint is read onto the CPU (its RNG states must stay there); weights are copied into the run's
    parameters, and optimiser and EMA state follow them to the run's device, so a run resumes on any device."""
    ckpt = checkpoint.load(path)
    load_trainable_state(run.module, ckpt.trainable)
    s = ckpt.state
    run.optimizer.load_state_dict(s["optimizer"])
    run.algorithm.load_state_dict(s["algorithm"])
    run.sampler.load_state_dict(s["sampler"])
    for k, g in run.generators.items():
        g.set_state(s["generators"][k])
    torch.set_rng_state(s["torch_rng"])
    if (s["ema"] is None) != (run.ema is None):
        raise TrainingError(f"{path}: train.ema_decay differs from the run that wrote this checkpoint")
    if run.ema is not None:
        run.ema.load_state_dict(s["ema"])
        run.ema.to(device=run.device)
    try:
        run.precision.load_state_dict(s.get("scaler"), str(path))
    except DeviceError as e:
        raise TrainingError(str(e)) from None
    if run.monitor is not None and s.get("monitor") is not None:
        run.monitor.load_state_dict(s["monitor"])
    return Counters(**s["counters"]), s["before"]


def resume_point(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint ``--resume`` names: ``auto`` (the newest complete one, or None), a directory, or None."""
    if resume is None:
        return None
    if resume == "auto":
        return checkpoint.latest(run_dir / "checkpoints")
    path = Path(resume)
    if not checkpoint.is_valid(path):
        raise TrainingError(f"--resume {resume}: not a complete checkpoint directory; use 'auto' or one of "
                            f"{[p.name for p in checkpoint.list_checkpoints(run_dir / 'checkpoints')]}")
    return path
