"""Diffusion-NPO (Wang et al., arXiv 2505.11245): a negative-preference model for the unconditional branch of CFG.

Classifier-free guidance steers sampling *away from* the unconditional prediction::

    pred = pred(x_t, t, empty) + w [pred(x_t, t, c) - pred(x_t, t, empty)]

so a model whose unconditional (or negative-prompt) branch has learned what is *dis*preferred makes
guidance push away from those features. NPO trains such a *negative model* with an existing
preference method and the preference inverted; here the Diffusion-DPO loss
(:mod:`vgrl.algorithms.diffusion_dpo`) with winner and loser swapped: for a pair ``(x_w, x_l)``
(``x_w`` preferred by the reward or the dataset)::

    z_neg = -(beta / 2) [(e_l - e_l^ref) - (e_w - e_w^ref)]          L = mean_pairs -log sigmoid(z_neg)

with the errors ``e`` of :func:`~vgrl.algorithms.diffusion_dpo.pair_errors` (shared ``t, eps`` per pair;
the reference is the base model). ``branch`` chooses the conditioning the loss is applied under: the
pair's prompt (``conditional``), the empty prompt (``unconditional``: the branch CFG uses) or the mean
of both (``both``, the default). At sampling time the trained model replaces the base model in the
unconditional branch only (:class:`NegativeGuidance`)::

    pred = pred_neg(x_t, t, empty) + w [pred_base(x_t, t, c) - pred_neg(x_t, t, empty)]

``vgrl eval --model BASE --negative-model RUN/final/pipeline --guidance W`` evaluates that sampler.
The held-out evaluation *during* NPO training measures the negative model alone, so it is expected
to fall. Not implemented: the paper's weight-space merging of the negative model's update with a
scale, and its combination with a separately preference-tuned positive model (any pipeline directory
can be given as ``--model``, so a DPO-trained model with an NPO negative model works as is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from vgrl.algorithms._pairs import PairOptions, PairwiseAlgorithm, unconditional
from vgrl.algorithms.diffusion_dpo import preference_loss
from vgrl.types import Batch, Cond

if TYPE_CHECKING:
    from torch import Tensor


class NPOOptions(PairOptions):
    branch: Literal["conditional", "unconditional", "both"] = Field(
        "both", description="train the inverted-preference loss under the pair's prompt, the empty prompt "
                            "(CFG's unconditional branch; online needs sampling.guidance_scale > 1), or both")


class NPO(PairwiseAlgorithm):
    """Diffusion-NPO: Diffusion-DPO with the preference inverted; the maths is in the module docstring."""

    name = "npo"
    Options = NPOOptions

    def loss(self, backbone, kernel, batch: Batch, step_idx: int, ref=None) -> tuple[Tensor, dict[str, float]]:
        """The inverted DPO loss under the chosen ``branch``(es) at draw ``step_idx``; ``kernel`` is unused."""
        o = self.options
        losses, metrics = [], dict(self._stats)
        if o.branch in ("conditional", "both"):
            loss, m = preference_loss(backbone, ref, batch, step_idx, o, invert=True)
            losses.append(loss)
            metrics.update(m)
        if o.branch in ("unconditional", "both"):
            loss, m = preference_loss(backbone, ref, batch, step_idx, o, invert=True,
                                      cond=unconditional(batch.traj.cond), prefix="uncond_")
            losses.append(loss)
            metrics.update(m)
        return sum(losses) / len(losses), metrics


class NegativeGuidance:
    """A sampler-side backbone: ``base`` for the conditional branch, ``negative`` for the unconditional one.

    Exposes what :func:`vgrl.rollout.rollout`, :func:`vgrl.rollout.kernel_for` and the evaluator use
    (``encode``, ``timesteps``, ``init_noise``, ``predict``, ``decode``, ``prediction``, ``sample_shape``,
    ``time_kind``, ``scheduler``, ``device``: both models on ``base``'s); prompts are encoded by ``base``, whose text encoders
    the negative model shares when it was trained from ``base`` (vgrl trains the denoiser only).
    """

    def __init__(self, base, negative) -> None:
        if (negative.prediction, tuple(negative.sample_shape)) != (base.prediction, tuple(base.sample_shape)):
            raise ValueError(f"the negative model predicts {negative.prediction!r} on samples "
                             f"{tuple(negative.sample_shape)}; the base model {base.prediction!r} on "
                             f"{tuple(base.sample_shape)}: they must match (train the negative model from this base)")
        self.base, self.negative = base, negative
        self.name = f"{base.name}+npo"
        self.prediction, self.sample_shape, self.time_kind = base.prediction, base.sample_shape, base.time_kind
        self.scheduler, self.device = base.scheduler, base.device

    def encode(self, prompts: list[str], *, guidance: bool) -> Cond:
        return self.base.encode(prompts, guidance=guidance)

    def timesteps(self, num_steps: int) -> Tensor:
        return self.base.timesteps(num_steps)

    def init_noise(self, seeds) -> Tensor:
        return self.base.init_noise(seeds)

    def decode(self, x0: Tensor) -> Tensor:
        return self.base.decode(x0)

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond, guidance_scale: float) -> Tensor:
        """``pred_neg(x_t, t, empty) + w [pred_base(x_t, t, c) - pred_neg(x_t, t, empty)]``; ``w = 1``: base only."""
        use_cfg = self.base.check_guidance(cond, guidance_scale)
        cond_pred = self.base.predict(x_t, t, Cond(embeds=cond.embeds, pooled=cond.pooled), 1.0)
        if not use_cfg:
            return cond_pred
        neg = self.negative.predict(x_t, t, unconditional(cond), 1.0)
        return neg + guidance_scale * (cond_pred - neg)


COMPONENT = NPO
