"""DPOK (Fan et al., arXiv 2305.16381): KL-regularised policy gradient on a stochastic sampling chain.

DPOK maximises ``E[r(x_0, c)] - beta KL(p_theta(x_{0:T} | c) || p_ref(x_{0:T} | c))`` and bounds the
trajectory KL by the sum of the per-step KLs of the Gaussian transitions. At each recorded step, with
``rho_i = exp(log p_theta(x_next | x_t) - log p_old(x_next | x_t))`` (the importance weight of the
sample drawn by the rollout policy) and ``mu`` the kernel's mean::

    L_pg  = mean_i -A_i rho_i                                    (clip_range None: importance-weighted REINFORCE)
    L_pg  = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps))              (clip_range = eps)
    KL_i  = ||mu_theta(x_t) - mu_ref(x_t)||^2_mean / (2 std_t^2)   (KL of two Gaussians with equal std)
    L     = L_pg + beta mean_i KL_i

Advantages are the rewards normalised over the batch (``normalize: batch``, the default), over each
prompt group (``group``) or left raw (``none``)::

    A_i = (r_i - mean(r)) / (std(r) + eps)

The paper's code uses a learned value baseline ``A = r - V(x_t, c, t)`` and weights the reward term
by ``alpha`` (``reward_weight``); here the baseline is the batch mean and the reward term has weight 1,
so its ``(alpha, beta)`` correspond to ``beta / alpha`` here with ``normalize: none``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from vgrl.advantages import normalized_rewards
from vgrl.algorithms._policy import clipped_policy_loss, recorded_column, reference_kl
from vgrl.algorithms.base import Algorithm, AlgorithmOptions, Needs
from vgrl.rollout import recompute_log_prob
from vgrl.types import Batch, RewardOutput, Trajectory

if TYPE_CHECKING:
    from torch import Tensor


class DPOKOptions(AlgorithmOptions):
    beta: float = Field(0.01, ge=0, description="weight of the per-step KL to the reference model "
                                                "(DPOK's kl_weight 0.01); 0 = no reference model")
    clip_range: float | None = Field(None, gt=0, description="PPO ratio clip eps; None = unclipped ratio")
    normalize: Literal["batch", "group", "none"] = Field(
        "batch", description="advantages: rewards standardised over the batch, per prompt group, or raw")
    eps: float = Field(1e-4, gt=0, description="added to the std when normalising")


class DPOK(Algorithm):
    """DPOK (arXiv 2305.16381): policy gradient with an importance ratio and a per-step Gaussian KL to
    the reference model; the maths is in the module docstring."""

    name = "dpok"
    Options = DPOKOptions
    advantage_weighted = True

    @property
    def needs(self) -> Needs:
        o = self.options
        return Needs(step_log_probs=True, stochastic_kernel=True, reference=o.beta > 0,
                     groups=o.normalize == "group")

    def prepare(self, traj: Trajectory, reward: RewardOutput, group_ids: Tensor,
                prompts: list[str] | None = None, metadata: list[Any] | None = None) -> Batch:
        """Rewards -> advantages ``(B,)`` float32, normalised as ``options.normalize`` says.

        Args:
            traj: the rollout (``B`` samples).
            reward: ``scores`` ``(B,)``.
            group_ids: ``(B,)`` prompt-group ids (used by ``normalize: group``).
            prompts, metadata: passed through to the batch (DPOK does not need them).
        """
        o = self.options
        scores = reward.scores
        adv = normalized_rewards(scores, group_ids, o.normalize, o.eps)
        return Batch(traj=traj, rewards=scores, adv=adv, group_ids=group_ids, prompts=prompts, metadata=metadata)

    def loss(self, backbone, kernel, batch: Batch, step_idx: int, ref=None) -> tuple[Tensor, dict[str, float]]:
        """``L_pg + beta KL`` for minibatch ``batch`` at recorded step ``step_idx``.

        ``ref`` is the frozen reference backbone (required when ``beta > 0``). Metrics: ``policy_loss``
        (``L_pg`` alone; the trainer logs the total as ``loss``), ``kl`` (when ``beta > 0``),
        ``ratio_mean``, ``ratio_max_dev``, ``approx_kl`` and, with ``clip_range``, ``clipfrac``.
        """
        traj = batch.traj
        tr = recompute_log_prob(backbone, kernel, traj, step_idx)
        old_log_prob = traj.log_prob[:, recorded_column(traj, step_idx)]
        policy_loss, metrics = clipped_policy_loss(tr.log_prob, old_log_prob, batch.adv, self.options.clip_range)
        loss = policy_loss
        if self.options.beta > 0:
            kl = reference_kl(ref, kernel, traj, step_idx, tr, self.name)
            loss = loss + self.options.beta * kl.mean()
            metrics["kl"] = kl.mean().item()
        metrics["policy_loss"] = policy_loss.item()
        return loss, metrics


COMPONENT = DPOK
