"""Flow-GRPO (Liu et al., arXiv 2505.05470): group-relative PPO-clip on the steps of a stochastic sampler.

For each prompt, G samples are rolled out with a stochastic kernel (``flow_sde`` by default; any
kernel with a density works — DanceGRPO, arXiv 2505.07818, is this maths with ``dance_sde``); their
rewards become group-relative advantages ``A_i`` (:func:`vgrl.advantages.group_advantages`). At each
recorded step, with ``rho_i = exp(log p_theta(x_next | x_t) - log p_old(x_next | x_t))``::

    L_clip = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps))
    L_KL   = mean_i ||mu_theta(x_t) - mu_ref(x_t)||^2_mean / (2 std_t^2)    (Gaussian KL of the step)
    L      = L_clip + beta L_KL

The SDE-window ("Fast", MixGRPO) variants are step plans (``StepPlan.window``), not other algorithms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from vgrl.advantages import group_advantages
from vgrl.algorithms._policy import clipped_policy_loss, recorded_column, reference_kl
from vgrl.algorithms.base import Algorithm, AlgorithmOptions, Needs
from vgrl.rollout import recompute_log_prob
from vgrl.types import Batch, RewardOutput, Trajectory

if TYPE_CHECKING:
    from torch import Tensor


class FlowGRPOOptions(AlgorithmOptions):
    clip_range: float = Field(1e-4, gt=0, description="PPO ratio clip eps (Flow-GRPO default 1e-4)")
    beta: float = Field(0.0, ge=0, description="weight of the per-step KL to the reference model")
    adv_clip: float | None = Field(5.0, gt=0, description="clip advantages to [-adv_clip, adv_clip]; None = off")
    global_std: bool = Field(False, description="normalise by the batch std instead of each group's")
    eps: float = Field(1e-4, gt=0, description="added to the std when normalising")


class FlowGRPO(Algorithm):
    """Group-relative policy optimisation on a stochastic sampling chain."""

    name = "flow_grpo"
    Options = FlowGRPOOptions
    advantage_weighted = True

    @property
    def needs(self) -> Needs:
        return Needs(step_log_probs=True, stochastic_kernel=True, groups=True, reference=self.options.beta > 0)

    def prepare(self, traj: Trajectory, reward: RewardOutput, group_ids: Tensor,
                prompts: list[str] | None = None, metadata: list[Any] | None = None) -> Batch:
        o = self.options
        adv = group_advantages(reward.scores, group_ids, global_std=o.global_std, eps=o.eps, clip=o.adv_clip)
        return Batch(traj=traj, rewards=reward.scores, adv=adv, group_ids=group_ids, prompts=prompts,
                     metadata=metadata)

    def loss(self, backbone, kernel, batch: Batch, step_idx: int, ref=None) -> tuple[Tensor, dict[str, float]]:
        traj = batch.traj
        k = recorded_column(traj, step_idx)
        tr = recompute_log_prob(backbone, kernel, traj, step_idx)
        loss, metrics = clipped_policy_loss(tr.log_prob, traj.log_prob[:, k], batch.adv, self.options.clip_range)
        metrics["policy_loss"] = loss.item()
        if self.options.beta > 0:
            kl = reference_kl(ref, kernel, traj, step_idx, tr, self.name)
            loss = loss + self.options.beta * kl.mean()
            metrics["kl"] = kl.mean().item()
        return loss, metrics


COMPONENT = FlowGRPO
