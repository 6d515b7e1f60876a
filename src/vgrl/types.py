"""Typed, batch-first dataclasses passed between the stages of vgrl.

Every tensor's first dimension is the batch ``B``. ``S`` stands for the sample shape of the
backbone's working space: ``(C, H, W)`` for images, ``(F, C, H, W)`` for videos,
``(V, C, H, W)`` for multi-view; ``K`` is the number of recorded denoising steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from vgrl._lazy import lazy

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class DeterministicKernelError(RuntimeError):
    """Raised when a log-probability is asked of a deterministic (ODE) transition."""


class Transition:
    """One step of the sampling chain, ``x_t -> x_next`` with ``x_next ~ N(mean, std^2)``.

    Attributes:
        x_next: ``(B, *S)`` the next state, in the dtype of ``x_t``.
        mean: ``(B, *S)`` float32 mean of the step's Gaussian.
        std: float32 standard deviation, broadcastable to ``x_next`` (``(B, 1, ..., 1)``);
            zero for a deterministic step.
        log_prob: ``(B,)`` float32 exact Gaussian log-density of ``x_next``, reduced over the
            non-batch dimensions as the kernel's ``reduction`` option says. Reading it on a
            deterministic transition raises :class:`DeterministicKernelError` — never zeros.
    """

    __slots__ = ("x_next", "mean", "std", "_log_prob")

    def __init__(self, x_next: Tensor, mean: Tensor, std: Tensor, log_prob: Tensor | None = None):
        self.x_next = x_next
        self.mean = mean
        self.std = std
        self._log_prob = log_prob

    @property
    def stochastic(self) -> bool:
        return self._log_prob is not None

    @property
    def log_prob(self) -> Tensor:
        if self._log_prob is None:
            raise DeterministicKernelError(
                "this transition came from a deterministic (ODE) kernel and has no log-probability; "
                "use a stochastic kernel (ddim with eta > 0, flow_sde, dance_sde, cps) for steps whose "
                "likelihood is needed"
            )
        return self._log_prob

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return (
            f"Transition(x_next={tuple(self.x_next.shape)}, std={self.std.flatten()[:1].tolist()}, "
            f"stochastic={self.stochastic})"
        )


@dataclass
class Cond:
    """Frozen text conditioning produced by ``Backbone.encode``.

    Attributes:
        embeds: ``(B, L, D)`` token embeddings of the prompts.
        pooled: ``(B, D')`` pooled embedding, for backbones that take one (SD3-style), else None.
        uncond_embeds: ``(B, L, D)`` embeddings of the negative/empty prompt (classifier-free
            guidance); None when the backbone was asked for no unconditional branch.
        uncond_pooled: ``(B, D')`` pooled negative embedding, or None.
    """

    embeds: Tensor
    pooled: Tensor | None = None
    uncond_embeds: Tensor | None = None
    uncond_pooled: Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _map(self, fn) -> Cond:
        return Cond(**{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                       for f in fields(self)})

    def index(self, idx: Tensor | slice | list[int]) -> Cond:
        """Rows ``idx`` of every tensor."""
        return self._map(lambda x: x[idx])

    def repeat_interleave(self, repeats: int) -> Cond:
        """Each prompt ``repeats`` times in a row (prompt groups)."""
        return self._map(lambda x: x.repeat_interleave(repeats, dim=0))

    def to(self, device: torch.device | str) -> Cond:
        return self._map(lambda x: x.to(device))

    @staticmethod
    def cat(conds: list[Cond]) -> Cond:
        first = conds[0]
        return Cond(**{f.name: (None if getattr(first, f.name) is None
                                else torch.cat([getattr(c, f.name) for c in conds]))
                       for f in fields(first)})


@dataclass
class Trajectory:
    """What a rollout recorded; enough to recompute every recorded step's log-probability.

    Attributes:
        x_t: ``(B, K, *S)`` state before each recorded step.
        x_next: ``(B, K, *S)`` state after each recorded step.
        t: ``(B, K)`` time of each recorded step (flow: in [0, 1]; diffusion: integer timestep).
        s: ``(B, K)`` time after each recorded step.
        log_prob: ``(B, K)`` float32 log-density of each recorded stochastic step (NaN-free);
            columns of deterministic recorded steps are not present: recording a deterministic
            step is refused by the rollout.
        step_idx: ``(K,)`` index of each recorded step in the schedule.
        x0: ``(B, *S)`` the final sample in the working space (latents or pixels).
        seeds: ``(B,)`` int64 seed of each sample's own generator; rolling a sample out alone
            with its seed reproduces it.
        cond: the conditioning the rollout used.
        guidance_scale: classifier-free guidance scale used for every step.
        num_steps: the length of the schedule.
        sde_steps: ``(num_steps,)`` bool, which steps used the stochastic kernel.
    """

    x_t: Tensor
    x_next: Tensor
    t: Tensor
    s: Tensor
    log_prob: Tensor
    step_idx: Tensor
    x0: Tensor
    seeds: Tensor
    cond: Cond
    guidance_scale: float
    num_steps: int
    sde_steps: Tensor

    def __len__(self) -> int:
        return self.x0.shape[0]

    def index(self, idx: Tensor | slice | list[int]) -> Trajectory:
        """The sub-trajectory of samples ``idx`` (batch rows; an index tensor may be on any device)."""
        cpu_idx = idx.cpu() if isinstance(idx, torch.Tensor) else idx  # seeds stay on the CPU
        return replace(self, x_t=self.x_t[idx], x_next=self.x_next[idx], t=self.t[idx],
                       s=self.s[idx], log_prob=self.log_prob[idx], x0=self.x0[idx],
                       seeds=self.seeds[cpu_idx], cond=self.cond.index(idx))

    def to(self, device: torch.device | str) -> Trajectory:
        """The trajectory with its sample tensors (states, times, log-probs, ``x0``, ``cond``) on ``device``;
        ``seeds``, ``step_idx`` and ``sde_steps`` are bookkeeping and stay on the CPU."""
        return replace(self, x_t=self.x_t.to(device), x_next=self.x_next.to(device), t=self.t.to(device),
                       s=self.s.to(device), log_prob=self.log_prob.to(device), x0=self.x0.to(device),
                       cond=self.cond.to(device))


@dataclass
class RewardOutput:
    """A reward's verdict on a batch.

    Attributes:
        scores: ``(B,)`` float32 scalar reward per sample.
        details: named per-sample values (``(B,)`` tensors or lists) for logging.
        dense: optional credit map: ``(B, H, W)`` per pixel, ``(B, F)`` per frame or ``(B, V)``
            per view, where the reward can localise it.
    """

    scores: Tensor
    details: dict[str, Any] = field(default_factory=dict)
    dense: Tensor | None = None

    def __post_init__(self) -> None:
        if self.scores.ndim != 1:
            raise ValueError(f"RewardOutput.scores must have shape (B,), got {tuple(self.scores.shape)}")

    def to(self, device: torch.device | str) -> RewardOutput:
        """``scores`` and ``dense`` on ``device`` (``details`` unchanged)."""
        return replace(self, scores=self.scores.to(device), dense=None if self.dense is None else self.dense.to(device))


@dataclass
class Batch:
    """A training batch: a trajectory plus the signal an algorithm derived from its rewards.

    Attributes:
        traj: the rollout.
        rewards: ``(B,)`` raw rewards.
        adv: ``(B,)`` advantages (or weights) the algorithm will use.
        group_ids: ``(B,)`` int64 prompt-group id of each sample.
        prompts: ``B`` prompt strings (needed by rewards an algorithm calls itself, and per-prompt statistics).
        metadata: ``B`` per-sample metadata objects for the reward (entries may be None).
        weights: optional ``(B,)`` or dense credit (``(B, H, W)``) the algorithm weights its loss with.
        precomputed: per-sample tensors (batch dimension first) the algorithm computed for the whole batch
            before the update (:meth:`Algorithm.before_update`; NFT: the lagging old policy's predictions).
    """

    traj: Trajectory
    rewards: Tensor
    adv: Tensor
    group_ids: Tensor
    prompts: list[str] | None = None
    metadata: list[Any] | None = None
    weights: Tensor | None = None
    precomputed: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rewards)

    def index(self, idx: Tensor | list[int]) -> Batch:
        """The minibatch of samples ``idx`` (a 1-D index tensor or list)."""
        rows = torch.as_tensor(idx, dtype=torch.long)
        pick = (lambda seq: None if seq is None else [seq[i] for i in rows.tolist()])
        return Batch(traj=self.traj.index(rows), rewards=self.rewards[rows], adv=self.adv[rows],
                     group_ids=self.group_ids[rows], prompts=pick(self.prompts), metadata=pick(self.metadata),
                     weights=None if self.weights is None else self.weights[rows],
                     precomputed={k: v[rows] for k, v in self.precomputed.items()})

    def to(self, device: torch.device | str) -> Batch:
        """The batch with its trajectory (:meth:`Trajectory.to`) and training signal on ``device``."""
        return Batch(traj=self.traj.to(device), rewards=self.rewards.to(device), adv=self.adv.to(device),
                     group_ids=self.group_ids.to(device), prompts=self.prompts, metadata=self.metadata,
                     weights=None if self.weights is None else self.weights.to(device),
                     precomputed={k: v.to(device) for k, v in self.precomputed.items()})
