"""Plot the shipped base models' pretraining curves (from their metrics.jsonl) as SVGs for the docs.

    python benchmarks/pretrain_curves.py [--models models/shapes-sd models/shapes-flow] [--out docs/img]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vgrl.media import svg_line_plot


def smooth(points: list[tuple[float, float]], k: int = 5) -> list[tuple[float, float]]:
    out = []
    for i, (x, _) in enumerate(points):
        window = [y for _, y in points[max(0, i - k + 1): i + 1]]
        out.append((x, sum(window) / len(window)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["models/shapes-sd", "models/shapes-flow"])
    parser.add_argument("--out", default="docs/img")
    args = parser.parse_args()
    denoise, vae = {}, {}
    for folder in args.models:
        rows = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]
        name = Path(folder).name
        denoise[name] = smooth([(r["step"], r["loss"]) for r in rows if r["stage"] != "vae"])
        vae[name] = [(r["step"], r["recon_mse"]) for r in rows if r["stage"] == "vae"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain_denoiser_loss.svg").write_text(svg_line_plot(
        denoise, title="denoiser loss (moving average of 5 logged points)", xlabel="step", ylabel="loss", log_y=True))
    (out / "pretrain_vae_recon.svg").write_text(svg_line_plot(
        vae, title="autoencoder reconstruction MSE", xlabel="step", ylabel="MSE (pixels in [-1, 1])", log_y=True))
    print(f"wrote {out / 'pretrain_denoiser_loss.svg'} and {out / 'pretrain_vae_recon.svg'}")


if __name__ == "__main__":
    main()
