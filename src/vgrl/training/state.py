"""What a run carries across a restart: its counters, complete checkpoints of a built run (save / restore)
and the resume point. Checkpoints hold everything the next iteration depends on (trainable weights,
optimiser, LR schedule, EMA, algorithm and sampler state, every RNG, the fp16 loss scaler, the hacking
monitor), so a resumed run continues bit for bit (fp32, ``deterministic: true``, CPU)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vgrl.training import TrainingError, checkpoint
from vgrl.device import DeviceError, to_cpu
from vgrl.training.policy import load_trainable_state, trainable_state

if TYPE_CHECKING:
    from vgrl.config import RunConfig
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


# Settings a resumed run may change: how long it goes on, how often it saves, where and how it reports.
RESUMABLE = ("train.iterations", "train.max_minutes", "train.checkpoint_every", "train.keep_checkpoints",
             "train.threads", "backbone.device", "log.progress", "log.tensorboard", "log.grid_every", "run_dir")


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": []}`` -> ``{"a.b": 1, "c": []}`` (lists and empty mappings stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(cfg: RunConfig, saved: Path) -> list[str]:
    """``key: saved -> given`` for each setting of ``cfg`` that differs from the run config ``saved`` (a run's
    ``config.yaml``), leaving out the :data:`RESUMABLE` ones."""
    from vgrl.config import ConfigError, load_config

    try:
        own = load_config(saved, [])
    except ConfigError as e:
        raise TrainingError(f"{saved}: the run's own config no longer loads: {'; '.join(e.messages)}") from None
    a, b = _flat(own.model_dump(mode="json")), _flat(cfg.model_dump(mode="json"))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in dict.fromkeys([*a, *b])
            if a.get(k) != b.get(k) and k not in RESUMABLE]


def resume_point(run_dir: Path, resume: str | None, cfg: RunConfig | None = None) -> Path | None:
    """The checkpoint ``--resume`` names: ``auto`` (the newest complete one, or None), a directory, or None.

    Raises :class:`TrainingError` (one line, nothing written) when ``resume`` is None but ``run_dir`` already holds
    a run, when ``resume`` names no complete checkpoint, and when ``cfg`` differs from the run's own
    ``config.yaml`` in a setting that a resumed run cannot change (everything but :data:`RESUMABLE`)."""
    if resume is None:
        if (run_dir / "metrics.jsonl").exists():
            raise TrainingError(f"{run_dir} already holds a run (metrics.jsonl); continue it with --resume auto, or "
                                "choose another --run-dir (nothing was overwritten)")
        return None
    if resume == "auto":
        path = checkpoint.latest(run_dir / "checkpoints")
    else:
        path = Path(resume)
        if not checkpoint.is_valid(path):
            raise TrainingError(f"--resume {resume}: not a complete checkpoint directory; use 'auto' or one of "
                                f"{[p.name for p in checkpoint.list_checkpoints(run_dir / 'checkpoints')]}")
    saved = None if path is None else path.parent.parent / "config.yaml"  # the run that wrote the checkpoint
    if saved is not None and cfg is not None and saved.is_file():
        diff = config_differences(cfg, saved)
        if diff:
            raise TrainingError(f"--resume {resume}: the config differs from the run's own {saved} in "
                                f"{'; '.join(diff)}; continue the run with its own config: vgrl train {saved} "
                                f"--run-dir {run_dir} --resume {resume} (a resumed run may change only "
                                f"{', '.join(RESUMABLE)}), or train the new config in another --run-dir "
                                "(nothing was written)")
    return path
