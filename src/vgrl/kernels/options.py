"""Options of the built-in kernels, as pydantic models (no torch: ``vgrl validate`` reads them).

Each kernel class points at its model through ``Options``; ``vgrl.kernels.get(name, **opts)`` and the
config both validate through the same model, so defaults live in one place.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class KernelOptions(BaseModel):
    """Options every kernel takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reduction: Literal["mean", "sum"] = Field(
        "mean", description="how the per-element log-density is reduced over non-batch dimensions")


class DDIMOptions(KernelOptions):
    eta: float = Field(1.0, gt=0.0, le=1.0, description="DDIM eta; 1.0 is DDPM's variance (DDPO default)")


class FlowSDEOptions(KernelOptions):
    noise_level: float = Field(0.7, gt=0.0, le=3.0, description="a in sigma_t = a*sqrt(t/(1-t))")


class DanceSDEOptions(KernelOptions):
    eta: float = Field(0.3, gt=0.0, le=3.0, description="DanceGRPO's eta: std = eta*sqrt(t - s)")


class CPSOptions(KernelOptions):
    noise_level: float = Field(0.8, gt=0.0, lt=1.0,
                               description="fraction of the next step's noise that is fresh: std = s*sin(noise_level*pi/2)")


class ODEOptions(KernelOptions):
    pass


BUILTIN = {
    "ddim": DDIMOptions,
    "flow_sde": FlowSDEOptions,
    "dance_sde": DanceSDEOptions,
    "cps": CPSOptions,
    "ode": ODEOptions,
}
