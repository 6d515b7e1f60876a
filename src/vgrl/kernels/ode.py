"""The deterministic (ODE) kernel: the zero-noise limit of every stochastic kernel.

* ``prediction="flow"`` (velocity ``v = eps - x0``, times in [0, 1], 1 = pure noise): the Euler step
  ``x_s = x_t + (s - t) v``, exactly ``FlowMatchEulerDiscreteScheduler.step`` (flow matching: Lipman et
  al., arXiv 2210.02747; rectified flow: Liu et al., arXiv 2209.03003).
* ``prediction="epsilon"`` / ``"v"`` (integer timesteps of a DDIMScheduler, runtime arg ``scheduler``):
  DDIM with ``eta = 0`` (Song et al., arXiv 2010.02502),
  ``x_s = sqrt(a_s) x0_hat + sqrt(1 - a_s) eps_hat`` (see :mod:`vgrl.kernels.ddim` for x0_hat, eps_hat).

A transition of this kernel has no density: reading its ``.log_prob`` raises
:class:`~vgrl.types.DeterministicKernelError`, and so does asking it to score a given ``x_next``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any


from vgrl._lazy import lazy
from vgrl.kernels.base import Kernel, deterministic_step, flow_times, per_sample
from vgrl.kernels.ddim import check_scheduler, ddim_mean, ddim_terms
from vgrl.kernels.options import ODEOptions
from vgrl.types import Transition

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class ODE(Kernel):
    """Deterministic Euler (flow) or DDIM eta=0 (epsilon / v; needs a DDIMScheduler as ``scheduler=``) step."""

    name = "ode"
    stochastic = False
    predictions = ("epsilon", "v", "flow")
    Options = ODEOptions
    runtime_args = ("scheduler",)

    def __init__(self, options: ODEOptions, scheduler: Any = None) -> None:
        super().__init__(options)
        # any scheduler is accepted (a flow backbone passes its FlowMatchEulerDiscreteScheduler, unused);
        # a DDIM-like one is checked now, anything else when an epsilon / v step needs it
        self.scheduler = scheduler
        if hasattr(scheduler, "final_alpha_cumprod"):
            check_scheduler(scheduler, self.name)

    def step(self, pred: Tensor, x_t: Tensor, t: Tensor, s: Tensor, *, prediction: str,
             noise: Tensor | None = None, x_next: Tensor | None = None,
             generator: torch.Generator | None = None) -> Transition:
        self.check_prediction(prediction)
        if prediction == "flow":
            t, s = flow_times(t, s, x_t, self.name)
            mean = x_t.to(torch.float32) + (per_sample(s, x_t) - per_sample(t, x_t)) * pred.to(torch.float32)
        else:
            x0, eps, _, a_s = ddim_terms(self.scheduler, pred, x_t, t, s, prediction, self.name)
            mean = ddim_mean(x0, eps, a_s, torch.zeros((), dtype=torch.float32, device=x0.device))
        return deterministic_step(mean, x_t, x_next=x_next)

    def ode(self) -> Kernel:
        return self


COMPONENT = ODE
