"""Training throughput: images per second for rollout and update, and the share of iteration time
spent outside model forward/backward passes.

Runs a few iterations of a training config (default: the quickstart) and times, inside each
iteration, the denoiser's forward passes (``backbone.predict``), the autoencoder's decode and every
``backward()``. Whatever is left — kernel maths, the reward, advantages, optimiser steps, data —
is the trainer's overhead (target: under 5% of iteration time).

    python benchmarks/throughput.py [--config configs/quickstart.yaml] [--iterations 5] [--threads 2] [a.b=c ...]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="config overrides a.b=c")
    args = parser.parse_args()

    from vgrl.training import loop as trainer
    from vgrl.config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [*args.overrides, f"train.threads={args.threads}"])
    run = trainer.build(cfg)
    clock: dict[str, float] = defaultdict(float)
    _time_method(run.backbone, "predict", "denoiser forward", clock)
    _time_method(run.backbone, "decode", "autoencoder decode", clock)
    original_backward = torch.Tensor.backward

    def backward(self, *a, **k):
        started = time.perf_counter()
        try:
            return original_backward(self, *a, **k)
        finally:
            clock["backward"] += time.perf_counter() - started

    torch.Tensor.backward = backward
    counters = trainer.Counters()
    trainer.iterate(run, counters)  # warm-up
    clock.clear()
    rollout_s = update_s = total = 0.0
    for _ in range(args.iterations):
        started = time.perf_counter()
        row, _ = trainer.iterate(run, counters)
        total += time.perf_counter() - started
        rollout_s += row["seconds_rollout"]
        update_s += row["seconds_update"]
    torch.Tensor.backward = original_backward
    images = cfg.batch_size * args.iterations
    model = sum(clock.values())
    print(f"config {args.config}: {cfg.batch_size} images/iteration, {cfg.sampling.num_steps} steps, guidance "
          f"{cfg.sampling.guidance_scale:g}, {args.threads} threads, {args.iterations} iterations")
    print(f"| phase | seconds/iteration | images/s |\n|---|---:|---:|")
    print(f"| rollout + decode + reward | {rollout_s / args.iterations:.2f} | {images / rollout_s:.1f} |")
    print(f"| update | {update_s / args.iterations:.2f} | {images / update_s:.1f} |")
    print(f"| whole iteration | {total / args.iterations:.2f} | {images / total:.1f} |")
    print(f"\n| where the time goes | share |\n|---|---:|")
    for name, seconds in sorted(clock.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {100 * seconds / total:.1f}% |")
    print(f"| outside model forward/backward | {100 * (total - model) / total:.1f}% |")


def _time_method(obj, name: str, label: str, clock: dict[str, float]) -> None:
    method = getattr(obj, name)

    def timed(*a, **k):
        started = time.perf_counter()
        try:
            return method(*a, **k)
        finally:
            clock[label] += time.perf_counter() - started

    setattr(obj, name, timed)


if __name__ == "__main__":
    main()
