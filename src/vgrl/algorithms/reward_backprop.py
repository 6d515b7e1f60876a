"""Reward backpropagation through the sampler: AlignProp, DRaFT-K, DRaFT-LV and ReFL as one algorithm.

Each sample of a minibatch is regenerated from its recorded seed with the deterministic (ODE) kernel,
``x_T -> x_{N-1} -> ... -> x_0`` over the backbone's ``N``-step grid, exactly as
:func:`vgrl.rollout.rollout` draws it, and the loss is the negative differentiable reward of the
decoded image, ``L = -scale * mean_i r(D(x_0^i), c_i)``; the trainer back-propagates it into the
denoiser through the steps that were run with grad:

* **DRaFT-K** (Clark et al., arXiv 2309.17400): steps ``0..N-K-1`` without grad, the last ``K`` with
  grad (truncated backprop, ``k``; DRaFT-1 is ``k = 1``).
* **AlignProp** (Prabhudesai et al., arXiv 2310.03739): ``k = N``, full backprop through the chain,
  made affordable by gradient checkpointing of every step (``checkpointing``) and LoRA (trainer).
* **DRaFT-LV** (arXiv 2309.17400, ``lv_samples = n > 0``, needs ``k = 1``): the whole chain runs
  without grad; ``x_0`` is re-noised to the last step's time ``n`` times,
  ``x_{t_1}^j = alpha_{t_1} x_0 + sigma_{t_1} eps_j``, each is denoised by one step with grad
  and ``L = -scale * mean_{i,j} r(D(x_0^{ij}))`` (lower-variance estimate of DRaFT-1's gradient).
* **ReFL** (Xu et al., ImageReward, arXiv 2304.05977, ``mode = "refl"``): sample ``i`` stops at step
  ``j_i = N - r_i`` with ``r_i ~ U{refl_range}`` (steps counted from the end, drawn from a generator
  seeded by the sample's seed); the prefix runs without grad and the model's one-step prediction of
  ``x_0`` at ``x_{j_i}`` is rewarded with grad (flow: ``x_0 = x_t - t v``; epsilon / v: DDIM's
  ``x_0`` estimate, :func:`vgrl.kernels.ddim.ddim_terms`).

Forward-noising for DRaFT-LV is the backbone's ``add_noise``: flow ``x_t = (1 - t) x_0 + t eps``; epsilon / v
``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps`` with the scheduler's ``alphas_cumprod``. Its noise comes
from each sample's own generator after its initial noise, so a minibatch's loss is a function of the
seeds and the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from vgrl._lazy import lazy, lazy_function
from vgrl.algorithms.base import Algorithm, AlgorithmOptions, Needs
from vgrl.kernels.base import Kernel, flow_estimates, per_sample
from vgrl.kernels.ddim import ddim_terms
from vgrl.types import Batch, RewardOutput, Trajectory

if TYPE_CHECKING:
    from torch import Tensor

    from vgrl.backbones.base import Backbone

torch = lazy("torch")
checkpoint = lazy_function("torch.utils.checkpoint", "checkpoint")
seeded = lazy_function("vgrl.backbones.base", "seeded")

REFL_SALT = 0x5EF1  # xored into a sample's seed for its ReFL stop step (independent of its noise stream)


class RewardBackpropOptions(AlgorithmOptions):
    mode: Literal["draft", "refl"] = Field("draft", description="draft: reward the final sample through the last "
                                                                "k steps; refl: reward the x0 prediction at a "
                                                                "random late step")
    k: int = Field(1, ge=1, description="draft: steps back-propagated through, counted from the end (num_steps = "
                                        "AlignProp's full backprop)")
    lv_samples: int = Field(0, ge=0, description="DRaFT-LV re-noisings of x0 at the last step (needs k = 1); 0 = off")
    refl_range: tuple[int, int] = Field((1, 3), description="refl: stop step drawn uniformly from [lo, hi] steps "
                                                            "before the end (1 = the last step)")
    checkpointing: bool = Field(True, description="gradient checkpointing around each differentiable step")
    scale: float = Field(1.0, gt=0, description="loss = -scale * mean reward")

    @model_validator(mode="after")
    def _consistent(self) -> RewardBackpropOptions:
        lo, hi = self.refl_range
        if not 1 <= lo <= hi:
            raise ValueError(f"refl_range must satisfy 1 <= lo <= hi (steps before the end), got {[lo, hi]}")
        if self.lv_samples and (self.k != 1 or self.mode != "draft"):
            raise ValueError(f"lv_samples={self.lv_samples} (DRaFT-LV) needs mode='draft' and k=1, "
                             f"got mode={self.mode!r}, k={self.k}")
        return self


def ode_step(backbone: Backbone, ode: Kernel, x: Tensor, t: Tensor, s: Tensor, cond, guidance: float) -> Tensor:
    """One deterministic step ``x_t -> x_s`` (``(B, *S)``; ``t, s`` ``(B,)``), as ``rollout`` takes it."""
    pred = backbone.predict(x, t, cond, guidance)
    return ode.step(pred, x, t, s, prediction=backbone.prediction).x_next


def predict_x0(backbone: Backbone, ode: Kernel, x: Tensor, t: Tensor, s: Tensor, cond, guidance: float) -> Tensor:
    """The model's one-step estimate of ``x_0`` at ``x_t``: ``x_t - t v`` (flow) or DDIM's ``x0_hat``."""
    pred = backbone.predict(x, t, cond, guidance)
    if backbone.prediction == "flow":
        return flow_estimates(pred.float(), x.float(), per_sample(t, x))[0]
    return ddim_terms(ode.scheduler, pred, x, t, s, backbone.prediction, "reward_backprop")[0]


def replay(backbone: Backbone, ode: Kernel, traj: Trajectory, *, k: int, checkpointing: bool = True,
           stop: Tensor | None = None) -> Tensor:
    """Regenerate ``traj``'s samples from their seeds with the ODE kernel: no grad, then grad for the last ``k``.

    Args:
        ode: a deterministic kernel (``kernel.ode()``).
        k: steps run with grad, counted from the end (``0`` = none).
        stop: optional ``(B,)`` step index per sample; if given, return ``x`` *before* step
            ``stop[i]`` (no grad, ``k`` ignored) instead of the final sample.
    Returns:
        ``(B, *S)``: the final ``x_0`` (equal to ``rollout(..., StepPlan.ode(N), seeds=traj.seeds).x0``), or
        the states at ``stop``.
    """
    n, cond, g, batch = traj.num_steps, traj.cond, traj.guidance_scale, len(traj)
    if not 0 <= k <= n:
        raise ValueError(f"algorithm.k={k} must be between 1 and sampling.num_steps={n}")
    grid = backbone.timesteps(n)
    x = backbone.init_noise(traj.seeds).to(traj.x0.device)
    last = n if stop is None else int(stop.max())
    first_grad = n - k if stop is None else n
    held = x.clone() if stop is not None else None
    with torch.no_grad():
        for i in range(min(first_grad, last)):
            x = ode_step(backbone, ode, x, grid[i].expand(batch), grid[i + 1].expand(batch), cond, g)
            if stop is not None:
                held[stop == i + 1] = x[stop == i + 1]
    if stop is not None:
        return held
    for i in range(first_grad, n):
        t, s = grid[i].expand(batch), grid[i + 1].expand(batch)
        if checkpointing:
            x = checkpoint(ode_step, backbone, ode, x, t, s, cond, g, use_reentrant=False)
        else:
            x = ode_step(backbone, ode, x, t, s, cond, g)
    return x


def refl_stop_steps(seeds: Tensor, num_steps: int, refl_range: tuple[int, int]) -> Tensor:
    """``(B,)`` ReFL stop steps ``N - r_i``, ``r_i`` uniform in ``refl_range``, from seed ``seeds[i] ^ REFL_SALT``."""
    lo, hi = refl_range
    if hi > num_steps:
        raise ValueError(f"algorithm.refl_range={[lo, hi]} reaches {hi} steps before the end, but "
                         f"sampling.num_steps={num_steps}")
    r = [int(torch.randint(lo, hi + 1, (), generator=seeded(int(s) ^ REFL_SALT))) for s in seeds.tolist()]
    return num_steps - torch.tensor(r, dtype=torch.long)


class RewardBackprop(Algorithm):
    """Direct reward fine-tuning through the deterministic sampler (AlignProp / DRaFT-K / DRaFT-LV / ReFL)."""

    name = "reward_backprop"
    Options = RewardBackpropOptions

    def __init__(self, options: RewardBackpropOptions, reward=None) -> None:
        """``reward``: the run's differentiable reward, called in :meth:`loss` (``check_compatible`` refuses
        a non-differentiable one)."""
        if reward is None:
            raise ValueError("algorithm 'reward_backprop' calls the reward in its loss: build it as "
                             "RewardBackprop(options, reward=reward)")
        super().__init__(options, reward)

    @classmethod
    def examples(cls) -> list[RewardBackpropOptions]:
        """DRaFT-K (the default) and ReFL (a per-sample stop step)."""
        return [cls.Options(), cls.Options(mode="refl")]

    @property
    def needs(self) -> Needs:
        return Needs(differentiable_reward=True)

    def prepare(self, traj: Trajectory, reward: RewardOutput, group_ids: Tensor,
                prompts: list[str] | None = None, metadata: list[Any] | None = None) -> Batch:
        if prompts is None:
            raise ValueError("reward_backprop re-scores regenerated samples: prepare() needs prompts (and metadata)")
        return Batch(traj=traj, rewards=reward.scores, adv=reward.scores, group_ids=group_ids, prompts=prompts,
                     metadata=metadata)

    def units(self, batch: Batch) -> list[int]:
        """One loss unit per minibatch: the whole regenerated chain."""
        return [0]

    def loss(self, backbone, kernel, batch: Batch, step_idx: int, ref=None) -> tuple[Tensor, dict[str, float]]:
        o, traj, ode = self.options, batch.traj, kernel.ode()
        if o.mode == "refl":
            x0 = self._refl_x0(backbone, ode, traj)
        elif o.lv_samples:
            x0 = self._lv_x0(backbone, ode, traj)
        else:
            x0 = replay(backbone, ode, traj, k=o.k, checkpointing=o.checkpointing)
        reps = len(x0) // len(traj)
        prompts = list(batch.prompts) * reps
        metadata = None if batch.metadata is None else list(batch.metadata) * reps
        scores = self.reward(backbone.decode(x0), prompts, metadata).scores
        loss = -o.scale * scores.mean()
        # named apart from the trainer's rollout reward_mean / reward_std and its loss, which it logs itself
        metrics = {"reward_grad_mean": scores.detach().mean().item(),
                   "reward_grad_std": scores.detach().std(unbiased=False).item()}
        return loss, metrics

    def _refl_x0(self, backbone, ode: Kernel, traj: Trajectory) -> Tensor:
        """ReFL: ``x_0`` predicted with grad at each sample's stop step (prefix without grad)."""
        n = traj.num_steps
        stop = refl_stop_steps(traj.seeds, n, self.options.refl_range)
        x = replay(backbone, ode, traj, k=0, stop=stop)
        grid = backbone.timesteps(n)
        t, s = grid[stop], grid[stop + 1]
        if self.options.checkpointing:
            return checkpoint(predict_x0, backbone, ode, x, t, s, traj.cond, traj.guidance_scale, use_reentrant=False)
        return predict_x0(backbone, ode, x, t, s, traj.cond, traj.guidance_scale)

    def _lv_x0(self, backbone, ode: Kernel, traj: Trajectory) -> Tensor:
        """DRaFT-LV: ``(n B, *S)`` last-step denoisings (with grad) of ``n`` re-noisings of the no-grad ``x_0``."""
        n_lv, n, batch = self.options.lv_samples, traj.num_steps, len(traj)
        x0 = replay(backbone, ode, traj, k=0)
        gens = [seeded(int(s)) for s in traj.seeds.tolist()]
        backbone.init_noise(gens)  # skip the initial noise: LV noise follows it in each sample's stream
        eps = torch.stack([backbone.init_noise(gens) for _ in range(n_lv)]).flatten(0, 1).to(x0.device)
        grid = backbone.timesteps(n)
        t, s = grid[n - 1].expand(n_lv * batch), grid[n].expand(n_lv * batch)
        x_t = backbone.add_noise(x0.repeat(n_lv, *[1] * (x0.ndim - 1)).float(), t, eps.float()).to(x0.dtype)
        cond = traj.cond.index(torch.arange(batch).repeat(n_lv))
        if self.options.checkpointing:
            return checkpoint(ode_step, backbone, ode, x_t, t, s, cond, traj.guidance_scale, use_reentrant=False)
        return ode_step(backbone, ode, x_t, t, s, cond, traj.guidance_scale)


COMPONENT = RewardBackprop
