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
from typing import TYPE_CHECKING


from vgrl.kernels.base import FlowKernel, flow_estimates
from vgrl.kernels.options import CPSOptions

if TYPE_CHECKING:
    from torch import Tensor


class CPS(FlowKernel):
    """Coefficients-preserving sampling; velocity ("flow") prediction only."""

    name = "cps"
    Options = CPSOptions
    std_formula = "std = s * sin(noise_level * pi / 2) is 0 at s = 0"

    def mean_std(self, x: Tensor, v: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        x0, eps = flow_estimates(v, x, t)
        std = s * math.sin(self.options.noise_level * math.pi / 2)
        mean = (1 - s) * x0 + (s**2 - std**2).clamp(min=0).sqrt() * eps
        return mean, std


COMPONENT = CPS
