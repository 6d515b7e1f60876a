"""``vgrl train-reward``: fit a Bradley–Terry reward model (:mod:`vgrl.rewards.learned_bt`) to preference pairs.

Objective, over pairs ``(p, a = chosen, b = rejected)`` of the training split::

    L(theta) = E[ -log sigmoid(r_theta(a, p) - r_theta(b, p)) ] = E[ softplus(r_theta(b, p) - r_theta(a, p)) ]

minimised with AdamW on random minibatches. A seeded random ``heldout`` fraction of the pairs is never
trained on; its pairwise accuracy ``mean[r(a) > r(b)]`` (ties count 1/2) and loss go to ``OUT/eval.json``.
Writes ``OUT/model.safetensors``, ``OUT/config.json`` (architecture + settings) and ``OUT/eval.json``.

Pairs are read by :func:`load_pairs` alone, through :class:`vgrl.data.preferences.PreferenceDataset`
(``pairs.jsonl`` with ``prompt``, ``chosen``, ``rejected`` image paths relative to the index and optional
``metadata``; format in docs/preferences.md), whose errors name the file and each bad line.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vgrl.rewards.learned_bt import CONFIG, WEIGHTS, BTRewardNet, resize

EVAL = "eval.json"


@dataclass
class TrainRewardSettings:
    """Options of ``vgrl train-reward`` (see ``vgrl train-reward --help``)."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    heldout: float = 0.1
    seed: int = 0
    resolution: int = 32
    width: int = 32
    text: bool = True
    threads: int = 1


@dataclass
class PairTensors:
    """Pairs as tensors at the model resolution: ``chosen``/``rejected`` ``(N, 3, R, R)`` in [0, 1]."""

    prompts: list[str]
    chosen: Tensor
    rejected: Tensor


