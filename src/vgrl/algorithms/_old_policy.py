"""NFT's old policy ``theta_old``: the weights whose predictions are ``v_old``; not an algorithm.

A private module (the leading underscore keeps it out of the registry). :class:`OldPolicy` holds the one piece
of bookkeeping DiffusionNFT (arXiv 2509.16117) needs beyond its loss: which weights predict ``v_old`` for the
current batch, and, with a lagging sampling policy, the soft-updated copy that draws the rollouts::

    eta_i = min(rate * max(i - flat, 0), max)          before rollout i = 0, 1, ...
    theta_old <- eta_i theta_old + (1 - eta_i) theta    (theta_old = theta at i = 0)

With ``rate = 0`` no copy is kept: the rollout is drawn by the current weights, and the weights of that rollout
are snapshotted at the first loss call after :meth:`arm` (until the first optimiser step they *are* the current
weights, so :meth:`rollout_prediction` returns None and the caller reuses its own prediction: no extra forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from vgrl._lazy import lazy

if TYPE_CHECKING:
    from torch import Tensor, nn

torch = lazy("torch")


@contextlib.contextmanager
def swapped(params: list[Tensor], tensors: list[Tensor]) -> Iterator[None]:
    """Run with ``tensors`` as the data of ``params``; the parameters' own data comes back afterwards."""
    current = [q.data for q in params]
    try:
        for q, t in zip(params, tensors):
            q.data = t
        yield
    finally:
        for q, c in zip(params, current):
            q.data = c


def trained_params(backbone) -> list[Tensor]:
    """The trained (``requires_grad``) parameters of the backbone's trainable module, in order."""
    return [q for q in backbone.trainable().parameters() if q.requires_grad]


class OldPolicy:
    """``theta_old`` of one NFT run: the lagging sampling copy (``rate > 0``) and the snapshot that predicts ``v_old``.

    Args:
        rate, max_eta, flat: the soft-update schedule (module docstring); ``rate = 0``: no lag.
    """

    def __init__(self, rate: float, max_eta: float, flat: int) -> None:
        self.rate, self.max_eta, self.flat = rate, max_eta, flat
        self.lagging: list[Tensor] | None = None    # theta_old (rate > 0 only)
        self.rollouts = 0                           # soft updates done: the i of eta_i
        self._sampled: tuple[nn.Module, list[Tensor]] | None = None   # the weights of the last rollout
        self._snapshot: tuple[nn.Module, list[Tensor]] | None = None  # the weights predicting v_old now
        self._moved = False

    def eta(self, i: int) -> float:
        """Soft-update rate ``eta_i`` before rollout ``i``."""
        return min(self.rate * max(i - self.flat, 0), self.max_eta)

    @contextlib.contextmanager
    def sampling(self, backbone) -> Iterator[None]:
        """Soft-update ``theta_old`` towards the current weights and draw the rollout with it (``rate > 0``);
        the current weights otherwise."""
        if self.rate == 0:
            yield
            return
        module, params = backbone.trainable(), trained_params(backbone)
        with torch.no_grad():
            if self.lagging is None:
                self.lagging = [q.detach().clone() for q in params]
            else:
                if len(self.lagging) != len(params):
                    raise ValueError(f"nft: theta_old holds {len(self.lagging)} tensors, the trained module "
                                     f"{len(params)}; was the checkpoint written for another model?")
                self.lagging = [t.to(q.device) for t, q in zip(self.lagging, params)]  # a checkpoint loads on the CPU
                eta = self.eta(self.rollouts)
                for old, q in zip(self.lagging, params):
                    old.mul_(eta).add_(q.detach(), alpha=1 - eta)
        self.rollouts += 1
        self._sampled = (module, self.lagging)
        with swapped(params, self.lagging):
            yield

    def arm(self) -> None:
        """A new batch: its ``v_old`` comes from the weights that sampled it (snapshotted lazily without a lag)."""
        self._snapshot, self._moved = self._sampled, False
        self._sampled = None

    @property
    def precomputable(self) -> bool:
        """Whether the batch's ``v_old`` weights are fixed now (a lagging copy sampled it), so its predictions can
        be computed for the whole batch before the update."""
        return self.rate > 0 and self._snapshot is not None

    def rollout_prediction(self, backbone, x_t: Tensor, t: Tensor, cond, guidance: float) -> Tensor | None:
        """The rollout weights' prediction, or None while the weights have not moved since the rollout (then it
        equals the current prediction exactly)."""
        params = trained_params(backbone)
        if self._snapshot is None:
            self._snapshot = (backbone.trainable(), [q.detach().clone() for q in params])
            return None
        if not self._moved:
            self._moved = not all(torch.equal(q, s) for q, s in zip(params, self._snapshot[1]))
            if not self._moved:
                return None
        return self.snapshot_prediction(backbone, x_t, t, cond, guidance)

    def snapshot_prediction(self, backbone, x_t: Tensor, t: Tensor, cond, guidance: float) -> Tensor:
        """The snapshot weights' (rollout / ``theta_old``) prediction at ``(x_t, t)``, without gradients."""
        owner, saved = self._snapshot
        if owner is not backbone.trainable():
            raise ValueError("nft: the trained module changed since the rollout snapshot; call prepare() "
                             "on each new batch")
        with swapped(trained_params(backbone), saved), torch.no_grad():
            return backbone.predict(x_t, t, cond, guidance)

    def state_dict(self) -> dict[str, Any]:
        """``theta_old`` and the rollout count (lagging sampling policy); empty otherwise."""
        if self.rate == 0:
            return {}
        return {"rollouts": self.rollouts, "old": None if self.lagging is None else [t.clone() for t in self.lagging]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume ``theta_old`` (``rate > 0``: without a lag there is nothing to resume)."""
        if set(state) != {"rollouts", "old"}:
            raise ValueError(f"nft with old_decay_rate > 0 resumes theta_old from the checkpoint (state keys "
                             f"['old', 'rollouts']), which holds {sorted(state)}: was it written with "
                             "old_decay_rate 0?")
        self.rollouts = int(state["rollouts"])
        self.lagging = None if state["old"] is None else [t.clone() for t in state["old"]]
