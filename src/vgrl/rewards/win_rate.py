"""Groupwise win rate: the fraction of a sample's prompt group that an inner reward scores lower.

Pref-GRPO (Wang et al., arXiv 2508.20751) replaces GRPO's pointwise reward by a *pairwise preference
win rate*: the images of a prompt group are compared pairwise by a pairwise preference model
(UnifiedReward-Think) and each image's reward is the fraction of its comparisons it wins. Their point
is the "illusory advantage": a pointwise reward model gives a group's images nearly equal scores, and
group normalisation blows those tiny gaps up into large advantages that the policy can game.

Here the pairwise judgement is the comparison of an **inner reward's scores**, so any pointwise reward
(``shapes_checker``, ``jpeg``, a learned reward, ...) becomes a win-rate reward. With inner scores
``s`` ``(B,)``, ``G(i)`` the samples whose prompt string is identical to sample ``i``'s (its GRPO group,
:func:`vgrl.rewards.diversity.group_ids`; ``n_i = |G(i)| >= 2``) and ``m = tie_margin``:

    w_i = 1 / (n_i - 1) * sum_{j in G(i), j != i} ( 1[s_i - s_j > m] + 1/2 * 1[|s_i - s_j| <= m] )

i.e. wins count 1 and ties 1/2. With ``m = 0`` this is ``w_i = (rank_i - 1) / (n_i - 1)``, ``rank_i`` the
ascending rank of ``s_i`` in its group with ties given their average rank (the Mann-Whitney
statistic of one sample against the rest). Consequences: ``w`` is in [0, 1]; a group's win rates
always average exactly 1/2 (so the mean reward of a batch says nothing about progress: log the
inner scores, ``details["inner"]``); ``w`` is unchanged by any strictly increasing transform of the
inner reward (its scale and offset do not matter); groups never interact.

Unlike Pref-GRPO's preference model, comparing pointwise scores does **not** remove the illusory
advantage by itself: a gap of 1e-6 still counts as a full win. ``tie_margin`` counts gaps up to ``m``
as ties (then the rank identity above no longer holds exactly). The reward is not differentiable
(``granularity = "groupwise"``: scoring a batch in pieces that split a group changes the scores, and a
sample alone in its group raises).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from vgrl._lazy import lazy
from vgrl.rewards.base import Reward, RewardOptions
from vgrl.rewards.compose import check_spec, reward_from_spec
from vgrl.rewards.diversity import prompt_groups
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class WinRateOptions(RewardOptions):
    inner: dict[str, Any] | None = Field(
        None, description="the reward to compare, as {name: NAME, options: {...}} (as a compose term); "
                          "in Python a built reward may be passed as reward= instead")
    tie_margin: float = Field(0.0, ge=0.0, description="inner-score gaps up to this count as ties (1/2)")


def win_rates(scores: Tensor, groups: Tensor, tie_margin: float = 0.0) -> Tensor:
    """``(B,)`` float32 win rate of each of ``scores`` ``(B,)`` against its group (``groups`` ``(B,)`` ids).

    Raises ``ValueError`` if a group has a single member.
    """
    groups = groups.to(scores.device)
    same = groups[:, None] == groups[None, :]
    sizes = same.sum(dim=1)
    if bool((sizes < 2).any()):
        raise ValueError(f"samples {(sizes < 2).nonzero().flatten().tolist()} are alone in their group")
    d = scores[:, None] - scores[None, :]  # d[i, j] = s_i - s_j
    win = (d > tie_margin).float() + 0.5 * (d.abs() <= tie_margin).float()
    others = same & ~torch.eye(len(groups), dtype=torch.bool, device=scores.device)
    return ((win * others).sum(dim=1) / (sizes - 1)).float()


class WinRate(Reward):
    """Win rate of each sample's inner score against the other samples of its prompt (module docstring).

    Args:
        reward: (Python only) a built inner reward; otherwise give option ``inner``.
        inner: ``{"name": NAME, "options": {...}}``, built like a :class:`~vgrl.rewards.compose.Compose`
            term (errors name ``inner.options.<field>``).
        tie_margin: inner-score gaps up to this count as ties.

    ``details``: ``inner`` ``(B,)`` the inner scores, ``group`` ``(B,)`` group ids (identical prompts
    share one) and the inner reward's own details under ``inner/<key>``; its ``dense`` map is dropped.
    """

    name = "win_rate"
    differentiable = False
    granularity = "groupwise"
    Options: ClassVar[type[RewardOptions]] = WinRateOptions

    @classmethod
    def example(cls, root: Path) -> WinRate:
        """Win rates of the JPEG reward within prompt groups (the conformance suite's instance)."""
        return cls(inner={"name": "jpeg"})

    def __init__(self, reward: Reward | None = None, **options: Any) -> None:
        super().__init__(**options)
        spec = self.options.inner
        if (reward is None) == (spec is None):
            raise ValueError("reward 'win_rate' compares one inner reward: give exactly one of option inner "
                             "({name: NAME, options: {...}}, e.g. {name: shapes_checker}) and, in Python, reward=")
        if reward is not None and not isinstance(reward, Reward):
            raise TypeError(f"reward must be a vgrl Reward (e.g. vgrl.rewards.get('jpeg')), "
                            f"got {type(reward).__name__}")
        self.inner = reward if reward is not None else reward_from_spec(spec, "inner")
        self.layouts = self.inner.layouts

    @classmethod
    def check_config(cls, options: dict[str, Any]) -> bool:
        """The options and the inner spec (required from a config), without building the inner reward."""
        check_spec(cls.Options.model_validate(options).inner, ("inner",))
        return cls.differentiable

    def __repr__(self) -> str:
        return f"WinRate(inner={self.inner!r}, tie_margin={self.options.tie_margin!r})"

    def monitor_scores(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Any] | None = None) -> Tensor:
        """The inner reward's: win rates average 0.5 in every group whatever the samples' quality."""
        return self.inner.monitor_scores(images, prompts, metadata)

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        groups, _ = prompt_groups(prompts, "win_rate")
        out = self.inner(images, prompts, metadata)
        s = out.scores.detach()
        details: dict[str, Any] = {"inner": s, "group": groups}
        details.update({f"inner/{k}": v for k, v in out.details.items()})
        return RewardOutput(scores=win_rates(s, groups, self.options.tie_margin), details=details)


COMPONENT = WinRate
