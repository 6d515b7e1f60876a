"""``vgrl sample``: one end-to-end rollout from a config, written as an image grid and a summary.

This is the smallest complete use of the engine (backbone x kernel x step plan), and the main job
until training lands: it saves the resolved config, ``grid.png`` (one row per prompt group for images;
one strip of frames per sample for a video backbone, plus the animated ``grid.gif``; one row of views per
sample for a multi-view backbone),
``summary.json`` (per-step log-probability statistics, timing) and prints a table. It runs on
``backbone.device`` under ``train.mixed_precision``'s autocast, as training does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from vgrl import backbones
from vgrl.config import RunConfig, save_config
from vgrl.device import Precision, resolve_device, set_deterministic
from vgrl.rollout import kernel_for, plan_from_config, rollout
from vgrl.media import save_samples


def run(cfg: RunConfig, out_dir: str | Path) -> dict:
    """Sample ``cfg.batch_size`` images (``cfg.group_size`` per prompt) and write the artefacts."""
    device = resolve_device(cfg.backbone.device)  # refuses a missing device before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    precision = Precision.build(cfg.train.mixed_precision, device)
    torch.manual_seed(cfg.seed)
    set_deterministic(cfg.deterministic, device)
    backbone = backbones.build(cfg.backbone).to(device)
    kernel = kernel_for(backbone, cfg.kernel.name, **cfg.kernel.options())
    plan = plan_from_config(cfg.sampling.plan, cfg.sampling.num_steps)
    n_prompts = cfg.batch_size // cfg.group_size
    prompts = [cfg.prompts[i % len(cfg.prompts)] for i in range(n_prompts)]
    guidance = cfg.sampling.guidance_scale
    start = time.perf_counter()
    cond = backbone.encode(prompts, guidance=guidance > 1).repeat_interleave(cfg.group_size)
    with precision.autocast():
        traj = rollout(backbone, kernel, cond, cfg.sampling.num_steps, plan,
                       torch.Generator().manual_seed(cfg.seed), guidance_scale=guidance)
        with torch.no_grad():
            images = backbone.decode(traj.x0)
    seconds = time.perf_counter() - start
    save_samples(images, out / "grid.png", backbone.layout, nrow=cfg.group_size, scale=4)
    summary = {
        "images": len(traj), "prompts": prompts, "seeds": traj.seeds.tolist(),
        "recorded_steps": traj.step_idx.tolist(),
        "log_prob_mean_per_step": traj.log_prob.mean(0).tolist(),
        "log_prob_std_per_step": traj.log_prob.std(0).tolist() if len(traj) > 1 else [],
        "seconds": round(seconds, 3), "images_per_second": round(len(traj) / seconds, 3),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(cfg, summary, out)
    return summary


def _print_summary(cfg: RunConfig, summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"vgrl sample: {cfg.backbone.name} x {cfg.kernel.name}, {cfg.sampling.num_steps} steps")
    table.add_column("step")
    table.add_column("mean log-prob", justify="right")
    for i, lp in zip(summary["recorded_steps"], summary["log_prob_mean_per_step"]):
        table.add_row(str(i), f"{lp:.4f}")
    console = Console()
    console.print(table)
    console.print(f"{summary['images']} images in {summary['seconds']} s "
                  f"({summary['images_per_second']} images/s) -> {out / 'grid.png'}")
    if cfg.backbone.tiny:
        console.print("(backbone.tiny: a random-init model, so the grid is noise; the shipped trained model: "
                      "configs/shapes_sample.yaml)")
