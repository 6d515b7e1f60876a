"""Reward-weighted regression: the denoising loss on the rollout's own samples, weighted by exp(A / temperature).

After Peters & Schaal (ICML 2007, "Reinforcement learning by reward-weighted regression for operational
space control"); for text-to-image models Lee et al. (arXiv 2302.12192) weight the denoising loss of
generated images by their reward, and DDPO (arXiv 2305.13301) compares against RWR as a baseline.
Samples come from any sampler (the ``ode`` kernel included): only the clean samples ``x0`` are used.
For sample ``i`` with reward ``r_i``::

    A_i = (r_i - mean(r)) / (std(r) + eps)     over the batch (normalize: batch), its prompt group (group);
    A_i = r_i                                  (normalize: none)
    w_i = exp(A_i / temperature) / mean_{j in S(i)} exp(A_j / temperature)
    w_i <- min(w_i, max_weight)

with ``S(i)`` the whole batch (``weights: batch``) or the sample's prompt group (``weights: group``, a
softmax within the group, scaled so the group's weights average 1). At each loss unit (``num_timesteps``
per sample) draw ``t, eps`` from the sample's seeded generator and (:mod:`vgrl.algorithms._forward`)::

    L = (1 / B) sum_i w_i [mean_dims (pred_i - target_i)^2 + kl mean_dims (pred_i - ref_i)^2]
    pred = backbone.predict(x_t, t, c, guidance 1),   ref = the base model's prediction (only when kl > 0)

with ``target`` the prediction type's (velocity ``eps - x0``, ``eps``, or ``v``). Equal rewards give
``w = 1``: the plain denoising (fine-tuning) loss on the samples. Regressing a model on its own samples is a
self-consuming loop: without the anchor (``kl = 0``) the shapes quickstart setting drifts to blank images
within ~50 rollouts whatever the sampler, step count or LR (docs/algorithms/rwr.md); ``kl > 0`` pulls each
trained sample's prediction towards ``(target + kl ref) / (1 + kl)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from vgrl._lazy import lazy
from vgrl.advantages import normalized_rewards
from vgrl.algorithms._forward import RegressionOptions, weighted_denoising_loss
from vgrl.algorithms.base import Algorithm, Needs
from vgrl.types import Batch, RewardOutput, Trajectory

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class RWROptions(RegressionOptions):
    temperature: float = Field(1.0, gt=0, description="w = exp(A / temperature), normalised")
    normalize: Literal["batch", "group", "none"] = Field(
        "batch", description="A: rewards standardised over the batch, per prompt group, or raw")
    weights: Literal["batch", "group"] = Field(
        "batch", description="normalise the weights to mean 1 over the batch, or within each prompt group")
    max_weight: float | None = Field(5.0, gt=0, description="clip weights (after normalising) at this; None = off")
    eps: float = Field(1e-4, gt=0, description="added to the std when normalising")


def exp_weights(adv: Tensor, scope_ids: Tensor, temperature: float) -> Tensor:
    """``(B,)`` ``exp(A / T) / mean_scope exp(A / T)`` (computed stably; equal ``A`` within a scope give 1 exactly).

    Args:
        adv: ``(B,)`` advantages; ``scope_ids``: ``(B,)`` the normalising set of each sample.
    """
    logits = adv.to(torch.float32) / temperature
    _, inverse = torch.unique(scope_ids, return_inverse=True)
    n = int(inverse.max()) + 1
    top = torch.full((n,), -torch.inf).scatter_reduce(0, inverse, logits, "amax")
    e = torch.exp(logits - top[inverse])
    sums = torch.zeros(n).index_add_(0, inverse, e)
    counts = torch.zeros(n).index_add_(0, inverse, torch.ones_like(e))
    return e / (sums / counts)[inverse]


class RWR(Algorithm):
    """Reward-weighted regression on generated samples; the maths is in the module docstring."""

    name = "rwr"
    Options = RWROptions

    def __init__(self, options: RWROptions, reward=None) -> None:
        super().__init__(options, reward)
        self._stats: dict[str, float] = {}

    @property
    def needs(self) -> Needs:
        o = self.options
        return Needs(groups=o.normalize == "group" or o.weights == "group", reference=o.kl > 0)

    def prepare(self, traj: Trajectory, reward: RewardOutput, group_ids: Tensor,
                prompts: list[str] | None = None, metadata: list[Any] | None = None) -> Batch:
        """Rewards -> advantages ``adv`` and clipped weights ``weights``, both ``(B,)`` float32."""
        o, scores = self.options, reward.scores
        adv = normalized_rewards(scores, group_ids, o.normalize, o.eps)
        w = exp_weights(adv, group_ids if o.weights == "group" else torch.zeros_like(group_ids), o.temperature)
        if o.max_weight is not None:
            w = w.clamp(max=o.max_weight)
        self._stats = {"weight_max": w.max().item(), "weight_mean": w.mean().item(),
                       "ess": (w.sum() ** 2 / (len(w) * (w**2).sum())).item()}
        return Batch(traj=traj, rewards=scores, adv=adv, group_ids=group_ids, prompts=prompts, metadata=metadata,
                     weights=w)

    def units(self, batch: Batch) -> list[int]:
        """``num_timesteps`` draws of ``(t, eps)`` per sample."""
        return list(range(self.options.num_timesteps))

    def loss(self, backbone, kernel, batch: Batch, step_idx: int, ref=None) -> tuple[Tensor, dict[str, float]]:
        """The weighted denoising loss at draw ``step_idx`` (plus the anchor to ``ref`` when ``kl > 0``); ``kernel``
        is unused."""
        if batch.weights is None:
            raise ValueError("rwr needs the sample weights in batch.weights: build the batch with prepare()")
        loss, metrics = weighted_denoising_loss(backbone, batch, step_idx, self.options, batch.weights, ref)
        return loss, {**metrics, **self._stats}


COMPONENT = RWR
