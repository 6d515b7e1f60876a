"""CLIPScore: image-text cosine similarity under a CLIP model loaded from a local directory.

CLIPScore (Hessel et al., arXiv 2104.08718) scores an image ``x`` against its prompt ``p`` by the cosine of
their CLIP embeddings (``E_img``, ``E_txt``: the projected pooled outputs, ``CLIPModel.get_image_features``
and ``get_text_features``)::

    c = <E_img(x), E_txt(p)> / (|E_img(x)| |E_txt(p)|)
    mode="clipscore":  r = 100 * max(c, 0)      (torchmetrics' CLIPScore; the paper uses w = 2.5)
    mode="cosine":     r = c

Weights: any transformers ``CLIPModel`` directory (``config.json`` + ``model.safetensors``) with its CLIP
tokenizer, e.g. ``openai/clip-vit-large-patch14`` downloaded by the user; see docs/rewards/learned.md.
Pixels are preprocessed in torch (:mod:`vgrl.rewards._hf`: bicubic antialiased resize of the shortest
side, centre crop, CLIP normalisation), so the score is differentiable in the images; in ``clipscore``
mode the gradient is zero wherever ``c < 0`` (the clamp).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from vgrl._lazy import lazy
from vgrl.rewards._hf import ClipEncoder, ResizeMode
from vgrl.rewards.base import Reward, RewardOptions
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class ClipScoreOptions(RewardOptions):
    path: str = Field(description="local transformers CLIPModel directory (config.json, model.safetensors)")
    tokenizer: str | None = Field(None, description="directory of the CLIP tokenizer files (default: path)")
    mode: Literal["clipscore", "cosine"] = Field(
        "clipscore", description="'clipscore': 100 * max(cos, 0) (torchmetrics); 'cosine': cos")
    resize: ResizeMode = Field("crop", description="'crop' (CLIPImageProcessor) or 'pad' (OpenCLIP ResizeMaxSize)")


class ClipScore(Reward):
    """``100 * max(cos, 0)`` (or ``cos``) of CLIP image and prompt embeddings; ``details["cosine"]``."""

    name = "clip_score"
    differentiable = True
    granularity = "pointwise"
    Options: ClassVar[type[RewardOptions]] = ClipScoreOptions

    @classmethod
    def example(cls, root: Path) -> "ClipScore":
        """On a tiny random-init CLIP written to ``root`` (the conformance suite's instance)."""
        from vgrl.rewards._hf import write_tiny_clip

        return cls(path=str(write_tiny_clip(root)))

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.clip = ClipEncoder(self.name, o.path, o.tokenizer, o.resize,
                                hint=" (download a CLIP model, e.g. openai/clip-vit-large-patch14; "
                                     "see docs/rewards/learned.md)")

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        cos = self.clip.cosine(images, prompts)
        scores = 100.0 * torch.clamp(cos, min=0.0) if self.options.mode == "clipscore" else cos
        return RewardOutput(scores=scores, details={"cosine": cos.detach()})


COMPONENT = ClipScore
