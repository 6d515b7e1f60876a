"""DiffusionNFT (Zheng et al., arXiv 2509.16117): forward-process RL with implicit positive and negative policies.

No log-probabilities: NFT trains on the rollout's clean samples ``x0`` with a flow-matching style loss,
so any sampler works, the deterministic ``ode`` kernel included, and training is CFG-free (every
prediction is the conditional branch, ``guidance_scale=1``). For sample ``i`` of prompt group ``g``
with reward ``r_i``::

    A_i = (r_i - mean_g(r)) / (std + eps)       std: of the whole batch (global_std, the paper's code) or of g
    p_i = 0.5 + 0.5 clip(A_i / adv_clip, -1, 1)          optimality probability in [0, 1]

At each loss unit (``num_timesteps`` per sample) draw ``t, eps`` from the sample's seeded generator
(:mod:`vgrl.algorithms._forward`), noise ``x_t`` and take ``pred = v_theta(x_t, t, c)`` (grad) and
``old = v_old(x_t, t, c)`` (no grad), in the backbone's own parameterisation (velocity, epsilon or v)::

    pos = (1 - beta) old + beta pred                  implicit positive policy v+
    neg = (1 + beta) old - beta pred                  implicit negative policy v-
    L+_i, L-_i = D(pos), D(neg)
    L = (adv_clip / beta) mean_i [p_i L+_i + (1 - p_i) L-_i]  +  kl mean_i ||pred_i - ref_i||^2_mean

with ``D`` (``weighting``) either the paper code's adaptive x0 regression
``D(q) = mean_dims (x0_hat(q) - x0)^2 / sg(max(mean_dims |x0_hat(q) - x0|, 1e-5))`` (``x0_hat = a x_t + b q``,
sg = stop-gradient) or the plain ``D(q) = mean_dims (q - target)^2``. The constant ``adv_clip / beta``
is the paper code's scale: it makes the gradient independent of ``beta`` when ``old = pred``.
Because ``pos``/``neg`` are affine combinations (weights summing to 1), they map to the same
combinations of ``x0_hat``: the maths holds unchanged for epsilon and v prediction (sd backbone).

Dense credit (``dense_credit = lambda > 0``, with a reward that returns a per-pixel map ``r_i(x)``, e.g.
``shapes_checker`` with ``dense: true``): the optimality becomes a map. With ``sigma`` the batch std of
the rewards, ``A_i(x) = A_i + lambda (r_i(x) - r_i) / (sigma + eps)`` and ``p_i(x) = 0.5 + 0.5
clip(A_i(x) / adv_clip, -1, 1)``, area-resized to the latent grid and shared by the channels; the loss
becomes ``mean_dims [p(x) e+(x) + (1 - p(x)) e-(x)]`` with the per-element errors ``e`` of ``D``. Where
the map equals the score (background) nothing changes; pixels of a correct object lean to the
positive policy and pixels of a wrong one to the negative policy, even inside a sample whose total
reward is average (HALO / PatchDPO-style credit routing, applied to NFT's implicit policies). A video or
view-set reward's map ``(B, F|V, H, W)`` (per frame or view and pixel) is resized over frames / views too
(:mod:`vgrl.algorithms._credit`).
With ``dense_center: group`` the deviations ``r_i(x) - r_i`` on evidence pixels (where the map differs from the
score) are shifted, per prompt group, by their mean over the group's evidence pixels, so that the map ranks the
group's objects against each other without a net push on the places where objects are drawn (on the shapes
base model the uncentred map's evidence is mostly below the score: docs/dense_credit.md).

Guided training (``guided: true``, a vgrl option, not the paper's): with guided rollouts
(``sampling.guidance_scale = w > 1``) every prediction above, ``pred``, ``old`` and the reference's, is the
guided velocity ``v_u + w (v_c - v_u)`` the rollout sampled with, so the loss trains the sampler that is
evaluated at guidance ``w`` (gradient into both branches) instead of the CFG-free conditional branch; each
prediction costs two forwards.

The old policy (``old_policy``): ``rollout``, the weights that sampled this batch (the paper's
``theta_old``); ``current``, ``sg(theta)`` (identical to ``rollout`` until the first optimiser step of an
iteration, after which the proximal pull towards the rollout weights is lost); or ``reference``, the
base weights (``ref``). With ``old = pred`` numerically the gradient is exactly
``adv_clip * grad mean_i (2 p_i - 1) D_i(pred)``.

Soft update of the sampling policy (``old_policy: rollout``, ``old_decay_rate > 0``; the paper's
``theta_old``, its code's ``decay_type``): the rollouts are drawn by a lagging copy of the trained weights,
updated before rollout ``i`` (``i = 0, 1, ...``) as::

    eta_i = min(old_decay_rate * max(i - old_decay_flat, 0), old_decay_max)
    theta_old <- eta_i theta_old + (1 - eta_i) theta          (theta_old = theta at i = 0)

and the same ``theta_old`` is ``v_old`` in the loss; its predictions for the whole batch are computed once, in
the training precision, before the update (``before_update``). ``eta = 0`` throughout (rate 0, the default) makes
``theta_old`` the current weights at each rollout: the sampling policy is then the trained one and the
snapshot is taken at the first loss call after ``prepare`` (no copy is kept). The paper's code uses
rate 0.001, max 0.5, flat 0 (GenEval, PickScore) and 0.0075 / 0.999 / 75 (OCR), counted in optimiser
steps of a 1-2-step-per-rollout schedule; vgrl counts rollouts (iterations).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from vgrl._lazy import lazy
from vgrl.advantages import group_advantages
from vgrl.algorithms._credit import check_map, per_sample, to_working_space
from vgrl.algorithms._forward import Noised, NoisingOptions, denoising_error, noised
from vgrl.algorithms._old_policy import OldPolicy
from vgrl.algorithms.base import Algorithm, Needs
from vgrl.types import Batch, RewardOutput, Trajectory

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")

MIN_WEIGHT = 1e-5  # floor of the adaptive weight, as the paper's code


class NFTOptions(NoisingOptions):
    beta: float = Field(1.0, gt=0, description="strength beta of the implicit policies (paper code: 1.0; "
                                               "0.1 for OCR and multi-reward)")
    adv_clip: float = Field(5.0, gt=0, description="max_adv: p = 0.5 + 0.5 clip(A / adv_clip, -1, 1)")
    global_std: bool = Field(True, description="normalise by the batch std (the paper's code) instead of "
                                               "each group's")
    eps: float = Field(1e-4, gt=0, description="added to the std when normalising")
    old_policy: Literal["rollout", "current", "reference"] = Field(
        "rollout", description="v_old: the weights that sampled the batch, sg(current weights), or the "
                               "base model (reference)")
    weighting: Literal["adaptive", "none"] = Field(
        "adaptive", description="adaptive x0 regression (paper code) or the plain squared prediction error")
    kl: float = Field(0.0, ge=0, description="weight of ||v_theta - v_ref||^2 to the base model (paper code: 1e-4)")
    dense_credit: float = Field(0.0, ge=0, description="lambda of the per-pixel advantage from the reward's dense "
                                                      "map (0 = off; needs a reward that returns `dense`)")
    dense_center: Literal["none", "group"] = Field(
        "none", description="group: shift each prompt group's evidence deviations (map != score) to mean 0, so the "
                            "map ranks the group's objects without a net push on where objects are drawn")
    old_decay_rate: float = Field(0.0, ge=0, le=1, description="growth per rollout of the soft-update rate eta of the "
                                                              "lagging sampling policy theta_old (0 = sample with the "
                                                              "current weights; paper code 0.001)")
    old_decay_max: float = Field(0.5, ge=0, lt=1, description="cap of eta (paper code 0.5)")
    old_decay_flat: int = Field(0, ge=0, description="rollouts with eta = 0 before it starts to grow (paper code 0)")
    guided: bool = Field(False, description="train the velocity the rollout sampled with: every prediction of the "
                                            "loss (current, old, reference) at the rollout's guidance scale "
                                            "v_u + w (v_c - v_u) instead of the conditional branch (two forwards "
                                            "each; needs guided rollouts, sampling.guidance_scale > 1)")

    @model_validator(mode="after")
    def _decay_needs_rollout(self) -> NFTOptions:
        if self.old_decay_rate > 0 and self.old_policy != "rollout":
            raise ValueError(f"old_decay_rate > 0 (a lagging sampling policy) needs old_policy: rollout, got "
                             f"old_policy: {self.old_policy}")
        return self


EVIDENCE_TOL = 1e-6  # |r_i(x) - r_i| above this: a pixel with local evidence (the map's background is the score)


def optimality(adv: Tensor, adv_clip: float) -> Tensor:
    """``(B,)`` optimality probabilities ``0.5 + 0.5 clip(adv / adv_clip, -1, 1)``."""
    return 0.5 + 0.5 * (adv / adv_clip).clamp(-1.0, 1.0)


def adaptive_error(x0_hat: Tensor, x0: Tensor) -> Tensor:
    """``(B, *S)`` per-element ``(x0_hat - x0)^2 / sg(max(mean_dims |x0_hat - x0|, 1e-5))`` (weight in
    float64); its mean over the non-batch dims is the paper code's adaptive loss."""
    diff = x0_hat - x0
    with torch.no_grad():
        weight = diff.double().abs().flatten(1).mean(dim=1).clamp(min=MIN_WEIGHT).to(diff.dtype)
    return diff**2 / weight.view(-1, *([1] * (diff.ndim - 1)))


