"""Checker accuracy of the shipped base models over sampling settings and splits; prints markdown tables.

    python benchmarks/base_model_quality.py --models models/shapes-sd/pipeline models/shapes-flow/pipeline \
        [--split train] [--per-category 32] [--steps 10 20] [--guidance 1 2 3 5]

Used to choose each model's default evaluation settings (on the *train* split, so the held-out split
stays untouched), which are then written to its ``vgrl.json`` as ``eval_steps`` / ``eval_guidance``.
"""

from __future__ import annotations

import argparse
import time

import torch

from vgrl import backbones
from vgrl.evaluation.world_eval import eval_set, evaluate
from vgrl.worlds.shapes import ShapesWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--per-category", type=int, default=32)
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = ShapesWorld()
    es = eval_set(world, args.split, args.per_category, seed=0)
    cats = sorted(set(es.categories), key=es.categories.index)
    print(f"split {args.split}, {args.per_category} samples per category, ODE sampler\n")
    print("| model | steps | guidance | overall | " + " | ".join(cats) + " | seconds |")
    print("|---|---:|---:|---:|" + "---:|" * len(cats) + "---:|")
    for path in args.models:
        bb = backbones.load(path)
        for steps in args.steps:
            for g in args.guidance:
                start = time.perf_counter()
                r = evaluate(bb, world, es, num_steps=steps, guidance_scale=g, progress=False)
                cells = " | ".join(f"{r.accuracy[c]:.3f}" for c in cats)
                print(f"| {path} | {steps} | {g:g} | {r.overall_accuracy:.3f} | {cells} | "
                      f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
