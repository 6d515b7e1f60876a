"""The only sampling loop of vgrl, and the recomputation of recorded log-probabilities.

``rollout`` runs backbone x kernel over the backbone's time grid. A :class:`StepPlan` says which
steps are stochastic (the kernel) and which deterministic (the kernel's ODE limit), and which
stochastic steps to record. Every sample has its own generator, seeded by its recorded seed, which
draws its initial noise and then its step noise in order, both through ``backbone.init_noise`` (the
backbone owns its noise's shape) — so a sample rolled out alone, or in any batch, gets the same noise,
and can be regenerated from its seed. The generators are CPU generators
whatever ``backbone.device``: noise is drawn on the CPU and copied to the device, so a seed gives the
same sample on CPU and GPU up to kernel numerics.

Invariant (tested): ``recompute_log_prob`` on a fresh trajectory with unchanged weights returns the
recorded log-probabilities exactly in fp32 on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING


from vgrl._lazy import lazy, lazy_function, no_grad
from vgrl.kernels.base import Kernel
from vgrl.types import Cond, Trajectory, Transition

if TYPE_CHECKING:
    from torch import Tensor

    from vgrl.backbones.base import Backbone

torch = lazy("torch")
seeded = lazy_function("vgrl.backbones.base", "seeded")


@dataclass(frozen=True)
class StepPlan:
    """Which of ``num_steps`` denoising steps are stochastic, and which of those are recorded.

    Attributes:
        sde: per step, True where the stochastic kernel is used (ODE elsewhere).
        record: sorted schedule indices of recorded steps; each must be stochastic.
    """

    sde: tuple[bool, ...]
    record: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.sde)
        bad = [i for i in self.record if not (0 <= i < n) or not self.sde[i]]
        if bad:
            raise ValueError(f"StepPlan.record {list(bad)} are not stochastic steps in 0..{n - 1}; "
                             f"stochastic steps: {[i for i, s in enumerate(self.sde) if s]}")
        if list(self.record) != sorted(set(self.record)):
            raise ValueError(f"StepPlan.record must be sorted and unique, got {list(self.record)}")

    @property
    def num_steps(self) -> int:
        return len(self.sde)

    @classmethod
    def all(cls, num_steps: int, record: list[int] | None = None) -> StepPlan:
        """Every step stochastic (DDPO, Flow-GRPO); records all unless ``record`` is given."""
        return cls((True,) * num_steps, tuple(range(num_steps) if record is None else record))

    @classmethod
    def window(cls, num_steps: int, start: int, size: int, record: list[int] | None = None) -> StepPlan:
        """An SDE window of ``size`` steps from ``start``, ODE elsewhere (MixGRPO, Flow-GRPO-Fast)."""
        if start < 0 or size < 1 or start + size > num_steps:
            raise ValueError(f"window start={start} size={size} does not fit in {num_steps} steps")
        sde = tuple(start <= i < start + size for i in range(num_steps))
        return cls(sde, tuple(range(start, start + size) if record is None else record))

    @classmethod
    def ode(cls, num_steps: int) -> StepPlan:
        """Fully deterministic sampling; nothing recorded."""
        return cls((False,) * num_steps, ())


def kernel_for(backbone: Backbone, name: str, **options) -> Kernel:
    """Kernel ``name`` built for ``backbone``: checks the prediction type, passes runtime objects.

    Raises a one-line error naming the kernel and the valid ones when it cannot step this backbone.
    """
    from vgrl import kernels, registry

    cls = registry.resolve("kernels", name)
    if backbone.prediction not in cls.predictions:
        valid = [k for k in kernels.available() if backbone.prediction in registry.resolve("kernels", k).predictions]
        raise ValueError(f"kernel {name!r} cannot step a {backbone.prediction!r}-prediction backbone "
                         f"({backbone.name!r}); valid kernels for it: {', '.join(valid)}")
    if "scheduler" in cls.runtime_args and backbone.time_kind == "discrete":
        options.setdefault("scheduler", backbone.scheduler)
    return kernels.get(name, **options)


def make_seeds(batch: int, generator: torch.Generator | None = None) -> Tensor:
    """``(batch,)`` int64 per-sample seeds drawn from ``generator`` (or the global RNG)."""
    return torch.randint(0, 2**62, (batch,), generator=generator, dtype=torch.int64)


@no_grad
def rollout(backbone: Backbone, kernel: Kernel, cond: Cond, num_steps: int, plan: StepPlan,
            generator: torch.Generator | None = None, *, seeds: Tensor | None = None,
            guidance_scale: float = 1.0) -> Trajectory:
    """Sample ``len(cond)`` images and record what ``plan`` asks for.

    Args:
        cond: ``(B, ...)`` conditioning from ``backbone.encode``.
        plan: a :class:`StepPlan` of length ``num_steps``.
        generator: draws the per-sample seeds when ``seeds`` is not given.
        seeds: ``(B,)`` int64 per-sample seeds (overrides ``generator``).
    Returns:
        a :class:`Trajectory` with ``K = len(plan.record)`` recorded steps.
    """
    batch = len(cond)
    if plan.num_steps != num_steps:
        raise ValueError(f"plan has {plan.num_steps} steps but num_steps={num_steps}")
    if any(plan.sde) and not kernel.stochastic:
        raise ValueError(f"plan has stochastic steps but kernel {kernel.name!r} is deterministic; "
                         "use StepPlan.ode or a stochastic kernel")
    seeds = make_seeds(batch, generator) if seeds is None else torch.as_tensor(seeds, dtype=torch.int64)
    if seeds.shape != (batch,):
        raise ValueError(f"seeds must have shape ({batch},), got {tuple(seeds.shape)}")
    gens = [seeded(int(s)) for s in seeds.tolist()]
    device = backbone.device
    x = backbone.init_noise(gens).to(device)  # each generator goes on to draw its sample's step noise
    grid, ode = backbone.timesteps(num_steps).to(device), kernel.ode()
    recorded: dict[str, list[Tensor]] = {"x_t": [], "x_next": [], "t": [], "s": [], "log_prob": []}
    for i in range(num_steps):
        t, s = grid[i].expand(batch), grid[i + 1].expand(batch)
        pred = backbone.predict(x, t, cond, guidance_scale)
        if plan.sde[i]:
            noise = backbone.init_noise(gens).to(device)
            tr = kernel.step(pred, x, t, s, prediction=backbone.prediction, noise=noise)
        else:
            tr = ode.step(pred, x, t, s, prediction=backbone.prediction)
        if i in plan.record:
            for key, value in (("x_t", x), ("x_next", tr.x_next), ("t", t), ("s", s), ("log_prob", tr.log_prob)):
                recorded[key].append(value)
        x = tr.x_next
    stacked = {k: (torch.stack(v, dim=1) if v else _empty(k, batch, backbone)) for k, v in recorded.items()}
    return Trajectory(**stacked, step_idx=torch.tensor(plan.record, dtype=torch.long), x0=x, seeds=seeds,
                      cond=cond, guidance_scale=guidance_scale, num_steps=num_steps,
                      sde_steps=torch.tensor(plan.sde, dtype=torch.bool))


def _empty(key: str, batch: int, backbone: Backbone) -> Tensor:
    shape = (batch, 0, *backbone.sample_shape) if key in ("x_t", "x_next") else (batch, 0)
    return torch.empty(shape, dtype=torch.float32, device=backbone.device)


def recompute_log_prob(backbone: Backbone, kernel: Kernel, traj: Trajectory, step_idx: int) -> Transition:
    """Re-score the recorded step ``step_idx`` (a schedule index) under the current weights, with grad.

    Returns the kernel's :class:`Transition` for the recorded ``x_next``: ``.log_prob`` ``(B,)`` and
    ``.mean`` carry gradients to the backbone's trainable parameters.
    """
    positions = (traj.step_idx == step_idx).nonzero().flatten()
    if positions.numel() != 1:
        raise ValueError(f"step {step_idx} was not recorded; recorded steps: {traj.step_idx.tolist()}")
    k = int(positions)
    x_t, t, s = traj.x_t[:, k], traj.t[:, k], traj.s[:, k]
    pred = backbone.predict(x_t, t, traj.cond, traj.guidance_scale)
    return kernel.step(pred, x_t, t, s, prediction=backbone.prediction, x_next=traj.x_next[:, k])


def plan_from_config(cfg, num_steps: int) -> StepPlan:
    """A :class:`StepPlan` from a ``PlanConfig`` (kind all | window | ode, optional record subset)."""
    if cfg.kind == "ode":
        return StepPlan.ode(num_steps)
    if cfg.kind == "window":
        return StepPlan.window(num_steps, cfg.window_start, cfg.window_size, cfg.record)
    return StepPlan.all(num_steps, cfg.record)