def dense_optimality(adv: Tensor, scores: Tensor, dense: Tensor, lam: float, adv_clip: float,
                     eps: float, group_ids: Tensor | None = None) -> Tensor:
    """Optimality map ``optimality(A_i + lam (r_i(x) - r_i) / (std(r) + eps))`` of the reward's ``dense`` map,
    ``(B, H, W)`` per pixel or ``(B, F|V, H, W)`` per frame or view (:mod:`vgrl.algorithms._credit`).

    With ``group_ids`` (``dense_center: group``) the deviations on evidence pixels (``|r_i(x) - r_i| >
    EVIDENCE_TOL``) are shifted, per prompt group, by their mean over the group's evidence pixels: the map
    then only ranks a group's objects against each other; the background is unchanged."""
    check_map(dense, adv.shape[0], "nft dense_credit")
    sigma = scores.to(torch.float32).std(unbiased=False)
    raw = dense.to(torch.float32) - per_sample(scores.to(torch.float32), dense)
    dev = raw / (sigma + eps)
    if group_ids is not None:
        evidence = (raw.abs() > EVIDENCE_TOL).to(torch.float32)
        n = int(group_ids.max()) + 1
        total = torch.zeros(n).index_add_(0, group_ids, (dev * evidence).flatten(1).sum(dim=1))
        count = torch.zeros(n).index_add_(0, group_ids, evidence.flatten(1).sum(dim=1))
        mean = total / count.clamp(min=1)
        dev = dev - evidence * per_sample(mean[group_ids], dense)
    return optimality(per_sample(adv, dense) + lam * dev, adv_clip)


