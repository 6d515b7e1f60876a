"""DanceGRPO's SDE step (Xue et al., arXiv 2505.07818).

Flow convention: ``x_t = (1 - t) x0 + t eps``, the model predicts ``v = eps - x0``, ``t = 1`` is
pure noise and a step goes from ``t`` to ``s < t`` (``dt = s - t < 0``). The reverse SDE with a
constant diffusion coefficient ``eta``, ``dx = [v - eta^2 / 2 * score] dt + eta dW``, with the score
of ``N((1 - t) x0, t^2 I)`` estimated from the prediction, gives the Euler-Maruyama step::

    x0_hat = x_t - t v
    score  = -(x_t - (1 - t) x0_hat) / t^2          (= -eps_hat / t)
    mean   = x_t + dt v + (-eta^2 / 2 * score) dt
    std    = eta * sqrt(t - s),                     x_next ~ N(mean, std^2 I)

As ``eta -> 0`` the step is the Euler ODE step ``x_t + dt v``. Checked against ``flux_step``
(``sde_solver=True``) in XueZeyue/DanceGRPO, whose default script uses ``eta = 0.3``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vgrl.kernels.base import Kernel, flow_estimates, flow_times, gaussian_step, per_sample, require_noise
from vgrl.kernels.options import DanceSDEOptions, ODEOptions
from vgrl.types import Transition


class DanceSDE(Kernel):
    """DanceGRPO SDE; velocity ("flow") prediction only."""

    name = "dance_sde"
    stochastic = True
    predictions = ("flow",)
    Options = DanceSDEOptions

    def step(self, pred: Tensor, x_t: Tensor, t: Tensor, s: Tensor, *, prediction: str,
             noise: Tensor | None = None, x_next: Tensor | None = None,
             generator: torch.Generator | None = None) -> Transition:
        self.check_prediction(prediction)
        t, s = flow_times(t, s, x_t, self.name)
        tb, sb = per_sample(t, x_t), per_sample(s, x_t)
        x, v = x_t.to(torch.float32), pred.to(torch.float32)
        eta, dt = self.options.eta, sb - tb
        x0, _ = flow_estimates(v, x, tb)
        score = -(x - (1 - tb) * x0) / tb**2
        mean = x + dt * v + (-0.5 * eta**2 * score) * dt
        std = eta * torch.sqrt(tb - sb)
        require_noise(std, self.name, "std = eta * sqrt(t - s)")
        return gaussian_step(mean, std, x_t, self.reduction, noise=noise, x_next=x_next, generator=generator)

    def ode(self) -> Kernel:
        from vgrl.kernels.ode import ODE

        return ODE(ODEOptions(reduction=self.reduction))


COMPONENT = DanceSDE
