"""Advantages from rewards: pure functions plus DDPO's per-prompt statistics tracker.

Group-relative advantage (GRPO; Flow-GRPO arXiv 2505.05470, DanceGRPO arXiv 2505.07818): for sample
``i`` of prompt group ``g``::

    A_i = (r_i - mean_g(r)) / (std_g(r) + eps)        (per-group std)
    A_i = (r_i - mean_g(r)) / (std(r) + eps)          (global std, ``global_std=True``)

with population standard deviations (as numpy's ``std``, which the reference code uses), then
optionally clipped to ``[-clip, clip]``. DDPO (arXiv 2305.13301) normalises by running statistics of
each prompt's recent rewards instead (:class:`PerPromptStatTracker`).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from vgrl._lazy import lazy

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


def _check(rewards: Tensor, group_ids: Tensor) -> None:
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards and group_ids must both have shape (B,), got {tuple(rewards.shape)} and "
                         f"{tuple(group_ids.shape)}")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        raise ValueError(f"non-finite rewards at samples {bad}")


def group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``(mean, std)`` of the sample's group (population std), each ``(B,)`` float32."""
    _check(rewards, group_ids)
    r = rewards.to(torch.float32)
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float32).index_add_(0, inverse, r)
    means = sums / counts
    sq = torch.zeros(len(counts), dtype=torch.float32).index_add_(0, inverse, (r - means[inverse]) ** 2)
    return means[inverse], (sq / counts).sqrt()[inverse]


def group_advantages(rewards: Tensor, group_ids: Tensor, *, global_std: bool = False, eps: float = 1e-4,
                     clip: float | None = None) -> Tensor:
    """``(B,)`` group-relative advantages (see module docstring); a group of identical rewards gives 0."""
    mean, std = group_stats(rewards, group_ids)
    if global_std:
        std = rewards.to(torch.float32).std(unbiased=False).expand_as(mean)
    adv = (rewards.to(torch.float32) - mean) / (std + eps)
    return adv if clip is None else adv.clamp(-clip, clip)


def normalized_rewards(rewards: Tensor, group_ids: Tensor, mode: str, eps: float = 1e-4) -> Tensor:
    """``(B,)`` float32 rewards centred and scaled per prompt group (``"group"``), over the whole batch
    (``"batch"``), or left as they are (``"none"``, still checked finite)."""
    if mode == "none":
        _check(rewards, group_ids)
        return rewards.to(torch.float32)
    if mode not in ("group", "batch"):
        raise ValueError(f"normalisation mode must be 'group', 'batch' or 'none', got {mode!r}")
    return group_advantages(rewards, group_ids if mode == "group" else torch.zeros_like(group_ids), eps=eps)


class PerPromptStatTracker:
    """DDPO's per-prompt reward normaliser: advantages from each prompt's recent rewards.

    Keeps the last ``buffer_size`` rewards of every prompt; while a prompt has fewer than
    ``min_count`` of them, the whole batch's mean and std are used instead. ``state_dict`` /
    ``load_state_dict`` make resume exact.
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16, eps: float = 1e-6) -> None:
        if buffer_size < 1 or not 1 <= min_count <= buffer_size:
            raise ValueError(f"need buffer_size >= 1 and 1 <= min_count <= buffer_size, got {buffer_size}, {min_count}")
        self.buffer_size, self.min_count, self.eps = buffer_size, min_count, eps
        self.buffers: dict[str, deque[float]] = {}

    def update(self, prompts: list[str], rewards: Tensor) -> Tensor:
        """Add this batch's rewards, then return its ``(B,)`` float32 advantages."""
        if len(prompts) != rewards.shape[0] or rewards.ndim != 1:
            raise ValueError(f"{len(prompts)} prompts but rewards of shape {tuple(rewards.shape)}")
        _check(rewards, torch.zeros(len(prompts)))
        r = rewards.to(torch.float32)
        adv = torch.empty_like(r)
        batch_mean, batch_std = r.mean(), r.std(unbiased=False)
        for prompt in dict.fromkeys(prompts):
            idx = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            buf = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buf.extend(r[idx].tolist())
            if len(buf) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                hist = torch.tensor(list(buf), dtype=torch.float32)
                mean, std = hist.mean(), hist.std(unbiased=False)
            adv[idx] = (r[idx] - mean) / (std + self.eps)
        return adv

    def state_dict(self) -> dict:
        return {"buffer_size": self.buffer_size, "min_count": self.min_count, "eps": self.eps,
                "buffers": {p: list(b) for p, b in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffer_size, self.min_count, self.eps = state["buffer_size"], state["min_count"], state["eps"]
        self.buffers = {p: deque(b, maxlen=self.buffer_size) for p, b in state["buffers"].items()}
