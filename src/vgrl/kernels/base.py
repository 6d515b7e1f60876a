"""The kernel contract and the one Gaussian step every stochastic kernel shares."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar


from vgrl._lazy import lazy
from vgrl.kernels.options import KernelOptions
from vgrl.types import Transition

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")

PREDICTIONS = ("epsilon", "v", "flow")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class Kernel(ABC):
    """One denoising step ``x_t -> x_next`` given the model's prediction at ``x_t``.

    Subclasses set ``name``, ``stochastic``, ``predictions`` (the prediction types they accept),
    ``Options`` (a :class:`KernelOptions` model) and ``runtime_args`` (names of runtime objects
    such as ``scheduler``). All maths runs in float32 whatever the model dtype; ``x_next`` comes
    back in ``x_t``'s dtype.
    """

    name: ClassVar[str]
    stochastic: ClassVar[bool]
    predictions: ClassVar[tuple[str, ...]]
    Options: ClassVar[type[KernelOptions]] = KernelOptions
    runtime_args: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: KernelOptions, **runtime: Any) -> None:
        self.options = options
        self.reduction = options.reduction

    def check_prediction(self, prediction: str) -> None:
        if prediction not in self.predictions:
            raise ValueError(f"kernel {self.name!r} takes prediction in {self.predictions}, got {prediction!r}")

    @abstractmethod
    def step(self, pred: Tensor, x_t: Tensor, t: Tensor, s: Tensor, *, prediction: str,
             noise: Tensor | None = None, x_next: Tensor | None = None,
             generator: torch.Generator | None = None) -> Transition:
        """Step from time ``t`` to ``s`` (each ``(B,)``); draw ``x_next`` or score the given one."""

    @abstractmethod
    def ode(self) -> Kernel:
        """The deterministic kernel this one tends to as its noise goes to zero."""


class ZeroNoiseError(ValueError):
    """A stochastic kernel was asked to draw or score a step whose standard deviation is zero.

    Such a step (CPS into ``s = 0``; DDIM into the final step when ``final_alpha_cumprod == 1``) is
    deterministic and has no density; step it with ``kernel.ode()`` instead.
    """


def batch_times(v: Tensor | float | int, like: Tensor, kernel: str, what: str) -> Tensor:
    """``t`` or ``s`` as a ``(B,)`` tensor on ``like``'s device: a 0-dim value is broadcast to the batch.

    Raises ``ValueError`` naming the kernel unless ``v`` is 0-dim or has shape ``(B,)``.
    """
    v = torch.as_tensor(v, device=like.device)
    batch = like.shape[0]
    if v.ndim == 0:
        return v.expand(batch)
    if tuple(v.shape) != (batch,):
        raise ValueError(f"kernel {kernel!r}: {what} must have shape ({batch},) (one per sample) or be 0-dim, "
                         f"got shape {tuple(v.shape)}")
    return v


def flow_times(t: Tensor, s: Tensor, like: Tensor, kernel: str) -> tuple[Tensor, Tensor]:
    """Validated float32 ``(B,)`` flow times with ``0 <= s < t <= 1`` (1 = pure noise)."""
    t = batch_times(t, like, kernel, "t").to(torch.float32)
    s = batch_times(s, like, kernel, "s").to(torch.float32)
    if not bool(((s >= 0) & (s < t) & (t <= 1)).all()):
        raise ValueError(f"kernel {kernel!r} steps flow times from t to s with 0 <= s < t <= 1; "
                         f"got t={t.tolist()}, s={s.tolist()}")
    return t, s


def flow_estimates(v: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(x0_hat, eps_hat)`` from a velocity ``v = eps - x0`` at ``x_t = (1-t) x0 + t eps``.

    x0_hat = x_t - t v;  eps_hat = x_t + (1 - t) v.  ``t`` is ``(B, 1, ..., 1)`` float32.
    """
    return x_t - t * v, x_t + (1.0 - t) * v


