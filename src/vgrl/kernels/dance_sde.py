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

from typing import TYPE_CHECKING


from vgrl._lazy import lazy
from vgrl.kernels.base import FlowKernel, flow_estimates
from vgrl.kernels.options import DanceSDEOptions

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class DanceSDE(FlowKernel):
    """DanceGRPO SDE; velocity ("flow") prediction only."""

    name = "dance_sde"
    Options = DanceSDEOptions
    std_formula = "std = eta * sqrt(t - s)"

    def mean_std(self, x: Tensor, v: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        eta, dt = self.options.eta, s - t
        x0, _ = flow_estimates(v, x, t)
        score = -(x - (1 - t) * x0) / t**2
        mean = x + dt * v + (-0.5 * eta**2 * score) * dt
        return mean, eta * torch.sqrt(t - s)


COMPONENT = DanceSDE
