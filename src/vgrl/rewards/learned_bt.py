"""A learned preference reward: a small prompt-conditioned CNN fitted by Bradley–Terry to preference pairs.

``vgrl train-reward`` (:mod:`vgrl.reward_training`) fits ``r_theta(x, p)`` so that

    P(a preferred to b | p) = sigmoid(r_theta(a, p) - r_theta(b, p))

(Bradley & Terry 1952; the reward-model objective of RLHF, Ouyang et al. arXiv 2203.02155, and of
ImageReward, arXiv 2304.05977), and this reward loads the result. ``r`` is a logit: only differences
are meaningful, ``r(a) - r(b) = 1`` means ``a`` is preferred with probability ``sigmoid(1) = 0.73``.

Architecture (:class:`BTRewardNet`): the image is resized to ``resolution`` x ``resolution`` (bilinear,
antialiased; aspect ratio not kept), mapped to ``[-1, 1]`` and encoded by four 3x3 conv + SiLU layers
(stride 1, 2, 2, 2) and global average pooling into ``f`` (``2 * width``-d). The prompt is a hashed bag of
words: lower-cased alphanumeric words, each hashed (64-bit BLAKE2b) into one of ``buckets`` learned embeddings,
averaged into ``e`` (``2 * width``-d; zeros for an empty prompt). The head is an MLP on ``[f, f * e]``,
so the prompt can re-weight image features but never scores on its own. Everything is differentiable
in the pixels. Hash collisions and word order are ignored: the text pathway is deliberately simple.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from vgrl._lazy import lazy
from vgrl.rewards.base import Reward, RewardOptions
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")
F = lazy("torch.nn.functional")
nn = lazy("torch.nn")

WEIGHTS, CONFIG = "model.safetensors", "config.json"
_WORD = re.compile(r"[a-z0-9]+")


def _bucket(word: str, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") % buckets


def hash_prompts(prompts: list[str], buckets: int) -> tuple[Tensor, Tensor]:
    """``(indices, offsets)`` for ``nn.EmbeddingBag``: bucket ``blake2b-64(word) % buckets`` of each word."""
    indices, offsets = [], []
    for p in prompts:
        offsets.append(len(indices))
        indices += [_bucket(w, buckets) for w in _WORD.findall(p.lower())]
    return torch.tensor(indices, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def resize(images: Tensor, resolution: int) -> Tensor:
    """``(B, 3, H, W)`` -> ``(B, 3, R, R)`` float32 (bilinear, antialiased; a no-op at ``R``); differentiable."""
    x = images.float()
    if tuple(x.shape[-2:]) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    return x


@functools.cache
def bt_reward_net() -> type:
    """:class:`BTRewardNet`, defined at its first use: it subclasses ``torch.nn.Module``, and importing this module
    (``vgrl validate`` reads the reward's options) must not import torch."""

    class BTRewardNet(nn.Module):
        """``(images (B, 3, H, W) in [0, 1], prompts) -> (B,)`` reward logits; see the module docstring."""

        def __init__(self, width: int = 32, hidden: int = 64, buckets: int = 1024, resolution: int = 32,
                     text: bool = True) -> None:
            super().__init__()
            self.config = dict(width=width, hidden=hidden, buckets=buckets, resolution=resolution, text=text)
            w, d = width, 2 * width
            self.trunk = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1), nn.SiLU(), nn.Conv2d(w, d, 3, 2, 1), nn.SiLU(),
                                       nn.Conv2d(d, d, 3, 2, 1), nn.SiLU(), nn.Conv2d(d, d, 3, 2, 1), nn.SiLU())
            self.words = nn.EmbeddingBag(buckets, d, mode="mean") if text else None
            self.head = nn.Sequential(nn.Linear(2 * d if text else d, hidden), nn.SiLU(), nn.Linear(hidden, 1))

        def forward(self, images: Tensor, prompts: list[str]) -> Tensor:
            f = self.trunk(resize(images, self.config["resolution"]) * 2 - 1).mean((2, 3))
            if self.words is not None:
                idx, off = hash_prompts(prompts, self.config["buckets"])
                e = self.words(idx.to(f.device), off.to(f.device))
                f = torch.cat([f, f * e], dim=1)
            return self.head(f).squeeze(1)
    return BTRewardNet


def load_model(path: str | Path) -> BTRewardNet:
    """The trained net in ``path`` (``model.safetensors`` + ``config.json``), float32, eval, frozen."""
    from safetensors.torch import load_file

    path = Path(path)
    missing = [f for f in (WEIGHTS, CONFIG) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"reward 'learned_bt': no trained reward model at {path} (missing "
                                f"{', '.join(missing)}); train one with `vgrl train-reward --pairs DATA --out {path}`")
    cfg = json.loads((path / CONFIG).read_text())
    if "model" not in cfg:
        raise ValueError(f"reward 'learned_bt': {path / CONFIG} has no 'model' entry; was it written by "
                         "`vgrl train-reward`?")
    net = bt_reward_net()(**cfg["model"])
    net.load_state_dict({k: v.float() for k, v in load_file(path / WEIGHTS).items()})
    return net.eval().requires_grad_(False)


class LearnedBTOptions(RewardOptions):
    path: str = Field(description=f"directory written by `vgrl train-reward` ({WEIGHTS}, {CONFIG})")


class LearnedBT(Reward):
    """Bradley–Terry reward logit ``r_theta(x, p)``; ``details["bt_logit"]``."""

    name = "learned_bt"
    differentiable = True
    granularity = "pointwise"
    Options: ClassVar[type[RewardOptions]] = LearnedBTOptions

    @classmethod
    def example(cls, root: Path) -> LearnedBT:
        """On a tiny random-init net written to ``root`` as `vgrl train-reward` writes one (the conformance
        suite's instance)."""
        from safetensors.torch import save_file

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4)
            net = bt_reward_net()(width=8, hidden=16, buckets=64, resolution=32)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, Path(root) / WEIGHTS)
        (Path(root) / CONFIG).write_text(json.dumps({"model": net.config}))
        return cls(path=str(root))

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.net = load_model(self.options.path)

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        scores = self.net.to(images.device)(images, prompts).float()
        return RewardOutput(scores=scores, details={"bt_logit": scores.detach()})


COMPONENT = LearnedBT


def __getattr__(name: str) -> Any:
    """``BTRewardNet`` of this module (PEP 562), defined at its first use by :func:`bt_reward_net`."""
    if name == "BTRewardNet":
        return bt_reward_net()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
