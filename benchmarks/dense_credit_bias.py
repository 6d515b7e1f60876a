"""Where NFT's dense credit pushes: the signed optimality weight ``2 p(x) - 1`` on pixels with local evidence.

Draws a few rollouts of a training config (default: the suite's ``nft_dense`` row, i.e. the quickstart with
``reward.dense=true algorithm.dense_credit=1.0``) with the model it names, untrained, and passes them through the
algorithm's own ``prepare``: ``weights`` is then the per-pixel optimality map ``p(x)`` and ``optimality(adv)`` the
scalar one. Pixels whose credit differs from the sample's score are the checker's local evidence (the detected
objects); the rest is background. ``2p - 1 > 0`` pulls a pixel towards NFT's positive policy (towards what was
drawn there), ``< 0`` towards the negative one (away from it). Prints the mean of ``2p - 1`` over evidence and
background pixels, dense and scalar.

    python benchmarks/dense_credit_bias.py [--config configs/quickstart.yaml] [--rollouts 4] [--threads 1] [a.b=c ...]
"""

from __future__ import annotations

import argparse

import torch

DENSE = ["reward.dense=true", "algorithm.dense_credit=1.0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help=f"config overrides a.b=c (after {' '.join(DENSE)})")
    args = parser.parse_args()

    from vgrl.training import loop as trainer
    from vgrl.algorithms.nft import EVIDENCE_TOL, optimality
    from vgrl.config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, [*DENSE, *args.overrides, f"train.threads={args.threads}"])
    if cfg.algorithm.name != "nft":
        raise SystemExit(f"--config: algorithm {cfg.algorithm.name!r}; this measures nft's dense credit")
    run = trainer.build(cfg)
    sums = {k: 0.0 for k in ("evidence_dense", "evidence_scalar", "background_dense", "background_scalar")}
    counts = {"evidence": 0, "background": 0, "below": 0, "above": 0}
    for _ in range(args.rollouts):  # the trainer's own COLLECT, SCORE and PREPARE; no update
        c = trainer.collect(run)
        reward = run.reward(c.images, c.prompts, c.metadata)
        batch = trainer.prepare(run, c, reward, reward.scores)
        dev = reward.dense - reward.scores.view(-1, 1, 1)
        evidence = dev.abs() > EVIDENCE_TOL
        dense = 2 * batch.weights - 1
        scalar = (2 * optimality(batch.adv, run.algorithm.options.adv_clip) - 1).view(-1, 1, 1).expand_as(dense)
        for where, mask in (("evidence", evidence), ("background", ~evidence)):
            sums[f"{where}_dense"] += dense[mask].sum().item()
            sums[f"{where}_scalar"] += scalar[mask].sum().item()
            counts[where] += int(mask.sum())
        counts["below"] += int((dev < -EVIDENCE_TOL).sum())
        counts["above"] += int((dev > EVIDENCE_TOL).sum())

    total = counts["evidence"] + counts["background"]
    print(f"{args.rollouts} rollouts x {cfg.batch_size} images of {cfg.backbone.path}, lambda "
          f"{run.algorithm.options.dense_credit}")
    print("| pixels | share of pixels | mean 2p-1, dense credit | mean 2p-1, scalar credit |")
    print("|---|---:|---:|---:|")
    for where in ("evidence", "background"):
        n = max(counts[where], 1)
        print(f"| {where} | {counts[where] / total:.3f} | {sums[f'{where}_dense'] / n:+.4f} | "
              f"{sums[f'{where}_scalar'] / n:+.4f} |")
    print(f"evidence pixels below their sample's score: {counts['below']}, above: {counts['above']}")


if __name__ == "__main__":
    main()
