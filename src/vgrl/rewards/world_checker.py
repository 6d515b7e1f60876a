"""A world's programmatic checker as a reward: one reward for every world (:mod:`vgrl.worlds.base`).

GenEval (Ghosh et al., arXiv 2310.11513) scores text-to-image alignment by checking a prompt's facts
on the sample; Flow-GRPO (arXiv 2505.05470) trains on such a verifiable reward. A world's
:meth:`~vgrl.worlds.base.World.check` does it for its own prompts: each sample's facts come from its prompt
metadata (the world's ``Meta``), so the prompt text is not read (paraphrases score the same).

With ``partial`` the checker's partial credit and ``passed`` its verdict of sample ``i``:

* ``score="partial"``: ``r = partial`` (in [0, 1]);
* ``score="pass"``:    ``r = 1[passed]`` (GenEval's binary score);

then ``r <- r - sum_k lambda_k 1[flag_k]`` for every world flag ``k`` (a per-sample defect the world
declares, e.g. drawing more objects than the prompt names) with a penalty ``lambda_k > 0`` in ``penalties``.

The dense map (``dense=True``) is the checker's credit map shifted per sample by ``r - partial``, so that
the map's level is the sample's reward ``r`` whatever ``score`` and the penalties say, while its local
deviations from ``r`` are the checker's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from vgrl import registry
from vgrl._lazy import lazy
from vgrl.layouts import LAYOUTS
from vgrl.rewards.base import Reward, RewardInputError, RewardOptions
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class WorldCheckerOptions(RewardOptions):
    world: str = Field("shapes", description="the world whose checker scores: registry name or package.module:Class")
    resolution: int = Field(32, ge=1, description="sample side in pixels the world is built for; samples must "
                                                  "be exactly this size")
    score: Literal["partial", "pass"] = Field(
        "partial", description="'partial': the checker's partial credit in [0, 1]; 'pass': 1 if every fact holds "
                               "else 0")
    dense: bool = Field(False, description="also return the checker's credit map in `dense`, shifted per sample by "
                                           "(reward - partial credit)")
    penalties: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="world flag -> amount subtracted from the score of a sample the "
                                          "checker flags (the world's flags: World.flags())")


class WorldCheckerReward(Reward):
    """Partial-credit or pass/fail verdict of a world's checker, per sample.

    ``metadata[i]`` must be the world's ``Meta`` of sample ``i`` (``world.prompts()[k].meta``); samples must be
    in the world's layout, ``resolution`` pixels on a side. ``details``: ``passed`` ``(B,)`` bool, ``partial``
    ``(B,)`` float32 (the partial credit, whatever ``score`` says), one ``(B,)`` bool per world flag and
    ``category`` (list of str). With ``dense=True`` the instance's ``granularity`` is ``"dense"``: algorithms
    with a ``dense_credit`` option route their loss by the map. The instance's ``layouts`` is the world's.
    """

    name = "world_checker"
    differentiable = False
    granularity = "pointwise"
    layouts: ClassVar[tuple[str, ...]] = tuple(LAYOUTS)  # any world's; an instance accepts its world's only
    Options: ClassVar[type[RewardOptions]] = WorldCheckerOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        world_name, resolution, penalties = self.world_settings()
        world_cls = registry.resolve("worlds", world_name)
        unknown = [k for k in penalties if k not in world_cls.flags()]
        if unknown:
            raise ValueError(f"penalties: {', '.join(map(repr, unknown))} not a flag of world {world_cls.name!r}; "
                             f"valid: {', '.join(world_cls.flags()) or 'none'}")
        self.world = world_cls(resolution=resolution)
        self.resolution = resolution
        self.penalties = {k: v for k, v in penalties.items() if v > 0}
        self.layouts = (world_cls.layout,)
        self.granularity = "dense" if self.options.dense else "pointwise"

    def world_settings(self) -> tuple[str, int, dict[str, float]]:
        """``(world, resolution, penalties)`` from the options; a named preset of one world overrides it."""
        o = self.options
        return o.world, o.resolution, dict(o.penalties)

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        r, world = self.resolution, self.world
        if tuple(images.shape[-2:]) != (r, r):
            raise RewardInputError(f"images must be {r}x{r} for reward {self.name!r} (option resolution={r}), "
                                   f"got {tuple(images.shape[-2:])}")
        for i, m in enumerate(metadata):
            if not isinstance(m, world.Meta):
                raise RewardInputError(
                    f"metadata[{i}] must be a {world.name}-world {world.Meta.__name__} (e.g. world.prompts()[k].meta), "
                    f"got {type(m).__name__}")
        res = world.check(images, metadata, dense=self.options.dense)
        scores = res.score if self.options.score == "partial" else res.passed.to(torch.float32)
        for flag, penalty in self.penalties.items():
            scores = scores - penalty * res.values[flag].to(torch.float32)
        dense = None
        if self.options.dense:  # the map's level is the reward, its local deviations the checker's
            dense = res.dense.to(images.device)
            shift = (scores - res.score).to(dense.device)
            dense = dense + shift.view(-1, *[1] * (dense.ndim - 1))
        details = {"passed": res.passed, "partial": res.score, **{k: res.values[k] for k in world.flags()},
                   "category": [m.category for m in metadata]}
        return RewardOutput(scores=scores.to(device=images.device, dtype=torch.float32), details=details,
                            dense=dense)


COMPONENT = WorldCheckerReward
