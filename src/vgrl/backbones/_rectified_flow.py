"""The rectified-flow forward process, shared by every flow-matching family (mixed in, not a backbone).

Convention (diffusers' ``FlowMatchEulerDiscreteScheduler``; Esser et al., arXiv 2403.03206): time ``t`` in [0, 1]
with 1 = noise, ``x_t = (1 - t) x0 + t eps``, the network predicts the velocity ``v = eps - x0``, and a prediction
gives the clean-sample estimate ``x0_hat = x_t - t v``. A family of this kind (SD3 / SD3.5, FLUX, Qwen-Image, Wan)
lists :class:`RectifiedFlow` before its backbone base, so the contract's forward process has one implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vgrl._lazy import lazy

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    """``(B,)`` -> float32 ``(B, 1, ..., 1)`` on ``like``'s device, broadcasting against ``like``."""
    return v.to(like.device, torch.float32).reshape(-1, *([1] * (like.ndim - 1)))


class RectifiedFlow:
    """``train_time``, ``add_noise``, ``target`` and ``x0_coefficients`` of the Backbone contract for flow matching."""

    def train_time(self, u: Tensor) -> Tensor:
        """``t = u`` (float32)."""
        return u.to(torch.float32)

    def add_noise(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``(1 - t) x0 + t eps``."""
        tt = per_sample(t, x0)
        return (1 - tt) * x0 + tt * eps

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The velocity ``eps - x0``."""
        return eps - x0

    def x0_coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(1, -t)``: ``x0_hat = x_t - t v``."""
        tt = per_sample(t, like)
        return torch.ones_like(tt), -tt
