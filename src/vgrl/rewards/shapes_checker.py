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
names (the world's flag ``extra_objects``, :class:`~vgrl.worlds._shapes_checker.ShapesCheckResult`).

The dense map (``dense=True``) is the checker's per-pixel credit (matched objects: their fact score; wrong
objects: 0; background: the partial score) shifted per sample by ``r - partial``, so that its background is the
sample's reward ``r`` whatever ``score`` and ``extra_penalty`` say while its local deviations from ``r`` are
the checker's. Without the shift a penalised sample's whole map would sit ``lambda`` above its reward, and
dense credit would push its background (most pixels) towards the positive policy.

This reward is the generic :mod:`vgrl.rewards.world_checker` with ``world: shapes`` and
``penalties: {extra_objects: extra_penalty}``: a named preset keeping the shapes options, nothing more.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from vgrl.rewards.base import RewardOptions
from vgrl.rewards.world_checker import WorldCheckerReward


class ShapesCheckerOptions(RewardOptions):
    score: Literal["partial", "pass"] = Field(
        "partial", description="'partial': mean fact score in [0, 1]; 'pass': 1 if every fact holds else 0")
    resolution: int = Field(32, ge=32, description="image side in pixels the checker is tuned for")
    dense: bool = Field(False, description="also return the per-pixel credit map (B, H, W) in `dense`: "
                                           "matched objects' fact scores, 0 on wrong objects, the partial score "
                                           "elsewhere, all shifted by (reward - partial score)")
    extra_penalty: float = Field(0.0, ge=0, description="subtracted from the score of a sample that draws more "
                                                        "objects than its prompt names (0 = GenEval's rules)")


class ShapesCheckerReward(WorldCheckerReward):
    """Partial-credit or pass/fail verdict of the shapes-world checker, per sample.

    ``metadata[i]`` must be the :class:`~vgrl.worlds.shapes.PromptMeta` of sample ``i``
    (``world.prompts()[k].meta``); images must be ``resolution x resolution``. ``details``: ``passed`` ``(B,)``
    bool, ``partial`` ``(B,)`` float32 (the partial credit, whatever ``score`` says), ``extra_objects`` ``(B,)``
    bool (more objects drawn than the prompt names) and ``category`` (list of str).

    With ``dense=True`` the output's ``dense`` is the ``(B, H, W)`` per-pixel credit map of
    :meth:`vgrl.worlds._shapes_checker.ShapesChecker.credit_map` and the instance's ``granularity``
    is ``"dense"``: algorithms with a ``dense_credit`` option route their loss by it.
    """

    name = "shapes_checker"
    layouts: ClassVar[tuple[str, ...]] = ("image",)
    Options: ClassVar[type[RewardOptions]] = ShapesCheckerOptions

    def world_settings(self) -> tuple[str, int, dict[str, float]]:
        o = self.options
        return "shapes", o.resolution, {"extra_objects": o.extra_penalty}


COMPONENT = ShapesCheckerReward
