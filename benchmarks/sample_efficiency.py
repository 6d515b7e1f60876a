"""Sample efficiency on the shapes world: images generated and training wall-clock until held-out accuracy
has risen by +10, +15 and +25 points, per algorithm (or the best reached within the budget).

Each algorithm is a training config (default: every ``configs/bench/*.yaml``); the benchmark runs it
with periodic held-out evaluation (640 fixed samples, the ODE sampler) and a training-time budget,
then reads the run's ``metrics.jsonl``. Runs that already finished in ``--out`` are read, not re-run,
so the table can be rebuilt and extended one algorithm at a time.

    python benchmarks/sample_efficiency.py [--minutes 60] [--eval-every 5] [--out runs/bench] [CONFIG ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGETS = (10, 15, 25)


def run_one(config: Path, out: Path, minutes: float, eval_every: int, threads: int) -> Path:
    """Train ``config`` into ``out/<name>`` unless a finished run is already there."""
    from vgrl.config import load_config
    from vgrl.trainer import train

    run_dir = out / config.stem
    if (run_dir / "summary.json").is_file():
        return run_dir
    cfg = load_config(config, [f"train.max_minutes={minutes}", "train.iterations=100000",
                               f"eval.every={eval_every}", f"train.threads={threads}", "log.progress=false"])
    train(cfg, run_dir, resume="auto" if (run_dir / "metrics.jsonl").exists() else None)
    return run_dir


def milestones(run_dir: Path) -> dict:
    """Images and training seconds at the first evaluation reaching each target gain, and the best gain."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    base = evals[0]["overall_accuracy"]
    out = {"before": base, "best_gain": 0.0, "best_at_images": 0, "images": 0, "minutes": 0.0}
    for r in evals:
        gain = 100 * (r["overall_accuracy"] - base)
        if gain > out["best_gain"]:
            out["best_gain"], out["best_at_images"] = gain, r["images"]
        for target in TARGETS:
            if gain >= target and f"+{target}" not in out:
                out[f"+{target}"] = (r["images"], r["wall_seconds"] / 60)
    last = rows[-1]
    out["images"], out["minutes"] = last["images"], last["wall_seconds"] / 60
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", type=Path)
    parser.add_argument("--minutes", type=float, default=60.0, help="training-time budget per algorithm")
    parser.add_argument("--eval-every", type=int, default=5, help="iterations between held-out evaluations")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    configs = args.configs or sorted(Path("configs/bench").glob("*.yaml"))
    print("| run | before | " + " | ".join(f"+{t} points: images (min)" for t in TARGETS)
          + " | best gain (at images) | trained images (min) |")
    print("|---|---:|" + "---:|" * (len(TARGETS) + 2))
    for config in configs:
        m = milestones(run_one(config, args.out, args.minutes, args.eval_every, args.threads))
        cells = [f"{m[f'+{t}'][0]} ({m[f'+{t}'][1]:.1f})" if f"+{t}" in m else "not reached" for t in TARGETS]
        print(f"| {config.stem} | {m['before']:.3f} | " + " | ".join(cells)
              + f" | {m['best_gain']:+.1f} ({m['best_at_images']}) | {m['images']} ({m['minutes']:.1f}) |", flush=True)


if __name__ == "__main__":
    main()
