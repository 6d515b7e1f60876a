"""Sample efficiency on the shapes world: images generated and training wall-clock until held-out accuracy
has risen by +10, +15 and +25 points, per algorithm (or the best reached within the budget).

The algorithms are the rows of a suite file (default ``benchmarks/efficiency.yaml``: one base config and, per
row, the dotted overrides that make it that algorithm, plus how often to evaluate). Each row trains with a
training-time budget and periodic held-out evaluation (the base config's fixed prompts and seeds), then the
table is read from the run's ``metrics.jsonl``. A row whose run already trained ``--minutes`` in ``--out`` is
read, not re-run; an interrupted one resumes, and one that finished a smaller budget continues to the larger
one from its last checkpoint, so the table can be rebuilt, extended a row at a time and lengthened later (two
processes with disjoint ``--only`` lists share the machine).

    python benchmarks/sample_efficiency.py [--minutes 60] [--threads 2] [--out runs/efficiency] [--only nft rwr]
                                           [--set a.b=c ...]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import yaml

TARGETS = (10, 15, 25)
SUITE = Path(__file__).with_name("efficiency.yaml")


def read_suite(path: Path) -> tuple[str, dict[str, dict]]:
    """``(base config, {row: {"overrides": [...], "eval_every": n}})``; a clear error for a malformed file."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("base"), str) or not isinstance(data.get("rows"), dict):
        raise SystemExit(f"{path}: expected a mapping with 'base' (a config path) and 'rows' (name -> "
                         "{overrides: [...], eval_every: N})")
    for name, row in data["rows"].items():
        if not isinstance(row, dict) or set(row) - {"overrides", "eval_every"}:
            raise SystemExit(f"{path}: row {name!r}: valid keys are 'overrides' and 'eval_every', got {row!r}")
    return data["base"], data["rows"]


def run_one(name: str, base: str, row: dict, out: Path, minutes: float, threads: int,
            extra: Sequence[str] = ()) -> Path:
    """Train row ``name`` into ``out/<name>`` for ``minutes`` of training: nothing to do when a finished run
    there already trained that long; otherwise resume it (a partial run, or a finished one with a smaller
    budget, which then goes on to the new budget from its last checkpoint, exactly). ``extra``: overrides
    applied to every row after its own (``--set``)."""
    from vgrl.config import load_config
    from vgrl.training.loop import train

    run_dir = out / name
    summary = run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text())["wall_seconds"] >= minutes * 60 - 1:
        return run_dir
    cfg = load_config(base, [*row.get("overrides", []), *extra, f"train.max_minutes={minutes}",
                             "train.iterations=100000", f"eval.every={row.get('eval_every', 10)}", "eval.before=true",
                             f"train.threads={threads}", "log.progress=false", "train.checkpoint_every=20"])
    train(cfg, run_dir, resume="auto" if (run_dir / "checkpoints").is_dir() else None)
    return run_dir


def milestones(run_dir: Path) -> dict:
    """Images and training minutes at the first evaluation reaching each target gain; the best gain and the
    last evaluation's."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    base = evals[0]["overall_accuracy"]
    out = {"before": base, "best_gain": 0.0, "best_at_images": 0,
           "end_gain": 100 * (evals[-1]["overall_accuracy"] - base),
           "iterations": max(r.get("iteration", 0) for r in rows)}
    for r in evals:
        gain = 100 * (r["overall_accuracy"] - base)
        if gain > out["best_gain"]:
            out["best_gain"], out["best_at_images"] = gain, r["images"]
        for target in TARGETS:
            if gain >= target and f"+{target}" not in out:
                out[f"+{target}"] = (r["images"], r["wall_seconds"] / 60)
    summary = json.loads((run_dir / "summary.json").read_text())
    out["images"], out["minutes"] = summary["images_generated"], summary["wall_seconds"] / 60
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", type=Path, default=SUITE)
    parser.add_argument("--only", nargs="*", help="row names to run (default: every row of the suite)")
    parser.add_argument("--minutes", type=float, default=60.0, help="training-time budget per row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/efficiency"))
    parser.add_argument("--set", nargs="*", default=[], metavar="A.B=C",
                        help="overrides for every row (e.g. backbone.path=... to run the suite on another model)")
    args = parser.parse_args()
    base, rows = read_suite(args.suite)
    unknown = sorted(set(args.only or ()) - set(rows))
    if unknown:
        raise SystemExit(f"--only: unknown rows {unknown}; valid: {', '.join(rows)}")
    names = args.only or list(rows)
    print("| row | before | " + " | ".join(f"+{t} points: images (min)" for t in TARGETS)
          + " | best gain (at images) | last eval gain | iterations, images (min) |")
    print("|---|---:|" + "---:|" * (len(TARGETS) + 3))
    for name in names:
        m = milestones(run_one(name, base, rows[name], args.out, args.minutes, args.threads, args.set))
        cells = [f"{m[f'+{t}'][0]} ({m[f'+{t}'][1]:.1f})" if f"+{t}" in m else "not reached" for t in TARGETS]
        print(f"| {name} | {m['before']:.3f} | " + " | ".join(cells)
              + f" | {m['best_gain']:+.1f} ({m['best_at_images']}) | {m['end_gain']:+.1f} | {m['iterations']}, "
              f"{m['images']} ({m['minutes']:.1f}) |", flush=True)


if __name__ == "__main__":
    main()