def _broadcast_p(p: Tensor, like: Tensor) -> Tensor:
    """``p`` ``(B,)`` or a ``(B, [N,] H, W)`` map -> broadcastable to ``like`` (area resize, :mod:`._credit`)."""
    if p.ndim == 1:
        return per_sample(p, like)
    return to_working_space(p, like, "nft dense_credit")


def nft_terms(pred: Tensor, old: Tensor, nz: Noised, x0: Tensor, p: Tensor, beta: float,
              weighting: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample ``p L+ + (1 - p) L-``, ``L+`` and ``L-``, each ``(B,)`` (module docstring).

    Args:
        pred: ``(B, *S)`` current prediction (with grad); ``old``: the old policy's, no grad.
        nz: the noised batch (``x_t``, ``target``, ``x0_hat`` coefficients); ``x0``: ``(B, *S)``.
        p: ``(B,)`` optimality probabilities, or a ``(B, [N,] H, W)`` map (dense credit).
        weighting: ``adaptive`` or ``none``.
    """
    pred, old = pred.to(torch.float32), old.to(torch.float32).detach()
    pos = beta * pred + (1 - beta) * old
    neg = (1 + beta) * old - beta * pred
    if weighting == "adaptive":
        x0 = x0.to(torch.float32)
        e_pos, e_neg = adaptive_error(nz.x0_hat(pos), x0), adaptive_error(nz.x0_hat(neg), x0)
    else:
        e_pos, e_neg = (pos - nz.target) ** 2, (neg - nz.target) ** 2
    pb = _broadcast_p(p, e_pos)
    per = (pb * e_pos + (1 - pb) * e_neg).flatten(1).mean(dim=1)
    return per, e_pos.flatten(1).mean(dim=1), e_neg.flatten(1).mean(dim=1)


class NFT(Algorithm):
    """DiffusionNFT (arXiv 2509.16117); the maths is in the module docstring."""

    name = "nft"
    Options = NFTOptions
    advantage_weighted = True  # zero advantages: p = 1/2, the two implicit policies' gradients cancel

    def __init__(self, options: NFTOptions, reward=None) -> None:
        super().__init__(options, reward)
        self.old = OldPolicy(options.old_decay_rate, options.old_decay_max, options.old_decay_flat)
        self._stats: dict[str, float] = {}

    @property
    def needs(self) -> Needs:
        o = self.options
        return Needs(groups=True, reference=o.old_policy == "reference" or o.kl > 0)

    def prepare(self, traj: Trajectory, reward: RewardOutput, group_ids: Tensor,
                prompts: list[str] | None = None, metadata: list[Any] | None = None) -> Batch:
        """Rewards -> advantages ``adv`` and optimality probabilities ``weights`` (both ``(B,)`` float32);
        arms the snapshot of the rollout weights (``old_policy: rollout``)."""
        o = self.options
        adv = group_advantages(reward.scores, group_ids, global_std=o.global_std, eps=o.eps)
        p = optimality(adv, o.adv_clip)
        self.old.arm()
        self._stats = {"p_signal": (2 * p - 1).abs().mean().item(),
                       "p_saturated": ((p == 0) | (p == 1)).float().mean().item()}
        if o.old_decay_rate > 0:
            self._stats["old_decay"] = self.old.eta(self.old.rollouts - 1)
        if o.dense_credit > 0:
            if reward.dense is None:
                raise ValueError("nft dense_credit > 0 needs a reward that returns a dense map (e.g. "
                                 "reward: {name: shapes_checker, dense: true}); this reward returned none")
            dense_p = dense_optimality(adv, reward.scores, reward.dense, o.dense_credit, o.adv_clip, o.eps,
                                       group_ids if o.dense_center == "group" else None)
            self._stats["dense_p_spread"] = (dense_p - per_sample(p, dense_p)).abs().mean().item()
            p = dense_p
        return Batch(traj=traj, rewards=reward.scores, adv=adv, group_ids=group_ids, prompts=prompts,
                     metadata=metadata, weights=p)

    def units(self, batch: Batch) -> list[int]:
        """``num_timesteps`` draws of ``(t, eps)`` per sample."""
        return list(range(self.options.num_timesteps))

    def guidance(self, traj: Trajectory) -> float:
        """The guidance scale of the loss's predictions: the rollout's (``guided``), else 1 (the conditional
        branch, CFG-free)."""
        if not self.options.guided:
            return 1.0
        if traj.guidance_scale <= 1.0:
            raise ValueError("nft guided: true trains the guided velocity the rollout sampled with, but the rollout "
                             f"was unguided (sampling.guidance_scale {traj.guidance_scale}); set "
                             "sampling.guidance_scale > 1 or guided: false")
        return traj.guidance_scale

    def sampling_policy(self, backbone):
        """Soft-update ``theta_old`` towards the current weights and draw the rollout with it (rate > 0);
        the current weights otherwise."""
        return self.old.sampling(backbone)

    def before_update(self, backbone, batch: Batch) -> Batch:
        """With the lagging sampling policy, ``theta_old``'s predictions at every loss unit's ``(x_t, t)`` for
        the whole batch, ``batch.precomputed["old"]`` ``(B, num_timesteps, *S)`` float32: one batched forward
        per unit instead of one per minibatch and unit (``theta_old`` is fixed for the iteration and each
        sample's draws are its own, so they are the same predictions). The trainer runs this in the training
        precision, as the loss. Without the lag (or before any rollout) the batch is returned as it is and the
        loss predicts lazily, exactly at the first minibatch."""
        if not self.old.precomputable:
            return batch
        traj, w = batch.traj, self.guidance(batch.traj)
        preds = [self.old.snapshot_prediction(backbone, nz.x_t, nz.t, traj.cond, w).to(torch.float32)
                 for nz in (noised(backbone, traj, k, self.options) for k in self.units(batch))]
        return replace(batch, precomputed={**batch.precomputed, "old": torch.stack(preds, dim=1)})

    def state_dict(self) -> dict[str, Any]:
        """``theta_old`` and the rollout count (lagging sampling policy); empty otherwise."""
        return self.old.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.options.old_decay_rate == 0:
            super().load_state_dict(state)
            return
        self.old.load_state_dict(state)

    def loss(self, backbone, kernel, batch: Batch, step_idx: int, ref=None) -> tuple[Tensor, dict[str, float]]:
        """The NFT loss of minibatch ``batch`` at draw ``step_idx``; ``kernel`` is unused (no log-probs)."""
        o, traj = self.options, batch.traj
        if batch.weights is None:
            raise ValueError("nft needs the optimality probabilities in batch.weights: build the batch with "
                             "prepare()")
        if self.needs.reference and ref is None:
            raise ValueError(f"nft with old_policy={o.old_policy!r} and kl={o.kl} needs a reference model (ref=)")
        nz, w = noised(backbone, traj, step_idx, o), self.guidance(traj)
        if "old" in batch.precomputed:  # before_update's batched theta_old predictions
            old = batch.precomputed["old"][:, step_idx]
        elif o.old_policy == "rollout":  # None while the weights equal the rollout's: then old = sg(pred)
            old = self.old.rollout_prediction(backbone, nz.x_t, nz.t, traj.cond, w)
        else:
            old = None
        ref_pred = ref.predict(nz.x_t, nz.t, traj.cond, w) if self.needs.reference else None
        pred = backbone.predict(nz.x_t, nz.t, traj.cond, w)
        if old is None:
            old = ref_pred if o.old_policy == "reference" else pred.detach()
        per, l_pos, l_neg = nft_terms(pred, old, nz, traj.x0, batch.weights, o.beta, o.weighting)
        loss = (o.adv_clip / o.beta) * per.mean()
        with torch.no_grad():
            metrics = {"policy_loss": loss.item(), "positive_loss": l_pos.mean().item(),
                       "negative_loss": l_neg.mean().item(),
                       "old_deviation": ((pred.float() - old.float()) ** 2).mean().item(),
                       "t_mean": nz.t.float().mean().item(), **self._stats}
        if o.kl > 0:
            kl = denoising_error(pred, ref_pred.to(torch.float32)).mean()
            loss = loss + o.kl * kl
            metrics["kl"] = kl.item()
        return loss, metrics


COMPONENT = NFT
