"""Reward-hacking demonstration: a gameable reward, the monitor catching it, and a regulariser preventing it.

Runs ``vgrl train`` on each config (default: ``configs/hacking/jpeg.yaml``, NFT on JPEG compressibility,
and ``configs/hacking/jpeg_kl.yaml``, the same with a KL term to the base model), side by side as
separate processes (one thread each), then prints one table from their ``metrics.jsonl``: the proxy
(training reward on the held-out samples), gold (held-out checker accuracy), intra-prompt diversity and
Fréchet drift at the first and last evaluation, and the iterations where the monitor warned.

Takes about 15 minutes on 2 CPU cores (24 iterations and 7 held-out evaluations per run, both runs at once);
``--override train.iterations=4`` (any ``vgrl train`` override, repeatable) makes a shorter, weaker demo.

    python benchmarks/hacking_demo.py                       # both configs, runs/hacking_*  (~15 min)
    python benchmarks/hacking_demo.py --sequential          # one after the other (quieter timings)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DEFAULT = ["configs/hacking/jpeg.yaml", "configs/hacking/jpeg_kl.yaml"]


def _evals(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "eval"]


def _row(name: str, evals: list[dict]) -> str:
    first, last = evals[0], evals[-1]
    warned = [str(r["iteration"]) for r in evals if r.get("hacking_warning")]
    cell = (lambda k, f="{:.3f}": f"{f.format(first[k])} -> {f.format(last[k])}" if k in first and k in last else "-")
    return (f"| {name} | {cell('proxy_reward')} | {cell('gold')} | {cell('diversity')} | "
            f"{cell('frechet', '{:.2f}')} | {', '.join(warned) or 'none'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=DEFAULT, help="training configs (default: the two demo ones)")
    parser.add_argument("--out", default="runs", help="parent folder of the run folders (default: runs)")
    parser.add_argument("--sequential", action="store_true", help="run one config at a time")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted vgrl train override for every run (repeatable), e.g. train.iterations=4")
    args = parser.parse_args()
    runs = [(Path(c), Path(args.out) / f"hacking_{Path(c).stem}") for c in args.configs]
    procs = []
    for cfg, run_dir in runs:
        cmd = [sys.executable, "-m", "vgrl", "train", str(cfg), *args.override, "--run-dir", str(run_dir)]
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(run_dir.with_suffix(".log"), "w")
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        if args.sequential:
            procs[-1].wait()
    codes = [p.wait() for p in procs]
    if any(codes):
        print(f"a run failed (exit codes {codes}); see {args.out}/hacking_*.log", file=sys.stderr)
        return 1
    print("| run | proxy (JPEG reward on held-out samples) | gold (held-out accuracy) | intra-prompt diversity | "
          "Frechet drift | hacking warnings at iteration |")
    print("|---|---|---|---|---|---|")
    for cfg, run_dir in runs:
        print(_row(cfg.stem, _evals(run_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
