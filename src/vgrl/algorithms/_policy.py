"""Loss pieces the trajectory-likelihood algorithms share (Flow-GRPO, DDPO, DPOK); not an algorithm.

A private module (the leading underscore keeps it out of the registry). With
``rho_i = exp(log p_theta(x_next | x_t) - log p_old(x_next | x_t))`` for sample ``i`` at a recorded step::

    PPO-clip (Schulman et al., arXiv 1707.06347):  L = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps))
    without clipping (importance-weighted REINFORCE): L = mean_i -A_i rho_i
    step KL of two Gaussians with the same std:     KL_i = ||mu_theta(x_t) - mu_ref(x_t)||^2_mean / (2 std_t^2)

The KL is exact for one step of any Gaussian kernel (the std depends on the schedule, not on the
weights) up to the reduction: it is averaged over the non-batch dimensions, as the kernels' default
``reduction: mean`` averages the log-density.
"""

from __future__ import annotations

from typing import TYPE_CHECKING


from vgrl._lazy import lazy
from vgrl.rollout import recompute_log_prob
from vgrl.types import Trajectory, Transition

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


def recorded_column(traj: Trajectory, step_idx: int) -> int:
    """The column ``k`` of ``traj.log_prob`` (``(B, K)``) holding schedule step ``step_idx``."""
    return int((traj.step_idx == step_idx).nonzero().flatten()[0])


def clipped_policy_loss(log_prob: Tensor, old_log_prob: Tensor, adv: Tensor,
                        clip_range: float | None) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip surrogate over ``(B,)`` log-probs and advantages, and its diagnostics.

    Args:
        log_prob, old_log_prob, adv: ``(B,)`` each.
        clip_range: ratio clip ``eps``; ``None`` gives the unclipped surrogate ``mean(-adv * ratio)``.
    Returns:
        the scalar loss and ``ratio_mean``, ``ratio_max_dev`` (max ``|ratio - 1|``), ``approx_kl``
        (``mean (log ratio)^2 / 2``) and, when clipping, ``clipfrac``.
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -adv * ratio
    if clip_range is None:
        loss = unclipped.mean()
    else:
        clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
        loss = torch.maximum(unclipped, clipped).mean()
    with torch.no_grad():
        metrics = {"ratio_mean": ratio.mean().item(), "ratio_max_dev": (ratio - 1).abs().max().item()}
        if clip_range is not None:
            metrics["clipfrac"] = ((ratio - 1).abs() > clip_range).float().mean().item()
        metrics["approx_kl"] = 0.5 * ((log_prob - old_log_prob) ** 2).mean().item()
    return loss, metrics


def gaussian_step_kl(mean: Tensor, ref_mean: Tensor, std: Tensor) -> Tensor:
    """``(B,)`` KL(N(mean, std^2) || N(ref_mean, std^2)) per element, averaged over non-batch dims.

    ``mean``, ``ref_mean``: ``(B, *S)``; ``std``: ``(B, 1, ..., 1)`` (one std per sample).
    """
    dims = tuple(range(1, mean.ndim))
    std2 = std.reshape(-1) ** 2
    return ((mean - ref_mean) ** 2).mean(dim=dims) / (2 * std2)


def reference_kl(ref, kernel, traj: Trajectory, step_idx: int, tr: Transition, algorithm: str) -> Tensor:
    """``(B,)`` step KL of the policy's transition ``tr`` to the reference model's at ``step_idx``.

    The reference's mean is computed without gradient; the KL carries the gradient of ``tr.mean``.
    Raises ``ValueError`` naming ``algorithm`` when ``ref`` is None.
    """
    if ref is None:
        raise ValueError(f"{algorithm} with beta > 0 needs a reference model (ref=)")
    with torch.no_grad():
        ref_mean = recompute_log_prob(ref, kernel, traj, step_idx).mean
    return gaussian_step_kl(tr.mean, ref_mean, tr.std)
