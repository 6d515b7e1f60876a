"""Forward-process pieces shared by NFT, RWR and RAFT: seeded noising and the denoising loss; not an algorithm.

A private module (the leading underscore keeps it out of the registry). The forward-process family
trains on the rollout's *clean* samples ``x0`` (``traj.x0``, the backbone's working space) only: it
draws a time ``t`` and noise ``eps``, noises ``x0`` with the backbone's own forward process and
regresses the prediction type's target, so it needs no log-probabilities and works with any
sampler, the deterministic ``ode`` kernel included. With ``a_t = alphas_cumprod[t]`` of the sd
backbone's DDIMScheduler (integer ``t``)::

    flow    (t in [0, 1]):  x_t = (1 - t) x0 + t eps                  target v   = eps - x0
    epsilon:                x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps    target eps
    v:                      x_t as for epsilon                        target v   = sqrt(a_t) eps - sqrt(1 - a_t) x0

(sd: ``scheduler.add_noise`` and ``scheduler.get_velocity``). Every prediction is affine in the
clean-sample estimate at fixed ``(x_t, t)``: ``x0_hat = a x_t + b pred`` with ``(a, b) = (1, -t)``
(flow), ``(1 / sqrt(a_t), -sqrt(1 - a_t) / sqrt(a_t))`` (epsilon), ``(sqrt(a_t), -sqrt(1 - a_t))`` (v).
The backbone implements all of it (``add_noise``, ``target``, ``x0_coefficients``, ``train_time``); this
module only draws ``(t, eps)`` and assembles the losses.

The plain denoising loss of sample ``i`` is ``L_i = mean_dims (pred_i - target_i)^2`` with
``pred = backbone.predict(x_t, t, cond, guidance_scale=1.0)`` (the conditional branch).

Randomness: the ``(t, eps)`` of sample ``i`` at loss unit ``k`` come from its own generator, seeded
with ``splitmix64(splitmix64(seed_i xor STREAM) xor k)`` (``seed_i = traj.seeds[i]``), never from the
global RNG: a resumed run redraws them exactly, and a sample's draws do not depend on the minibatch
it lands in. ``STREAM`` keeps them apart from the rollout's own stream (``seeded(seed_i)``), whose
first draw is the sample's initial noise. Inner epochs revisit a sample with the same draws; raise
``num_timesteps`` for more of them. The generators are CPU generators whatever the device: the draws
are copied to ``x0``'s device (:func:`noise`), so they are the same on CPU and GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from vgrl._lazy import lazy
from vgrl.algorithms.base import AlgorithmOptions
from vgrl.types import Batch, Trajectory

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")

_MASK64 = (1 << 64) - 1
STREAM = 0x666F7277617264  # "forward": the forward-process noise stream


class NoisingOptions(AlgorithmOptions):
    """How the forward-process algorithms draw ``(t, eps)``; their ``Options`` extend it."""

    num_timesteps: int = Field(1, ge=1, description="(t, eps) draws per sample per update: the loss units")
    time_sampling: Literal["uniform", "logit_normal", "schedule"] = Field(
        "uniform", description="t ~ U[0, 1] (sd: a uniform training timestep); logit-normal (SD3); or a "
                               "uniform pick of the rollout's own time grid (the DiffusionNFT code)")
    logit_mean: float = Field(0.0, description="mean m of logit-normal times t = sigmoid(m + s n)")
    logit_std: float = Field(1.0, gt=0, description="std s of logit-normal times")


class RegressionOptions(NoisingOptions):
    """Options of the algorithms that regress the policy's own samples (RWR, RAFT)."""

    kl: float = Field(0.0, ge=0, description="weight of ||v_theta - v_ref||^2 to the base model per trained sample, "
                                             "weighted like its denoising loss (0 = off): an anchor against the "
                                             "drift of regressing on the policy's own samples")


@dataclass
class Noised:
    """A noised minibatch: ``t`` ``(B,)`` (flow float32, sd int64), ``eps``, ``x_t``, ``target`` ``(B, *S)``
    float32, and the coefficients ``a``, ``b`` (``(B, 1, ..., 1)``) of ``x0_hat = a x_t + b pred``."""

    t: Tensor
    eps: Tensor
    x_t: Tensor
    target: Tensor
    a: Tensor
    b: Tensor

    def x0_hat(self, pred: Tensor) -> Tensor:
        """The clean-sample estimate of prediction ``pred`` at this ``(x_t, t)``."""
        return self.a * self.x_t + self.b * pred.to(torch.float32)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def unit_seed(seed: int, unit: int) -> int:
    """The 64-bit seed of sample ``seed``'s generator at loss unit ``unit``."""
    return _splitmix64(_splitmix64((int(seed) & _MASK64) ^ STREAM) ^ (int(unit) & _MASK64))


