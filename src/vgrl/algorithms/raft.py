"""RAFT (Dong et al., arXiv 2304.06767): reward-ranked fine-tuning, the denoising loss on the best samples only.

Each iteration ranks the rollout's samples by reward, keeps the top ones and fine-tunes on them with
the plain denoising loss; the others get weight 0. Samples come from any sampler (the ``ode`` kernel
included): only the clean samples ``x0`` are used. Within each ranking set ``S`` (a prompt group,
``scope: group``, or the whole batch, ``scope: batch``) of ``n`` samples::

    k     = top_k                   or  ceil(top_fraction n)      (at most n)
    w_i   = 1  if i is among the k highest rewards of S (ties: the earlier sample)  and  r_i >= min_reward
    w_i   = 0  otherwise

and at each loss unit (``num_timesteps`` per sample), with ``t, eps`` from the sample's seeded
generator (:mod:`vgrl.algorithms._forward`)::

    L = (1 / B) sum_i w_i [mean_dims (pred_i - target_i)^2 + kl mean_dims (pred_i - ref_i)^2]
    pred = backbone.predict(x_t, t, c, guidance 1),   ref = the base model's prediction (only when kl > 0)

Dropped samples are not run through the network, so their gradient is exactly zero.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from vgrl._lazy import lazy
from vgrl.algorithms._forward import RegressionOptions, weighted_denoising_loss
from vgrl.algorithms.base import Algorithm, Needs
from vgrl.types import Batch, RewardOutput, Trajectory

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class RAFTOptions(RegressionOptions):
    top_fraction: float | None = Field(0.25, gt=0, le=1, description="keep ceil(top_fraction n) samples of each "
                                                                      "ranking set")
    top_k: int | None = Field(None, ge=1, description="keep this many samples of each ranking set instead "
                                                       "(replaces the default top_fraction)")
    min_reward: float | None = Field(None, description="also drop samples whose reward is below this; None = off")
    scope: Literal["group", "batch"] = Field("group", description="rank within each prompt group, or the batch")

    @model_validator(mode="after")
    def _one_size(self) -> RAFTOptions:
        if self.top_k is not None and self.top_fraction is not None and "top_fraction" in self.model_fields_set:
            raise ValueError("give top_k or top_fraction, not both")
        if self.top_k is None and self.top_fraction is None:
            raise ValueError("give top_k or top_fraction (how many samples to keep)")
        return self


def keep_mask(rewards: Tensor, scope_ids: Tensor, top_k: int | None, top_fraction: float | None,
              min_reward: float | None = None) -> Tensor:
    """``(B,)`` bool: the top samples of each scope (``top_k`` or ``ceil(top_fraction n)``), optionally
    also ``rewards >= min_reward``; ties keep the earlier sample."""
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"non-finite rewards at samples {bad}")
    keep = torch.zeros(len(rewards), dtype=torch.bool)
    for scope in torch.unique(scope_ids):
        idx = (scope_ids == scope).nonzero().flatten()
        k = top_k if top_k is not None else math.ceil(top_fraction * len(idx))
        order = torch.sort(rewards[idx], descending=True, stable=True).indices
        keep[idx[order[:k]]] = True
    if min_reward is not None:
        keep &= rewards >= min_reward
    return keep


class RAFT(Algorithm):
    """Reward-ranked fine-tuning; the maths is in the module docstring."""

    name = "raft"
    Options = RAFTOptions

    def __init__(self, options: RAFTOptions, reward=None) -> None:
        super().__init__(options, reward)
        self._stats: dict[str, float] = {}

    @property
    def needs(self) -> Needs:
        return Needs(groups=self.options.scope == "group", reference=self.options.kl > 0)

    def prepare(self, traj: Trajectory, reward: RewardOutput, group_ids: Tensor,
                prompts: list[str] | None = None, metadata: list[Any] | None = None) -> Batch:
        """Rewards -> 0/1 weights (``weights`` and ``adv``, ``(B,)`` float32)."""
        o, scores = self.options, reward.scores
        scope = group_ids if o.scope == "group" else torch.zeros_like(group_ids)
        keep = keep_mask(scores, scope, o.top_k, None if o.top_k is not None else o.top_fraction, o.min_reward)
        w = keep.to(torch.float32)
        kept = scores[keep].to(torch.float32)
        self._stats = {"kept_fraction": w.mean().item()}
        if len(kept):  # no samples kept (min_reward): the key is absent for this iteration
            self._stats["kept_reward_mean"] = kept.mean().item()
        return Batch(traj=traj, rewards=scores, adv=w, group_ids=group_ids, prompts=prompts, metadata=metadata,
                     weights=w)

    def units(self, batch: Batch) -> list[int]:
        """``num_timesteps`` draws of ``(t, eps)`` per sample."""
        return list(range(self.options.num_timesteps))

    def loss(self, backbone, kernel, batch: Batch, step_idx: int, ref=None) -> tuple[Tensor, dict[str, float]]:
        """The denoising loss of the kept samples at draw ``step_idx`` (plus the anchor to ``ref`` when ``kl > 0``);
        ``kernel`` is unused."""
        if batch.weights is None:
            raise ValueError("raft needs the 0/1 weights in batch.weights: build the batch with prepare()")
        loss, metrics = weighted_denoising_loss(backbone, batch, step_idx, self.options, batch.weights, ref)
        return loss, {**metrics, **self._stats}


COMPONENT = RAFT
