"""Coefficients-preserving sampling (CPS; Wang & Yu, arXiv 2509.05952), Flow-GRPO's sde_type "cps".

Flow convention: ``x_t = (1 - t) x0 + t eps``, the model predicts ``v = eps - x0``, ``t = 1`` is
pure noise and a step goes from ``t`` to ``s < t``. The step re-noises the predicted clean sample so
that ``x_next`` has exactly the coefficients of ``x_s``: ``(1 - s)`` on x0 and total noise std ``s``::

    x0_hat  = x_t - t v,                  eps_hat = x_t + (1 - t) v
    std     = s * sin(noise_level * pi / 2)
    mean    = (1 - s) x0_hat + sqrt(s^2 - std^2) eps_hat,     x_next ~ N(mean, std^2 I)

``noise_level`` in (0, 1) is the fraction of fresh noise (Flow-GRPO's CPS configs use 0.8). As it
goes to 0 the step is the Euler ODE step ``x_t + (s - t) v``.

Zero-noise step: at ``s = 0`` (the last step of a schedule ending at 0) ``std = 0``, the step is
deterministic (``x_next = x0_hat``) and has no density; the kernel raises
:class:`~vgrl.kernels.base.ZeroNoiseError` (draw or score), so step it with ``ode()``.

Log-density: the exact Gaussian one. Flow-GRPO's code uses the surrogate ``-(x_next - mean)^2``
(no ``1 / (2 std^2)``, no constants) for CPS; ratios and gradients differ from it by that scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vgrl.kernels.base import Kernel, flow_estimates, flow_times, gaussian_step, per_sample, require_noise
from vgrl.kernels.options import CPSOptions, ODEOptions
from vgrl.types import Transition


class CPS(Kernel):
    """Coefficients-preserving sampling; velocity ("flow") prediction only."""

    name = "cps"
    stochastic = True
    predictions = ("flow",)
    Options = CPSOptions

    def step(self, pred: Tensor, x_t: Tensor, t: Tensor, s: Tensor, *, prediction: str,
             noise: Tensor | None = None, x_next: Tensor | None = None,
             generator: torch.Generator | None = None) -> Transition:
        self.check_prediction(prediction)
        t, s = flow_times(t, s, x_t, self.name)
        tb, sb = per_sample(t, x_t), per_sample(s, x_t)
        x0, eps = flow_estimates(pred.to(torch.float32), x_t.to(torch.float32), tb)
        std = sb * math.sin(self.options.noise_level * math.pi / 2)
        require_noise(std, self.name, "std = s * sin(noise_level * pi / 2) is 0 at s = 0")
        mean = (1 - sb) * x0 + (sb**2 - std**2).clamp(min=0).sqrt() * eps
        return gaussian_step(mean, std, x_t, self.reduction, noise=noise, x_next=x_next, generator=generator)

    def ode(self) -> Kernel:
        from vgrl.kernels.ode import ODE

        return ODE(ODEOptions(reduction=self.reduction))


COMPONENT = CPS
