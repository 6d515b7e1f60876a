"""The ``shapes`` world's programmatic checker as a reward (GenEval-style verification).

GenEval (Ghosh et al., arXiv 2310.11513) scores text-to-image alignment by detecting objects and
checking the prompt's facts: object presence, counts, colours, relative position and attribute
binding; Flow-GRPO (arXiv 2505.05470) trains on it as a verifiable reward. Here the detector is the
shapes world's exact one (:mod:`vgrl.worlds._shapes_checker`) and the facts come from each sample's
:class:`~vgrl.worlds.shapes.PromptMeta`, so the prompt text is not read (paraphrases score the same).

With facts ``f_1..f_n`` of a prompt, each with a score ``c_j`` in [0, 1] and a verdict ``ok_j``:

* ``score="partial"``: ``r = (1/n) sum_j c_j`` (partial credit, in [0, 1]);
* ``score="pass"``:    ``r = 1[all_j ok_j]`` (GenEval's binary score).

GenEval's rules let "a X" pass however many other objects are drawn, and a policy trained on them learns
to draw extra objects (docs/hacking.md). ``extra_penalty = lambda`` charges that:
``r <- r - lambda 1[extra > 0]``, with ``extra`` the detected components beyond the objects the prompt
names (:class:`~vgrl.worlds._shapes_checker.CheckResult`).

The dense map (``dense=True``) is the checker's per-pixel credit (matched objects: their fact score; wrong
objects: 0; background: the partial score) shifted per sample by ``r - partial``, so that its background is the
sample's reward ``r`` whatever ``score`` and ``extra_penalty`` say while its local deviations from ``r`` are
the checker's. Without the shift a penalised sample's whole map would sit ``lambda`` above its reward, and
dense credit would push its background (most pixels) towards the positive policy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from vgrl._lazy import lazy
from vgrl.rewards.base import RewardInputError, RewardOptions, Reward
from vgrl.types import RewardOutput
from vgrl.worlds.shapes import PromptMeta, ShapesWorld

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class ShapesCheckerOptions(RewardOptions):
    score: Literal["partial", "pass"] = Field(
        "partial", description="'partial': mean fact score in [0, 1]; 'pass': 1 if every fact holds else 0")
    resolution: int = Field(32, ge=32, description="image side in pixels the checker is tuned for")
    dense: bool = Field(False, description="also return the per-pixel credit map (B, H, W) in `dense`: "
                                           "matched objects' fact scores, 0 on wrong objects, the partial score "
                                           "elsewhere, all shifted by (reward - partial score)")
    extra_penalty: float = Field(0.0, ge=0, description="subtracted from the score of a sample that draws more "
                                                        "objects than its prompt names (0 = GenEval's rules)")


class ShapesCheckerReward(Reward):
    """Partial-credit or pass/fail verdict of the shapes-world checker, per sample.

    ``metadata[i]`` must be the :class:`PromptMeta` of sample ``i`` (``world.prompts()[k].meta``);
    images must be ``resolution x resolution``. ``details``: ``passed`` ``(B,)`` bool, ``partial``
    ``(B,)`` float32 (the partial credit, whatever ``score`` says), ``extra_objects`` ``(B,)`` bool (more
    objects drawn than the prompt names) and ``category`` (list of str).

    With ``dense=True`` the output's ``dense`` is the ``(B, H, W)`` per-pixel credit map of
    :meth:`vgrl.worlds._shapes_checker.ShapesChecker.credit_map` and the instance's ``granularity``
    is ``"dense"``: algorithms with a ``dense_credit`` option route their loss by it.
    """

    name = "shapes_checker"
    differentiable = False
    granularity = "pointwise"
    Options: ClassVar[type[RewardOptions]] = ShapesCheckerOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.world = ShapesWorld(self.options.resolution)
        self.granularity = "dense" if self.options.dense else "pointwise"

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        r = self.options.resolution
        if tuple(images.shape[2:]) != (r, r):
            raise RewardInputError(f"images must be {r}x{r} for reward 'shapes_checker' (option resolution={r}), "
                                   f"got {tuple(images.shape[2:])}")
        for i, m in enumerate(metadata):
            if not isinstance(m, PromptMeta):
                raise RewardInputError(
                    f"metadata[{i}] must be a shapes-world PromptMeta (e.g. world.prompts()[k].meta), "
                    f"got {type(m).__name__}")
        dense = None
        if self.options.dense:
            res, dense = self.world.check_dense(images, metadata)
            dense = dense.to(images.device)
        else:
            res = self.world.check(images, metadata)
        scores = res.score if self.options.score == "partial" else res.passed.to(torch.float32)
        if self.options.extra_penalty > 0:
            scores = scores - self.options.extra_penalty * (res.extra > 0).to(torch.float32)
        if dense is not None:  # the map's level is the reward, its local deviations the checker's
            dense = dense + (scores - res.score).to(dense.device).view(-1, 1, 1)
        details = {"passed": res.passed, "partial": res.score, "extra_objects": res.extra > 0,
                   "category": [m.category for m in metadata]}
        return RewardOutput(scores=scores.to(device=images.device, dtype=torch.float32), details=details,
                            dense=dense)


COMPONENT = ShapesCheckerReward
