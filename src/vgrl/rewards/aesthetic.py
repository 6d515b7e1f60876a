"""LAION aesthetic predictor v2: an MLP on normalised CLIP ViT-L/14 image embeddings.

The "improved aesthetic predictor" (Schuhmann, LAION 2022; used as DDPO's aesthetic reward, Black et al.
arXiv 2305.13301) rates how much people like an image on a 1-10 scale::

    e = E_img(x) / |E_img(x)|          (OpenAI CLIP ViT-L/14 projected image embedding, 768-d)
    r = MLP(e)                         (768 -> 1024 -> 128 -> 64 -> 16 -> 1, linear, dropout off)

Weights: the CLIP model is a local transformers directory (``openai/clip-vit-large-patch14``; only its
vision tower is loaded, as ``CLIPVisionModelWithProjection``), the MLP a local file (option ``head``):
``sac+logos+ava1-l14-linearMSE.pth`` from the improved-aesthetic-predictor repository, read with
``torch.load(weights_only=True)``, or the same state dict saved as ``.safetensors``. Preprocessing runs in
torch (bicubic antialiased resize, centre crop, CLIP normalisation), so the score is differentiable in the
pixels. The prompt is ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from vgrl._lazy import lazy
from vgrl.rewards._hf import (ImageSpec, ResizeMode, load_frozen, load_mlp, quiet_transformers, read_config,
                              require_files, require_safetensors)
from vgrl.rewards.base import Reward, RewardOptions
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")
F = lazy("torch.nn.functional")

HINT = " (download openai/clip-vit-large-patch14 and sac+logos+ava1-l14-linearMSE.pth; see docs/rewards/learned.md)"


class AestheticOptions(RewardOptions):
    path: str = Field(description="local CLIP ViT-L/14 transformers directory (config.json, model.safetensors)")
    head: str = Field(description="aesthetic MLP weights: .pth/.pt (loaded weights_only) or .safetensors")
    resize: ResizeMode = Field("crop", description="'crop' (CLIP's preprocessing) or 'pad'")


class Aesthetic(Reward):
    """``MLP(E_img / |E_img|)``, the LAION aesthetic score; ``details["aesthetic"]``."""

    name = "aesthetic"
    differentiable = True
    granularity = "pointwise"
    Options: ClassVar[type[RewardOptions]] = AestheticOptions

    @classmethod
    def example(cls, root: Path) -> Aesthetic:
        """On a tiny random-init CLIP and aesthetic head written to ``root`` (the conformance suite's instance)."""
        from safetensors.torch import save_file

        from vgrl.rewards._hf import PreferenceMLP, write_tiny_clip

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            head = PreferenceMLP(16).state_dict()
        save_file(head, Path(root) / "head.safetensors")
        return cls(path=str(write_tiny_clip(Path(root) / "clip")), head=str(Path(root) / "head.safetensors"))

    def __init__(self, **options: Any) -> None:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        super().__init__(**options)
        root = require_files(self.name, self.options.path, {"config.json": "the CLIP model config"}, HINT)
        top = read_config(self.name, root, ("clip", "clip_vision_model"))
        require_safetensors(self.name, root, HINT)
        with quiet_transformers():
            vcfg = CLIPVisionConfig.from_pretrained(root, local_files_only=True)
        vcfg.projection_dim = top.get("projection_dim", vcfg.projection_dim)  # a CLIPModel keeps it at the top
        self.vision = load_frozen(CLIPVisionModelWithProjection, root, config=vcfg)
        cfg = self.vision.config
        self.spec = ImageSpec.from_dir(root, cfg.image_size, self.options.resize)
        self.mlp = load_mlp(self.name, self.options.head, cfg.projection_dim)

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        vision, mlp = self.vision.to(images.device), self.mlp.to(images.device)
        emb = F.normalize(vision(pixel_values=self.spec(images)).image_embeds, dim=-1)
        scores = mlp(emb).float()
        return RewardOutput(scores=scores, details={"aesthetic": scores.detach()})


COMPONENT = Aesthetic
