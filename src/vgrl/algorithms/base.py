"""The algorithm contract, and the build-time check that an algorithm fits its kernel and reward.

An algorithm declares what it ``needs``; turns a rollout and its rewards into a training signal
(``prepare``); names the loss *units* of a minibatch (``units``: by default its recorded denoising
steps); and returns ``loss, metrics`` for one minibatch and unit (``loss``). The trainer averages the
loss over units and minibatches of one optimiser step, so ``backward`` of each ``loss / (units x
minibatches)`` gives the gradient of the mean. Loops, optimisers and distribution belong to the trainer,
never to an algorithm. State an algorithm carries across iterations (DDPO's per-prompt statistics) is
returned by ``state_dict`` so that resume is exact. The rollout runs inside ``sampling_policy(backbone)``:
the current weights by default; an algorithm whose sampling policy lags the trained one (DiffusionNFT's
soft-updated ``theta_old``) swaps its weights in there. Between ``prepare`` and the update, ``before_update``
may compute per-sample tensors for the whole batch in one no-grad pass (``batch.precomputed``, sliced with
each minibatch): nothing by default; NFT's lagging old policy predicts there once instead of per minibatch.

Runtime objects an algorithm needs are explicit constructor arguments: the trainer builds every
algorithm as ``cls(options, reward=reward)``; a reward-gradient algorithm (``needs.differentiable_reward``)
calls ``self.reward`` in its loss.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from vgrl.types import Batch, RewardOutput, Trajectory

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class Needs:
    """What an algorithm requires of the rest of the run."""

    step_log_probs: bool = False        # recorded per-step log-probs (likelihood-ratio methods)
    stochastic_kernel: bool = False     # a kernel with a density (not ``ode``)
    reference: bool = False             # a frozen reference model (KL)
    groups: bool = False                # several samples per prompt
    differentiable_reward: bool = False  # gradients through the reward (reward backprop)
    pairs: bool = False                 # trains on (winner, loser) pairs: one process pairs a rollout's groups
    dataset: bool = False               # trains on a preference dataset (data.preferences) instead of rollouts


class AlgorithmOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Algorithm(ABC):
    """One post-training algorithm; subclasses set ``name``, ``Options`` and ``needs(options)``."""

    name: ClassVar[str]
    Options: ClassVar[type[AlgorithmOptions]] = AlgorithmOptions
    # True when, at the rollout's weights, each sample's loss gradient is scaled by its advantage, so that a
    # batch of zero advantages gives a zero gradient (ratio-based policy gradients, NFT's implicit policies);
    # the conformance suite checks it. False for weightings with a floor (RWR, RAFT), pairs and reward gradients.
    advantage_weighted: ClassVar[bool] = False

    def __init__(self, options: AlgorithmOptions, reward=None) -> None:
        """``reward``: the run's reward object, for algorithms that call it themselves (reward gradients)."""
        self.options = options
        self.reward = reward

    @classmethod
    def examples(cls) -> list[AlgorithmOptions]:
        """Option sets that between them reach every code path with its own contract (offline data, another
        mode): the conformance suite (tests/conformance/test_algorithms.py) runs each. The defaults by default."""
        return [cls.Options()]

    @property
    @abstractmethod
    def needs(self) -> Needs:
        """Requirements under these options (e.g. a reference model only when the KL weight > 0); reads
        ``self.options`` only, so that :meth:`needs_for` can answer before the algorithm is built."""

    @classmethod
    def needs_for(cls, options: AlgorithmOptions) -> Needs:
        """:attr:`needs` under ``options`` without building the algorithm (``vgrl validate`` checks them)."""
        unbuilt = cls.__new__(cls)
        unbuilt.options = options
        return unbuilt.needs

    @abstractmethod
    def prepare(self, traj: Trajectory, reward: RewardOutput, group_ids: Tensor,
                prompts: list[str] | None = None, metadata: list[Any] | None = None) -> Batch:
        """Rewards -> training signal (advantages, weights or pairs) for the whole rollout."""

    def units(self, batch: Batch) -> list[int]:
        """The loss units of one minibatch: the schedule indices of its recorded steps by default."""
        return batch.traj.step_idx.tolist()

    @abstractmethod
    def loss(self, backbone, kernel, batch: Batch, step_idx: int, ref=None) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss and metrics for minibatch ``batch`` at unit ``step_idx`` (a recorded step)."""

    def sampling_policy(self, backbone) -> contextlib.AbstractContextManager:
        """Context the trainer draws each rollout in: the current weights by default (nothing to do)."""
        return contextlib.nullcontext()

    def before_update(self, backbone, batch: Batch) -> Batch:
        """The batch the update uses, with anything computed once for all of it in ``batch.precomputed``.

        The trainer calls it on the device batch without gradients, under the training precision
        (``train.mixed_precision``, as the loss): what it computes is compared with the loss's own forwards,
        so it must carry the same rounding (NFT's ``v_old - v_theta`` on the quickstart: bf16 rounding, ~2e-2
        RMS, would swamp the lag itself, 3e-3 to 2e-2 RMS). The batch as it is by default."""
        return batch

    def state_dict(self) -> dict[str, Any]:
        """State carried across iterations (tensors, numbers, strings, lists, dicts); empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"algorithm {self.name!r} keeps no state but the checkpoint holds {sorted(state)}")


def check_compatible(algorithm: Algorithm, kernel, reward, *, group_size: int, has_reference: bool) -> None:
    """Raise one line explaining why ``algorithm`` cannot run with this kernel / reward / setup."""
    needs, name = algorithm.needs, algorithm.name
    if (needs.step_log_probs or needs.stochastic_kernel) and not kernel.stochastic:
        raise ValueError(f"algorithm {name!r} needs per-step log-probabilities, but kernel {kernel.name!r} is "
                         "deterministic; use a stochastic kernel (ddim with eta > 0, flow_sde, dance_sde, cps)")
    if needs.differentiable_reward and not reward.differentiable:
        raise ValueError(f"algorithm {name!r} back-propagates through the reward, but reward {reward.name!r} is "
                         "not differentiable; use a differentiable reward or a likelihood-ratio algorithm")
    if needs.groups and group_size < 2:
        raise ValueError(f"algorithm {name!r} compares samples of a prompt group: group_size must be >= 2, "
                         f"got {group_size}")
    if needs.reference and not has_reference:
        raise ValueError(f"algorithm {name!r} with a KL term needs a reference model")
