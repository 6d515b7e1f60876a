"""Groupwise diversity reward: mean EfficientNet-feature cosine distance to the other samples of a prompt.

In the spirit of Miao et al., "Training Diffusion Models Towards Diverse Image Generation with
Reinforcement Learning" (CVPR 2024, pp. 10844-10853): reinforcement learning can push a generator
towards diverse outputs if the reward measures diversity over a set of samples rather than the
quality of one. This file implements the simplest reference-free form of that idea; it is not the
paper's exact reward.

With ``f_i`` the penultimate EfficientNet-lite0 features of image ``i``
(:func:`vgrl.rewards.classifier.efficientnet_features`, ``(B, 1280)``) and ``G(i)`` the samples whose
prompt string is identical to sample ``i``'s (the GRPO group of ``i``, ``|G(i)| >= 2``):

    cos(a, b) = a . b / (max(|a|, eps) max(|b|, eps))                     eps = 1e-8
    r_i = 1 / (|G(i)| - 1) * sum_{j in G(i), j != i} (1 - cos(f_i, f_j))

``r_i`` is 0 when every other sample of the group has the same features as sample ``i`` (identical
images), and grows as the image moves away from its group mates; groups never interact (sample ``i``'s
score depends on its own group only). The features are post-ReLU6 averages, hence non-negative, so
``cos`` is in [0, 1] and ``r_i`` in [0, 1]. A prompt with a single sample in the batch raises (its
diversity is undefined). The reward is ``granularity = "groupwise"``: scoring a batch in pieces that
split a group changes the scores (or raises, where a piece leaves a sample alone). The score is
differentiable with respect to the images.

Limitations: the score is relative to the batch, not a distribution (a group can be diverse among
itself and still far from the data, or all groups can drift together); "distance" is whatever
ImageNet features separate, which on tiny procedural images is mostly colour and layout; and like any
learned feature space it can be gamed (noise or artefacts that move the features without a
meaningful change), so combine it with a quality reward (``compose``) rather than optimising it alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from vgrl._lazy import lazy
from vgrl.rewards.base import Reward, RewardInputError, RewardOptions
from vgrl.rewards.classifier import Normalise, efficientnet_features
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class DiversityOptions(RewardOptions):
    resolution: int = Field(224, ge=32, description="side the images are resized to before EfficientNet-lite0")
    normalise: Normalise = Field("imagenet", description="input normalisation of the feature network "
                                                        "(see the classifier reward)")


def group_ids(prompts: list[str]) -> Tensor:
    """``(B,)`` long: samples with identical prompt strings share an id (ids in order of first appearance)."""
    first: dict[str, int] = {}
    return torch.tensor([first.setdefault(p, len(first)) for p in prompts], dtype=torch.long)


def prompt_groups(prompts: list[str], reward: str) -> tuple[Tensor, Tensor]:
    """``group_ids(prompts)`` and each sample's group size, both ``(B,)``; raises ``RewardInputError``
    naming the samples alone in their group (a groupwise reward needs >= 2 samples per prompt)."""
    groups = group_ids(prompts)
    sizes = torch.bincount(groups)[groups]
    if bool((sizes < 2).any()):
        lone = [(i, prompts[i]) for i in (sizes < 2).nonzero().flatten().tolist()]
        raise RewardInputError(
            f"reward {reward!r}: every prompt needs >= 2 samples in the batch (set group_size >= 2); alone in "
            f"their group (sample, prompt): {lone[:3]}" + (f" and {len(lone) - 3} more" if len(lone) > 3 else ""))
    return groups, sizes


def groupwise_cosine_diversity(features: Tensor, groups: Tensor) -> Tensor:
    """``r_i = mean_{j in G(i), j != i} (1 - cos(f_i, f_j))`` for ``features`` ``(B, D)``, ``groups`` ``(B,)``.

    Raises ``ValueError`` if a group has a single member.
    """
    groups = groups.to(features.device)
    same = groups[:, None] == groups[None, :]
    sizes = same.sum(dim=1)
    if bool((sizes < 2).any()):
        lone = (sizes < 2).nonzero().flatten().tolist()
        raise ValueError(f"samples {lone} are alone in their group; diversity needs >= 2 samples per group")
    unit = features / features.norm(dim=1, keepdim=True).clamp_min(1e-8)
    dist = (1.0 - unit @ unit.T).clamp_min(0.0)  # rounding can give -1e-7 for identical features
    others = same & ~torch.eye(len(groups), dtype=torch.bool, device=features.device)
    return (dist * others).sum(dim=1) / (sizes - 1)


class DiversityReward(Reward):
    """Mean cosine distance of a sample's EfficientNet features to those of its prompt group.

    ``details``: ``group`` ``(B,)`` group ids (identical prompts share one), ``group_size`` ``(B,)``.
    """

    name = "diversity"
    differentiable = True
    granularity = "groupwise"
    Options: ClassVar[type[RewardOptions]] = DiversityOptions

    @classmethod
    def example(cls, root: Path) -> DiversityReward:
        """Features at 64 px to stay cheap (the conformance suite's instance)."""
        return cls(resolution=64)

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        groups, sizes = prompt_groups(prompts, "diversity")
        feats = efficientnet_features(images, self.options.resolution, self.options.normalise)
        scores = groupwise_cosine_diversity(feats, groups)
        return RewardOutput(scores=scores.float(), details={"group": groups, "group_size": sizes})


COMPONENT = DiversityReward