def draw(backbone, seeds: Tensor, unit: int, options: NoisingOptions, num_steps: int) -> tuple[Tensor, Tensor]:
    """Per-sample ``t`` ``(B,)`` and ``eps`` ``(B, *S)`` float32 from each sample's own generator.

    Args:
        seeds: ``(B,)`` the samples' recorded seeds (``traj.seeds``).
        unit: the loss unit (``0 .. num_timesteps - 1``).
        num_steps: the rollout's schedule length (``time_sampling: schedule`` picks from its grid).
    Returns:
        ``t``: a pick of the time grid, or a uniform / logit-normal draw ``u`` mapped by
        ``backbone.train_time`` (flow: float32 in [0, 1), sd: int64 in ``[0, num_train_timesteps)``);
        ``eps``: standard normal noise (``backbone.init_noise``).
    """
    grid = backbone.timesteps(num_steps)[:num_steps] if options.time_sampling == "schedule" else None
    ts, eps = [], []
    for seed in seeds.tolist():
        g = torch.Generator().manual_seed(unit_seed(seed, unit))
        if grid is not None:
            u = grid[int(torch.randint(len(grid), (), generator=g))]
        elif options.time_sampling == "logit_normal":
            u = torch.sigmoid(options.logit_mean + options.logit_std * torch.randn((), generator=g))
        else:
            u = torch.rand((), generator=g)
        ts.append(u)
        eps.append(backbone.init_noise([g])[0])
    t = torch.stack(ts)
    return (t if grid is not None else backbone.train_time(t)), torch.stack(eps)


def noise(backbone, x0: Tensor, t: Tensor, eps: Tensor) -> Noised:
    """The backbone's forward process at ``t`` and the regression target of its prediction (module docstring);
    ``t`` and ``eps`` (drawn on the CPU) are moved to ``x0``'s device."""
    x0 = x0.to(torch.float32)
    t, eps = t.to(x0.device), eps.to(x0.device)
    a, b = backbone.x0_coefficients(t, x0)
    return Noised(t, eps, backbone.add_noise(x0, t, eps), backbone.target(x0, eps, t), a, b)


def noised(backbone, traj: Trajectory, unit: int, options: NoisingOptions) -> Noised:
    """``traj.x0`` noised with the draws of loss unit ``unit`` (:func:`draw`, :func:`noise`)."""
    t, eps = draw(backbone, traj.seeds, unit, options, traj.num_steps)
    return noise(backbone, traj.x0, t, eps)


def denoising_error(pred: Tensor, target: Tensor) -> Tensor:
    """``(B,)`` float32 ``mean_dims (pred - target)^2``."""
    return ((pred.to(torch.float32) - target) ** 2).flatten(1).mean(dim=1)


def weighted_denoising_loss(backbone, batch: Batch, unit: int, options: RegressionOptions,
                            weights: Tensor, ref=None) -> tuple[Tensor, dict[str, float]]:
    """``sum_i w_i (L_i + kl K_i) / B`` over minibatch ``batch`` (``B`` rows) at loss unit ``unit``, with
    ``K_i = mean_dims (pred_i - ref_i)^2`` the distance to the base model's prediction ``ref.predict`` at the
    same ``(x_t, t)`` (only when ``options.kl > 0``). Per sample the minimiser is ``(target + kl ref) / (1 + kl)``:
    each trained sample is regressed towards a blend of its own target and the base model.

    Rows with ``w_i = 0`` are not run through the network (their gradient is exactly zero); a
    minibatch without a positive weight returns a zero loss that back-propagates nothing.

    Args:
        weights: ``(B,)`` non-negative per-sample weights.
        ref: the reference model (:class:`vgrl.training.policy.Reference`); needed when ``options.kl > 0``.
    Returns:
        the scalar loss and ``denoise_loss`` (unweighted mean ``L`` over the rows run), ``t_mean`` and, with
        ``kl > 0``, ``kl`` (unweighted mean ``K``).
    """
    if weights.shape != (len(batch),) or bool((weights < 0).any()):
        raise ValueError(f"weights must be (B,) = ({len(batch)},) and non-negative, got {tuple(weights.shape)}")
    if options.kl > 0 and ref is None:
        raise ValueError(f"kl={options.kl} needs the reference model (ref=)")
    rows = (weights > 0).nonzero().flatten()
    if rows.numel() == 0:
        empty = {"denoise_loss": 0.0, "t_mean": 0.0, **({"kl": 0.0} if options.kl > 0 else {})}
        return torch.zeros((), device=weights.device, requires_grad=True), empty
    traj = batch.traj if rows.numel() == len(batch) else batch.traj.index(rows)
    nz = noised(backbone, traj, unit, options)
    pred = backbone.predict(nz.x_t, nz.t, traj.cond, 1.0)
    err = denoising_error(pred, nz.target)
    metrics = {"denoise_loss": err.mean().item(), "t_mean": nz.t.to(torch.float32).mean().item()}
    if options.kl > 0:
        anchor = denoising_error(pred, ref.predict(nz.x_t, nz.t, traj.cond, 1.0).to(torch.float32))
        metrics["kl"] = anchor.mean().item()
        err = err + options.kl * anchor
    loss = (weights[rows].to(torch.float32) * err).sum() / len(batch)
    return loss, metrics
