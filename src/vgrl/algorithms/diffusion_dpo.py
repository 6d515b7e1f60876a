"""Diffusion-DPO (Wallace et al., arXiv 2311.12908): direct preference optimisation on the forward process.

DPO's closed form for the KL-regularised reward maximiser, applied to the diffusion ELBO, gives a loss
on pairs ``(x_w, x_l)`` of one prompt ``c`` (``x_w`` preferred) with no reward model and no
log-probabilities. For each pair draw one time ``t`` and one noise ``eps`` (shared by winner and
loser, seeded per pair: :mod:`vgrl.algorithms._forward`), noise both samples with the backbone's own
forward process and compare the policy's and the frozen reference's denoising errors in the model's
own prediction target (``eps``, ``v`` or the flow velocity ``eps - x0``)::

    e_w     = mean_dims ||target_w - pred_theta(x_w,t, t, c)||^2      e_l     likewise for the loser
    e_w^ref = mean_dims ||target_w - pred_ref(x_w,t, t, c)||^2        e_l^ref likewise
    z       = -(beta / 2) [(e_w - e_w^ref) - (e_l - e_l^ref)]
    L       = mean_pairs -log sigmoid(z)

``beta`` here is the paper's ``beta T`` with ``omega(lambda_t) = 1`` (its eq. 14; the official code's
``beta_dpo``, 5000 for Stable Diffusion 1.5), applied to errors averaged over dimensions as that code
does. ``z > 0`` means the policy improved the winner's denoising more than the loser's, relative to
the reference: the *implicit accuracy* is the fraction of pairs with ``z > 0``. A pair whose winner
and loser are identical has ``e_w = e_l`` and ``e_w^ref = e_l^ref`` for every ``t, eps``, so ``z = 0``
and the gradient ``sigmoid(-z) (beta / 2) grad (e_w - e_l)`` is exactly zero: the loss only moves
the model where the pair differs. Predictions are the conditional branch (``guidance_scale = 1``).

Pairs come from each rollout's prompt groups ranked by reward (``mode: online``; only pairs with a
reward margin ``r_w - r_l >= margin`` and ``> 0``) or from a preference dataset on disk (``mode:
offline``, ``data.preferences``); see :mod:`vgrl.algorithms._pairs` for the paired batch layout.

Dense credit (``dense_credit = alpha > 0``, online, with a reward returning per-pixel maps ``r(x)``,
PatchDPO / HALO style): each mean error becomes a weighted mean under the pair's focus map
``m(x) ∝ 1 + alpha (|r_w(x) - r_w| + |r_l(x) - r_l|)`` (mean 1), shared by winner and loser, so the
comparison concentrates on the pixels where either sample has local evidence; a video or view-set
reward's ``(B, F|V, H, W)`` map weights frames (views) and pixels alike (:mod:`vgrl.algorithms._credit`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING


from vgrl._lazy import lazy
from vgrl.algorithms._credit import to_working_space
from vgrl.algorithms._forward import denoising_error, draw, noise
from vgrl.algorithms._pairs import PairOptions, PairwiseAlgorithm
from vgrl.types import Batch, Cond, Trajectory

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")
F = lazy("torch.nn.functional")


class DPOOptions(PairOptions):
    """Diffusion-DPO's options: ``beta``, ``mode``, ``pairing``, ``margin`` and the noising options."""


