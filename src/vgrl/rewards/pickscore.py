"""PickScore: a CLIP-H model fine-tuned on Pick-a-Pic human preferences, loaded from a local directory.

PickScore (Kirstain et al., arXiv 2305.01569) fine-tunes OpenCLIP ViT-H/14 so that the softmax over a
prompt's images of ``s(x, p)`` predicts which image people picked::

    s(x, p) = exp(logit_scale) * cos(E_img(x), E_txt(p))

with ``E_img``/``E_txt`` the projected CLIP embeddings and ``logit_scale`` the model's learned
temperature (about 100 after training, so scores are around 20). ``yuvalkirstain/PickScore_v1`` is a
transformers ``CLIPModel``; its processor and tokenizer are those of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (copy them into the directory or point ``tokenizer`` at them).
Preprocessing runs in torch (resize + centre crop + CLIP normalisation), so ``s`` is differentiable in
the pixels (as used for reward backprop in e.g. DRaFT, arXiv 2309.17400).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from vgrl.rewards._hf import ClipEncoder, ResizeMode
from vgrl.rewards.base import Reward, RewardOptions
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor


class PickScoreOptions(RewardOptions):
    path: str = Field(description="local PickScore_v1 CLIPModel directory (config.json, model.safetensors)")
    tokenizer: str | None = Field(None, description="directory with the CLIP-ViT-H-14 tokenizer and "
                                                    "preprocessor_config.json (default: path)")
    resize: ResizeMode = Field("crop", description="'crop' (the CLIPProcessor PickScore uses) or 'pad'")


class PickScore(Reward):
    """``exp(logit_scale) * cos(E_img, E_txt)``; ``details["cosine"]``."""

    name = "pickscore"
    differentiable = True
    granularity = "pointwise"
    Options: ClassVar[type[RewardOptions]] = PickScoreOptions

    @classmethod
    def example(cls, root: Path) -> "PickScore":
        """On a tiny random-init CLIP written to ``root`` (the conformance suite's instance)."""
        from vgrl.rewards._hf import write_tiny_clip

        return cls(path=str(write_tiny_clip(root)))

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.clip = ClipEncoder(self.name, o.path, o.tokenizer, o.resize,
                                hint=" (download yuvalkirstain/PickScore_v1; see docs/rewards/learned.md)")
        self.scale = float(self.clip.model.logit_scale.exp())

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        cos = self.clip.cosine(images, prompts)
        return RewardOutput(scores=self.scale * cos, details={"cosine": cos.detach()})


COMPONENT = PickScore
