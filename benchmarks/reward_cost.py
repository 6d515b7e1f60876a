"""Cost per image of the built-in offline rewards on this CPU; prints a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/reward_cost.py [--batch 8] [--repeats 5] [--threads 1]

Inputs: ``jpeg``, ``shapes_checker``: ground-truth shapes-world renders (32x32) with their metadata;
``ocr``: words rendered by ``vgrl.worlds._text_prompts.render_text`` (64x64 and 128x128);
``classifier``, ``diversity``: the same renders and shapes images (EfficientNet resizes every input to
224x224, so its cost hardly depends on the input size). ``forward`` is the best of ``--repeats`` calls
after one warm-up call (model loading is reported separately as ``first call``); ``+ backward`` adds
the gradient of the summed scores with respect to the images, for differentiable rewards.
"""

from __future__ import annotations

import argparse
import time

import torch

from vgrl import rewards
from vgrl.worlds._text_prompts import render_text, text_prompts
from vgrl.worlds.shapes import ShapesWorld
from shapes_checker_speed import best_time  # benchmarks/ is on sys.path when run as a script


def cases(batch: int, threads: int):
    """(reward name, reward, input description, images, prompts, metadata)."""
    world = ShapesWorld(32)
    metas = [p.meta for p in world.prompts("train")][:batch]
    shapes = world.render(metas, seed=0)
    shape_prompts = [p.text for p in world.prompts("train")][:batch]
    group = [shape_prompts[0]] * (batch // 2) + [shape_prompts[1]] * (batch - batch // 2)
    tps = (text_prompts("train")[::4] * batch)[:batch]  # first template of each word
    words = [p.meta["text"] for p in tps]
    text_p, text_m = [p.prompt for p in tps], [p.meta for p in tps]
    ocr = rewards.get("ocr", threads=threads)
    classifier = rewards.get("classifier", class_name="espresso")
    diversity = rewards.get("diversity")
    return [
        ("jpeg", rewards.get("jpeg"), "shapes 32x32", shapes, shape_prompts, metas),
        ("shapes_checker", rewards.get("shapes_checker"), "shapes 32x32", shapes, shape_prompts, metas),
        ("ocr", ocr, "text 64x64", render_text(words, 64), text_p, text_m),
        ("ocr", ocr, "text 128x128", render_text(words, 128), text_p, text_m),
        ("classifier", classifier, "shapes 32x32", shapes, shape_prompts, metas),
        ("classifier", classifier, "text 128x128", render_text(words, 128), text_p, text_m),
        ("diversity", diversity, f"shapes 32x32, 2 groups of {batch // 2}", shapes, group, metas),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, onnxruntime threads (ocr): {args.threads}, "
          f"batch: {args.batch}\n")
    print("| reward | input | first call s | forward ms/image | forward + backward ms/image |")
    print("|---|---|---|---|---|")
    for name, reward, what, images, prompts, metas in cases(args.batch, args.threads):
        t = time.perf_counter()
        reward(images, prompts, metas)
        first = time.perf_counter() - t
        fwd = best_time(lambda: reward(images, prompts, metas), args.repeats)
        bwd = "-"
        if reward.differentiable:
            def step():
                x = images.clone().requires_grad_(True)
                torch.autograd.grad(reward(x, prompts, metas).scores.sum(), x)
            bwd = f"{1000 * best_time(step, args.repeats) / len(images):.1f}"
        print(f"| {name} | {what} | {first:.2f} | {1000 * fwd / len(images):.2f} | {bwd} |")


if __name__ == "__main__":
    main()
