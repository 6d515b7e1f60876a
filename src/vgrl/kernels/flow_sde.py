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

from typing import TYPE_CHECKING


from vgrl._lazy import lazy
from vgrl.kernels.base import FlowKernel
from vgrl.kernels.options import FlowSDEOptions

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class FlowSDE(FlowKernel):
    """Flow-GRPO SDE; velocity ("flow") prediction only."""

    name = "flow_sde"
    Options = FlowSDEOptions
    std_formula = "std = sigma_t * sqrt(t - s)"

    def mean_std(self, x: Tensor, v: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        dt = s - t
        sigma = self.options.noise_level * torch.sqrt(t / (1 - torch.where(t == 1, s, t)))
        mean = x * (1 + sigma**2 / (2 * t) * dt) + v * (1 + sigma**2 * (1 - t) / (2 * t)) * dt
        return mean, sigma * torch.sqrt(-dt)


COMPONENT = FlowSDE