def require_noise(std: Tensor, kernel: str, why: str) -> None:
    """Raise :class:`ZeroNoiseError` unless every ``std`` is strictly positive."""
    if not bool((std > 0).all()):
        raise ZeroNoiseError(f"kernel {kernel!r} has std = 0 on this step ({why}): the step is deterministic "
                             "and has no density, so it can be neither drawn nor scored; step it with "
                             "kernel.ode() (leave it out of the stochastic steps)")


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` float32, broadcastable against ``like``."""
    v = torch.as_tensor(v, device=like.device)
    if v.ndim == 0:
        v = v.expand(like.shape[0])
    return v.to(torch.float32).reshape(-1, *([1] * (like.ndim - 1)))


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, reduction: str) -> Tensor:
    """``(B,)`` log N(x; mean, std^2), summed or averaged over non-batch dims, in float32.

    log N = -(x - mean)^2 / (2 std^2) - log std - log sqrt(2 pi), elementwise.
    """
    x, mean, std = x.to(torch.float32), mean.to(torch.float32), std.to(torch.float32)
    elem = -((x - mean) ** 2) / (2.0 * std**2) - torch.log(std) - _HALF_LOG_2PI
    dims = tuple(range(1, elem.ndim))
    if reduction == "mean":
        return elem.mean(dim=dims)
    if reduction == "sum":
        return elem.sum(dim=dims)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def gaussian_step(mean: Tensor, std: Tensor, x_t: Tensor, reduction: str, *, noise: Tensor | None,
                  x_next: Tensor | None, generator: torch.Generator | None) -> Transition:
    """Draw ``x_next = mean + std * noise`` (or score the given ``x_next``) and its log-density.

    ``mean`` is float32 ``(B, *S)``; ``std`` float32 broadcastable, strictly positive.
    """
    if x_next is not None and noise is not None:
        raise ValueError("give either noise= (to draw) or x_next= (to score), not both")
    if x_next is None:
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
        elif noise.shape != mean.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(mean.shape)}")
        x_next = (mean + std * noise.to(torch.float32)).to(x_t.dtype)
    elif x_next.shape != mean.shape:
        raise ValueError(f"x_next has shape {tuple(x_next.shape)}, expected {tuple(mean.shape)}")
    log_prob = gaussian_log_prob(x_next, mean, std, reduction)
    return Transition(x_next=x_next, mean=mean, std=std, log_prob=log_prob)


def deterministic_step(mean: Tensor, x_t: Tensor, *, x_next: Tensor | None) -> Transition:
    """A deterministic transition: ``x_next = mean``; scoring a given ``x_next`` is refused."""
    if x_next is not None:
        from vgrl.types import DeterministicKernelError

        raise DeterministicKernelError("a deterministic (ODE) kernel cannot score a given x_next: it has no density")
    return Transition(x_next=mean.to(x_t.dtype), mean=mean, std=torch.zeros((), dtype=torch.float32))


class FlowKernel(Kernel):
    """Abstract stochastic kernel for velocity ("flow") prediction: a subclass gives the step's
    Gaussian ``mean_std``; drawing, scoring, checks and the ODE limit (Euler) are shared."""

    stochastic = True
    predictions = ("flow",)
    std_formula: ClassVar[str]  # how std is computed, for the zero-noise error

    @abstractmethod
    def mean_std(self, x: Tensor, v: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """float32 ``(mean (B, *S), std (B, 1, ..., 1))`` from ``x_t``, velocity ``v`` and ``t, s`` as ``(B, 1, ..., 1)``."""

    def step(self, pred: Tensor, x_t: Tensor, t: Tensor, s: Tensor, *, prediction: str,
             noise: Tensor | None = None, x_next: Tensor | None = None,
             generator: torch.Generator | None = None) -> Transition:
        self.check_prediction(prediction)
        t, s = flow_times(t, s, x_t, self.name)
        mean, std = self.mean_std(x_t.to(torch.float32), pred.to(torch.float32), per_sample(t, x_t), per_sample(s, x_t))
        require_noise(std, self.name, self.std_formula)
        return gaussian_step(mean, std, x_t, self.reduction, noise=noise, x_next=x_next, generator=generator)

    def ode(self) -> Kernel:
        from vgrl.kernels.ode import ODE
        from vgrl.kernels.options import ODEOptions

        return ODE(ODEOptions(reduction=self.reduction))
