"""DDIM step with ``eta > 0``: the transition kernel of DDPO (Black et al., arXiv 2305.13301),
after DDIM (Song et al., arXiv 2010.02502).

``t`` and ``s`` are integer timesteps of a diffusers ``DDIMScheduler`` (runtime arg ``scheduler``),
``s = t - num_train_timesteps // num_inference_steps`` as ``DDIMScheduler.step`` computes it. With
``a_t = alphas_cumprod[t]`` and ``a_s = alphas_cumprod[s]`` (``final_alpha_cumprod`` when ``s < 0``)::

    epsilon:  x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    v:        x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v,     eps = sqrt(a_t) v + sqrt(1 - a_t) x_t
    x0 <- clamp(x0, -r, r)  if the scheduler's clip_sample (r = clip_sample_range; eps is kept, as diffusers)
    variance = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s),   std = eta * sqrt(variance)
    mean = sqrt(a_s) x0 + sqrt(1 - a_s - std^2) eps,      x_next ~ N(mean, std^2 I)

so ``x_next`` equals ``DDIMScheduler.step(pred, t, x_t, eta=eta, variance_noise=noise).prev_sample``.
The ``prediction`` argument decides how ``pred`` is read (the scheduler's ``prediction_type`` is not
consulted). ``thresholding`` is refused.

Zero-noise step: into the final step (``s < 0``) of a scheduler with ``set_alpha_to_one=True``,
``a_s = 1`` and ``variance = 0``; that step has no density and the kernel raises
:class:`~vgrl.kernels.base.ZeroNoiseError` (draw or score). Use ``set_alpha_to_one=False`` (Stable
Diffusion's and DDPO's setting) or step it with ``ode()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


from vgrl._lazy import lazy
from vgrl.kernels.base import Kernel, batch_times, gaussian_step, per_sample, require_noise
from vgrl.kernels.options import DDIMOptions
from vgrl.types import Transition

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


def check_scheduler(scheduler: Any, kernel: str) -> Any:
    """The scheduler if it is DDIM-like (``alphas_cumprod``, ``final_alpha_cumprod``), else a clear error."""
    if scheduler is None:
        raise ValueError(f"kernel {kernel!r} needs the runtime argument scheduler= (a diffusers DDIMScheduler) "
                         "for epsilon / v prediction, e.g. kernels.get('ddim', scheduler=pipe.scheduler)")
    if not (hasattr(scheduler, "alphas_cumprod") and hasattr(scheduler, "final_alpha_cumprod")):
        raise TypeError(f"kernel {kernel!r} needs a diffusers DDIMScheduler (with alphas_cumprod and "
                        f"final_alpha_cumprod), got {type(scheduler).__name__}")
    if getattr(scheduler.config, "thresholding", False):
        raise NotImplementedError(f"kernel {kernel!r} does not support a DDIMScheduler with thresholding=True "
                                  "(dynamic thresholding); use clip_sample or thresholding=False")
    return scheduler


def _timesteps(v: Tensor, like: Tensor, kernel: str, what: str) -> Tensor:
    v = batch_times(v, like, kernel, what)
    if v.is_floating_point():
        if not bool((v == v.round()).all()):
            raise ValueError(f"kernel {kernel!r}: {what} must be integer timesteps, got {v.tolist()}")
    elif v.dtype == torch.bool or v.is_complex():
        raise ValueError(f"kernel {kernel!r}: {what} must be integer timesteps, got dtype {v.dtype}")
    return v.to(torch.long)


def ddim_terms(scheduler: Any, pred: Tensor, x_t: Tensor, t: Tensor, s: Tensor, prediction: str,
               kernel: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """float32 ``(x0_hat, eps_hat, a_t, a_s)``, the alphas shaped ``(B, 1, ..., 1)``."""
    scheduler = check_scheduler(scheduler, kernel)
    t, s = _timesteps(t, x_t, kernel, "t"), _timesteps(s, x_t, kernel, "s")
    alphas = scheduler.alphas_cumprod.to(device=x_t.device, dtype=torch.float32)
    n = alphas.shape[0]
    if not bool(((t >= 0) & (t < n) & (s < t)).all()):
        raise ValueError(f"kernel {kernel!r} steps timesteps t -> s with 0 <= t < {n} and s < t "
                         f"(s < 0: final step); got t={t.tolist()}, s={s.tolist()}")
    final = torch.as_tensor(scheduler.final_alpha_cumprod, device=x_t.device, dtype=torch.float32)
    a_t = per_sample(alphas[t], x_t)
    a_s = per_sample(torch.where(s >= 0, alphas[s.clamp(min=0)], final), x_t)
    x, p = x_t.to(torch.float32), pred.to(torch.float32)
    if prediction == "epsilon":
        x0, eps = (x - (1 - a_t) ** 0.5 * p) / a_t**0.5, p
    else:  # "v"
        x0, eps = a_t**0.5 * x - (1 - a_t) ** 0.5 * p, a_t**0.5 * p + (1 - a_t) ** 0.5 * x
    if scheduler.config.clip_sample:
        r = scheduler.config.clip_sample_range
        x0 = x0.clamp(-r, r)
    return x0, eps, a_t, a_s


def ddim_mean(x0: Tensor, eps: Tensor, a_s: Tensor, std: Tensor) -> Tensor:
    """sqrt(a_s) x0 + sqrt(1 - a_s - std^2) eps."""
    return a_s**0.5 * x0 + (1 - a_s - std**2).clamp(min=0) ** 0.5 * eps


class DDIM(Kernel):
    """DDIM with ``eta > 0`` (DDPO); epsilon or v prediction; needs ``scheduler=`` (a DDIMScheduler)."""

    name = "ddim"
    stochastic = True
    predictions = ("epsilon", "v")
    Options = DDIMOptions
    runtime_args = ("scheduler",)

    def __init__(self, options: DDIMOptions, scheduler: Any = None) -> None:
        super().__init__(options)
        self.scheduler = check_scheduler(scheduler, self.name)
        self.eta = options.eta

    def step(self, pred: Tensor, x_t: Tensor, t: Tensor, s: Tensor, *, prediction: str,
             noise: Tensor | None = None, x_next: Tensor | None = None,
             generator: torch.Generator | None = None) -> Transition:
        self.check_prediction(prediction)
        x0, eps, a_t, a_s = ddim_terms(self.scheduler, pred, x_t, t, s, prediction, self.name)
        variance = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        std = self.eta * variance.clamp(min=0) ** 0.5
        require_noise(std, self.name, "final step with final_alpha_cumprod == 1, i.e. set_alpha_to_one=True")
        mean = ddim_mean(x0, eps, a_s, std)
        return gaussian_step(mean, std, x_t, self.reduction, noise=noise, x_next=x_next, generator=generator)

    def ode(self) -> Kernel:
        from vgrl.kernels.ode import ODE
        from vgrl.kernels.options import ODEOptions

        return ODE(ODEOptions(reduction=self.reduction), scheduler=self.scheduler)


COMPONENT = DDIM
