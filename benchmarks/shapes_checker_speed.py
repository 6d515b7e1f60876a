"""Time the ``shapes`` world's checker (and renderer) and print a markdown table.

    python benchmarks/shapes_checker_speed.py [--resolutions 32 64] [--batches 64 256 1024] [--repeats 3]

Ground-truth renders of prompts drawn from every category of the train and held-out splits; the
time is the best of ``--repeats`` runs of ``ShapesWorld.check`` (detection + rules, CPU).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vgrl.worlds.shapes import ShapesWorld


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch threads: {torch.get_num_threads()}\n")
    print("| resolution | images | render s | check s | check images/s | pass rate |")
    print("|---|---|---|---|---|---|")
    for res in args.resolutions:
        world = ShapesWorld(res)
        metas = [p.meta for p in world.prompts("train") + world.prompts("heldout")]
        rng = np.random.default_rng(0)
        for n in args.batches:
            batch = [metas[i] for i in rng.integers(len(metas), size=n)]
            render_s = best_time(lambda: world.render(batch, 0), args.repeats)
            images = world.render(batch, 0)
            check_s = best_time(lambda: world.check(images, batch), args.repeats)
            rate = world.check(images, batch).passed.float().mean().item()
            print(f"| {res} | {n} | {render_s:.3f} | {check_s:.3f} | {n / check_s:,.0f} | {rate:.3f} |")


if __name__ == "__main__":
    main()