def bt_loss(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """Mean Bradley–Terry negative log-likelihood ``-log sigmoid(r_chosen - r_rejected)`` (stable softplus form)."""
    return F.softplus(r_rejected - r_chosen).mean()


def pairwise_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> float:
    """Fraction of pairs ranked right, ties counting one half."""
    return float(((r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()).mean())


def load_pairs(path: str | Path, resolution: int) -> PairTensors:
    """Read and validate a preference dataset (index file or directory holding ``pairs.jsonl``) and resize
    its images to ``resolution``. The only function that knows the on-disk format; raises
    :class:`vgrl.data.preferences.PreferenceDataError` naming the index and each bad line."""
    from vgrl.data.preferences import PreferenceDataset

    ds = PreferenceDataset.load(path)
    if ds.layout != "image":
        raise ValueError(f"{ds.index}: the Bradley-Terry reward model scores images, but this dataset holds "
                         f"{ds.layout} samples")
    chosen, rejected = [], []
    for i in range(len(ds)):
        c, r = ds.images([i])
        chosen.append(resize(c, resolution))
        rejected.append(resize(r, resolution))
    return PairTensors([rec.prompt for rec in ds.records], torch.cat(chosen).clamp(0, 1),
                       torch.cat(rejected).clamp(0, 1))


def split(n: int, heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``n`` pairs into (train, held-out) indices; at least one of each."""
    if n < 2:
        raise ValueError(f"need at least 2 preference pairs to hold some out, got {n}")
    if not 0 < heldout < 1:
        raise ValueError(f"heldout must be a fraction in (0, 1), got {heldout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = min(max(1, round(heldout * n)), n - 1)
    return sorted(perm[k:]), sorted(perm[:k])


@torch.no_grad()
def evaluate(net: BTRewardNet, data: PairTensors, idx: list[int], batch_size: int = 256) -> dict[str, float]:
    """Pairwise accuracy and BT loss of ``net`` on pairs ``idx``."""
    rc, rr = [], []
    for lo in range(0, len(idx), batch_size):
        b = idx[lo:lo + batch_size]
        prompts = [data.prompts[i] for i in b]
        rc.append(net(data.chosen[b], prompts))
        rr.append(net(data.rejected[b], prompts))
    rc, rr = torch.cat(rc), torch.cat(rr)
    return {"accuracy": pairwise_accuracy(rc, rr), "loss": float(bt_loss(rc, rr)), "pairs": len(idx)}


def train_reward(pairs: str | Path, out_dir: str | Path, settings: TrainRewardSettings | None = None) -> dict:
    """Fit a :class:`BTRewardNet` to the pairs at ``pairs``; write the model and ``eval.json`` to ``out_dir``.

    Returns the contents of ``eval.json``: held-out and training accuracy / loss, pair counts, seconds.
    """
    from safetensors.torch import save_file

    s = settings or TrainRewardSettings()
    if s.steps < 1 or s.batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {s.steps} and {s.batch_size}")
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        start = time.perf_counter()
        data = load_pairs(pairs, s.resolution)
        train_idx, held_idx = split(len(data.prompts), s.heldout, s.seed)
        torch.manual_seed(s.seed)
        net = BTRewardNet(width=s.width, resolution=s.resolution, text=s.text)
        opt = torch.optim.AdamW(net.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        rng = np.random.default_rng(s.seed)
        for _ in range(s.steps):
            b = rng.choice(train_idx, size=min(s.batch_size, len(train_idx)), replace=False).tolist()
            prompts = [data.prompts[i] for i in b]
            loss = bt_loss(net(data.chosen[b], prompts), net(data.rejected[b], prompts))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        held, train = evaluate(net, data, held_idx), evaluate(net, data, train_idx)
    finally:
        torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / WEIGHTS)
    (out / CONFIG).write_text(json.dumps({"model": net.config, "settings": asdict(s), "pairs": str(pairs)},
                                         indent=2) + "\n")
    result = {"heldout_accuracy": held["accuracy"], "heldout_loss": held["loss"], "heldout_pairs": held["pairs"],
              "train_accuracy": train["accuracy"], "train_loss": train["loss"], "train_pairs": train["pairs"],
              "steps": s.steps, "seconds": round(time.perf_counter() - start, 2)}
    (out / EVAL).write_text(json.dumps(result, indent=2) + "\n")
    return result


def make_brightness_pairs(out_dir: str | Path, n: int = 400, size: int = 32, seed: int = 0,
                          prompted: bool = False) -> Path:
    """Write a synthetic preference dataset (``pairs.jsonl`` + PNGs) to ``out_dir``; returns the index.

    Each image is smooth random texture (4x4 noise, bicubic-upsampled) around a random brightness; pairs
    differ in mean brightness by at least 0.05. ``prompted=False``: the brighter image is chosen (prompts
    are neutral). ``prompted=True``: prompt "a bright picture" prefers the brighter image, "a dark picture"
    the darker one, so only a prompt-conditioned model can fit it.
    """
    from PIL import Image

    from vgrl.data.preferences import write_index

    out, rng = Path(out_dir), np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)

    def image(level: float) -> np.ndarray:
        tex = torch.from_numpy(rng.normal(0, 0.15, (1, 3, 4, 4))).float()
        tex = F.interpolate(tex, size=(size, size), mode="bicubic", align_corners=False)
        return ((tex + level).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    rows = []
    for i in range(n):
        while True:
            a, b = image(rng.uniform(0.15, 0.85)), image(rng.uniform(0.15, 0.85))
            if abs(a.mean() - b.mean()) / 255 >= 0.05:
                break
        bright, dark = (a, b) if a.mean() > b.mean() else (b, a)
        want_dark = prompted and rng.random() < 0.5
        prompt = ("a dark picture" if want_dark else "a bright picture") if prompted else \
            str(rng.choice(["a picture", "a photo of a scene", "an image"]))
        chosen, rejected = (dark, bright) if want_dark else (bright, dark)
        for role, arr in (("chosen", chosen), ("rejected", rejected)):
            Image.fromarray(arr).save(out / "images" / f"{i:05d}_{role}.png")
        rows.append({"id": f"pair{i:05d}", "prompt": prompt, "chosen": f"images/{i:05d}_chosen.png",
                     "rejected": f"images/{i:05d}_rejected.png"})
    return write_index(out / "pairs.jsonl", rows)
