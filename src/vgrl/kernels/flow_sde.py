"""Flow-GRPO's marginal-preserving SDE step (Liu et al., arXiv 2505.05470).

Flow convention: ``x_t = (1 - t) x0 + t eps``, the model predicts ``v = eps - x0``, ``t = 1`` is
pure noise and a step goes from ``t`` to ``s < t`` (``dt = s - t < 0``). The reverse SDE
``dx = [v + sigma_t^2 / (2t) (x + (1 - t) v)] dt + sigma_t dW`` has the same marginals as the ODE
``dx = v dt``; its Euler-Maruyama step is::

    sigma_t = a * sqrt(t / (1 - t'))    with a = noise_level, t' = t except t' = s when t == 1
    mean    = x_t (1 + sigma_t^2 / (2t) dt) + v (1 + sigma_t^2 (1 - t) / (2t)) dt
    std     = sigma_t * sqrt(-dt),      x_next ~ N(mean, std^2 I)

``t' = s`` at ``t == 1`` is Flow-GRPO's ``sigma_max = sigmas[1]`` (the next sigma of the first step),
which keeps ``sigma_t`` finite. As ``a -> 0`` the step is the Euler ODE step ``x_t + dt v``.
Checked against ``sde_step_with_logprob`` (sde_type "sde") in yifan123/flow_grpo.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vgrl.kernels.base import Kernel, flow_times, gaussian_step, per_sample, require_noise
from vgrl.kernels.options import FlowSDEOptions, ODEOptions
from vgrl.types import Transition


class FlowSDE(Kernel):
    """Flow-GRPO SDE; velocity ("flow") prediction only."""

    name = "flow_sde"
    stochastic = True
    predictions = ("flow",)
    Options = FlowSDEOptions

    def step(self, pred: Tensor, x_t: Tensor, t: Tensor, s: Tensor, *, prediction: str,
             noise: Tensor | None = None, x_next: Tensor | None = None,
             generator: torch.Generator | None = None) -> Transition:
        self.check_prediction(prediction)
        t, s = flow_times(t, s, x_t, self.name)
        tb, sb = per_sample(t, x_t), per_sample(s, x_t)
        x, v = x_t.to(torch.float32), pred.to(torch.float32)
        dt = sb - tb
        sigma = self.options.noise_level * torch.sqrt(tb / (1 - torch.where(tb == 1, sb, tb)))
        mean = x * (1 + sigma**2 / (2 * tb) * dt) + v * (1 + sigma**2 * (1 - tb) / (2 * tb)) * dt
        std = sigma * torch.sqrt(-dt)
        require_noise(std, self.name, "std = sigma_t * sqrt(t - s)")
        return gaussian_step(mean, std, x_t, self.reduction, noise=noise, x_next=x_next, generator=generator)

    def ode(self) -> Kernel:
        from vgrl.kernels.ode import ODE

        return ODE(ODEOptions(reduction=self.reduction))


COMPONENT = FlowSDE
