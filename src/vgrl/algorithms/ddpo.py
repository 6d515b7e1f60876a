"""DDPO (Black et al., arXiv 2305.13301): PPO-clip on the recorded steps of a stochastic sampling chain.

Denoising is a multi-step decision process: each step ``x_t -> x_next`` of a stochastic kernel is an
action with an exact Gaussian density (normally ``ddim`` with ``eta = 1`` on an ``sd`` backbone —
DDPO's setting — but any stochastic kernel works, e.g. ``flow_sde`` on ``flow``). The reward of the
final sample becomes an advantage through DDPO's per-prompt statistics: with the last
``buffer_size`` rewards of prompt ``c`` (:class:`vgrl.advantages.PerPromptStatTracker`)::

    A_i = (r_i - mean_c(r)) / (std_c(r) + eps)     once prompt c has >= min_count rewards,
    A_i = (r_i - mean(r)) / (std(r) + eps)         before that, and always with tracking off,
    A_i <- clip(A_i, -adv_clip, adv_clip)

and, at each recorded step, with ``rho_i = exp(log p_theta(x_next | x_t) - log p_old(x_next | x_t))``::

    L = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps_clip, 1 + eps_clip))

DDPO_SF (the score-function variant) is this loss with one optimiser step per rollout (one inner
epoch, the whole batch accumulated): the ratio is then 1 and the gradient is
``-mean_i A_i grad log p_theta``. DDPO has no KL term and needs no prompt groups (group size 1 works).
The tracker's buffers are algorithm state: ``state_dict`` / ``load_state_dict`` carry them through
checkpoints, so a resumed run computes the same advantages as an uninterrupted one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from vgrl._lazy import lazy
from vgrl.advantages import PerPromptStatTracker, group_advantages
from vgrl.algorithms._policy import clipped_policy_loss, recorded_column
from vgrl.algorithms.base import Algorithm, AlgorithmOptions, Needs
from vgrl.rollout import recompute_log_prob
from vgrl.types import Batch, RewardOutput, Trajectory

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class DDPOOptions(AlgorithmOptions):
    clip_range: float = Field(1e-4, gt=0, description="PPO ratio clip eps (DDPO default 1e-4)")
    adv_clip: float | None = Field(5.0, gt=0, description="clip advantages to [-adv_clip, adv_clip]; None = off")
    per_prompt_stat_tracking: bool = Field(True, description="normalise by each prompt's recent rewards "
                                                             "(False: by the batch mean/std)")
    buffer_size: int = Field(32, ge=1, description="rewards kept per prompt by the tracker")
    min_count: int = Field(16, ge=1, description="rewards a prompt needs before its own statistics are used")
    eps: float = Field(1e-6, gt=0, description="added to the std when normalising")

    @model_validator(mode="after")
    def _min_count_fits(self) -> DDPOOptions:
        if self.min_count > self.buffer_size:
            raise ValueError(f"min_count ({self.min_count}) must be <= buffer_size ({self.buffer_size}); "
                             "a prompt's buffer never holds more than buffer_size rewards")
        return self


class DDPO(Algorithm):
    """Denoising diffusion policy optimisation (arXiv 2305.13301): PPO-clip with per-prompt reward
    normalisation; the maths is in the module docstring."""

    name = "ddpo"
    Options = DDPOOptions
    advantage_weighted = True

    def __init__(self, options: DDPOOptions, reward=None) -> None:
        super().__init__(options, reward=reward)
        self.tracker = (PerPromptStatTracker(options.buffer_size, options.min_count, options.eps)
                        if options.per_prompt_stat_tracking else None)

    @property
    def needs(self) -> Needs:
        return Needs(step_log_probs=True, stochastic_kernel=True)

    def prepare(self, traj: Trajectory, reward: RewardOutput, group_ids: Tensor,
                prompts: list[str] | None = None, metadata: list[Any] | None = None) -> Batch:
        """Rewards -> clipped advantages; updates the per-prompt tracker (call once per rollout).

        Args:
            traj: the rollout (``B`` samples).
            reward: ``scores`` ``(B,)``.
            group_ids: ``(B,)`` prompt-group ids (passed through; DDPO does not use them).
            prompts: the ``B`` prompt strings of the samples (required: keys of the tracker).
            metadata: ``B`` per-sample metadata objects (passed through).
        Returns:
            a :class:`Batch` with ``adv`` ``(B,)`` float32.
        """
        if prompts is None:
            raise ValueError("ddpo.prepare needs prompts= (the B prompt strings, for per-prompt reward statistics)")
        o = self.options
        if len(prompts) != reward.scores.shape[0]:
            raise ValueError(f"ddpo.prepare got {len(prompts)} prompts for {reward.scores.shape[0]} rewards")
        if self.tracker is not None:
            adv = self.tracker.update(list(prompts), reward.scores)
        else:
            adv = group_advantages(reward.scores, torch.zeros_like(group_ids), eps=o.eps)
        if o.adv_clip is not None:
            adv = adv.clamp(-o.adv_clip, o.adv_clip)
        return Batch(traj=traj, rewards=reward.scores, adv=adv, group_ids=group_ids, prompts=prompts,
                     metadata=metadata)

    def loss(self, backbone, kernel, batch: Batch, step_idx: int, ref=None) -> tuple[Tensor, dict[str, float]]:
        """PPO-clip loss of minibatch ``batch`` at recorded step ``step_idx``; ``ref`` is unused.

        Metrics: ``policy_loss``, ``ratio_mean``, ``ratio_max_dev``, ``clipfrac``, ``approx_kl``.
        """
        traj = batch.traj
        tr = recompute_log_prob(backbone, kernel, traj, step_idx)
        old_log_prob = traj.log_prob[:, recorded_column(traj, step_idx)]
        loss, metrics = clipped_policy_loss(tr.log_prob, old_log_prob, batch.adv, self.options.clip_range)
        metrics["policy_loss"] = loss.item()
        return loss, metrics

    def state_dict(self) -> dict[str, Any]:
        """``{"tracker": {...}}`` (plain python: numbers and per-prompt lists of floats); empty when off."""
        return {} if self.tracker is None else {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the tracker; refuses a state that does not match these options."""
        if self.tracker is None:
            return super().load_state_dict(state)
        if set(state) != {"tracker"}:
            raise ValueError(f"ddpo with per_prompt_stat_tracking expects state {{'tracker'}}, got {sorted(state)}")
        saved = state["tracker"]
        mine = (self.tracker.buffer_size, self.tracker.min_count, self.tracker.eps)
        theirs = (saved["buffer_size"], saved["min_count"], saved["eps"])
        if mine != theirs:
            raise ValueError(f"ddpo tracker in the checkpoint has (buffer_size, min_count, eps) = {theirs}, but "
                             f"the options say {mine}; resume with the checkpoint's options")
        self.tracker.load_state_dict(saved)


COMPONENT = DDPO