def dpo_loss(err: Tensor, ref_err: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Per-pair ``-log sigmoid(z)`` and ``z`` (both ``(P,)``) from ``(P, 2)`` errors (winner, loser)."""
    model_diff = err[:, 0] - err[:, 1]
    ref_diff = ref_err[:, 0] - ref_err[:, 1]
    z = -0.5 * beta * (model_diff - ref_diff)
    return -F.logsigmoid(z), z


def pair_errors(backbone, ref, traj: Trajectory, unit: int, options: PairOptions,
                cond: Cond | None = None, focus: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Policy and reference denoising errors ``(P, 2)`` of a paired trajectory at loss unit ``unit``.

    Winner and loser of pair ``p`` share ``t`` and ``eps`` (drawn from ``traj.seeds[p]``). ``cond``
    overrides the pairs' conditioning (``npo`` trains the unconditional branch). ``focus``: optional
    ``(P, [N,] H, W)`` weights (dense credit, :func:`~vgrl.algorithms._pairs.focus_map`), area-resized
    to the working space (:mod:`vgrl.algorithms._credit`), that turn each mean error into a weighted mean. Returns ``err`` (with grad),
    ``ref_err`` (no grad) and ``t`` ``(P,)``.
    """
    p, shape = len(traj), tuple(traj.x0.shape[2:])
    if traj.x0.ndim < 3 or traj.x0.shape[1] != 2 or shape != tuple(backbone.sample_shape):
        raise ValueError(f"a paired batch has x0 (P, 2, *{tuple(backbone.sample_shape)}), got "
                         f"{tuple(traj.x0.shape)}: build it with prepare() (online) or offline_batch()")
    t, eps = draw(backbone, traj.seeds, unit, options, traj.num_steps)
    nz = noise(backbone, traj.x0.flatten(0, 1), t.repeat_interleave(2), eps.repeat_interleave(2, dim=0))
    cond2 = (traj.cond if cond is None else cond).repeat_interleave(2)
    pred = backbone.predict(nz.x_t, nz.t, cond2, 1.0)
    with torch.no_grad():
        ref_pred = ref.predict(nz.x_t, nz.t, cond2, 1.0)
    if focus is None:
        err = denoising_error(pred, nz.target).view(p, 2)
        ref_err = denoising_error(ref_pred, nz.target).view(p, 2)
        return err, ref_err, t
    m = to_working_space(focus, nz.target[::2]).repeat_interleave(2, dim=0)
    err = (m * (pred.to(torch.float32) - nz.target) ** 2).flatten(1).mean(dim=1).view(p, 2)
    ref_err = (m * (ref_pred.to(torch.float32) - nz.target) ** 2).flatten(1).mean(dim=1).view(p, 2)
    return err, ref_err, t


def preference_loss(backbone, ref, batch: Batch, unit: int, options: PairOptions, *, invert: bool = False,
                    cond: Cond | None = None, prefix: str = "") -> tuple[Tensor, dict[str, float]]:
    """The DPO loss of a minibatch of pairs and its metrics; ``invert`` swaps winner and loser (NPO).

    Metrics (``prefix`` prepended): ``dpo_loss``, ``implicit_acc`` (fraction with ``z > 0``), ``z_mean``,
    ``model_diff`` / ``ref_diff`` (mean ``e_w - e_l`` of policy / reference, after any swap),
    ``winner_error`` / ``loser_error`` (policy), ``denoise_loss`` (mean policy error), ``t_mean``.
    """
    if ref is None:
        raise ValueError(f"{'npo' if invert else 'diffusion_dpo'} needs the frozen reference model (ref=)")
    focus = batch.weights if batch.weights is not None and batch.weights.ndim > 1 else None
    err, ref_err, t = pair_errors(backbone, ref, batch.traj, unit, options, cond, focus)
    if invert:
        err, ref_err = err.flip(1), ref_err.flip(1)
    per, z = dpo_loss(err, ref_err, options.beta)
    loss = per.mean()
    with torch.no_grad():
        metrics = {"dpo_loss": loss.item(), "implicit_acc": (z > 0).float().mean().item(),
                   "z_mean": z.mean().item(), "model_diff": (err[:, 0] - err[:, 1]).mean().item(),
                   "ref_diff": (ref_err[:, 0] - ref_err[:, 1]).mean().item(),
                   "winner_error": err[:, 0].mean().item(), "loser_error": err[:, 1].mean().item(),
                   "denoise_loss": err.mean().item(), "t_mean": t.to(torch.float32).mean().item()}
    return loss, {prefix + k: v for k, v in metrics.items()}


class DiffusionDPO(PairwiseAlgorithm):
    """Diffusion-DPO (arXiv 2311.12908), online or offline; the maths is in the module docstring."""

    name = "diffusion_dpo"
    Options = DPOOptions

    def loss(self, backbone, kernel, batch: Batch, step_idx: int, ref=None) -> tuple[Tensor, dict[str, float]]:
        """The DPO loss of a minibatch of pairs at draw ``step_idx``; ``kernel`` is unused (no log-probs)."""
        loss, metrics = preference_loss(backbone, ref, batch, step_idx, self.options)
        return loss, {**metrics, **self._stats}


COMPONENT = DiffusionDPO
