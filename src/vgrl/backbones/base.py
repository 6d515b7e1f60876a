"""The backbone contract: a generator's network seen as ``(x_t, t, cond) -> prediction``.

A backbone knows nothing about RL. It wraps diffusers components (never a pipeline's ``__call__``:
it re-expresses one denoising step) and reuses the pipeline's own ``encode_prompt`` so that text
conditioning is exactly the library's.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vgrl.types import Cond

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Backbone(ABC):
    """Maps a noisy sample, its time and a condition to the model's prediction.

    Class attributes:
        name: registry key.
        predictions: prediction types the family supports (``epsilon``, ``v``, ``flow``).
        time_kind: ``"flow"`` (t in [0, 1], 1 = noise) or ``"discrete"`` (integer timesteps).
        layout: the layout of the samples ``decode`` returns (:mod:`vgrl.layouts`): ``"image"``, ``"video"``
            or ``"multiview"``.
    Instance attributes:
        prediction: the prediction type of this model.
        sample_shape: shape ``S`` of one sample in the working space (latents or pixels).
        device: where the networks are (``to`` moves them); ``encode`` returns conditioning there and
            ``predict`` / ``decode`` take inputs there. Noise is drawn on the CPU (``init_noise``) and moved.
    """

    name: ClassVar[str]
    predictions: ClassVar[tuple[str, ...]]
    time_kind: ClassVar[str]
    layout: ClassVar[str] = "image"

    prediction: str
    sample_shape: tuple[int, ...]
    device: torch.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> Backbone:
        """Move every network to ``device`` (in place; returns ``self``). A backbone that does not override
        this runs on the CPU only."""
        if torch.device(device).type != "cpu":
            raise NotImplementedError(f"backbone {self.name!r} does not implement to(); it runs on the CPU only "
                                      "(set backbone.device: cpu)")
        return self

    @abstractmethod
    def encode(self, prompts: list[str], *, guidance: bool) -> Cond:
        """Frozen text conditioning for ``prompts`` (no grad); with ``guidance`` also the empty prompt."""

    @abstractmethod
    def timesteps(self, num_steps: int) -> Tensor:
        """``(num_steps + 1,)`` time grid: step ``i`` goes from ``grid[i]`` to ``grid[i + 1]``."""

    @abstractmethod
    def predict(self, x_t: Tensor, t: Tensor, cond: Cond, guidance_scale: float) -> Tensor:
        """``(B, *S)`` prediction at ``x_t`` (``(B, *S)``) and time ``t`` (``(B,)``), differentiable.

        Classifier-free guidance is applied here when ``guidance_scale > 1``:
        ``pred = pred_uncond + w * (pred_cond - pred_uncond)``.
        """

    @abstractmethod
    def decode(self, x0: Tensor) -> Tensor:
        """Pixels in [0, 1]: images ``(B, C, H, W)`` (videos ``(B, F, C, H, W)``, views ``(B, V, C, H, W)``)."""

    def encode_images(self, images: Tensor) -> Tensor:
        """Pixels in [0, 1] ``(B, C, H, W)`` -> samples ``(B, *S)`` in the working space, the inverse of
        ``decode`` (the autoencoder's posterior mean); used to train on images from disk."""
        raise NotImplementedError(f"backbone {self.name!r} cannot encode images to its working space")

    @abstractmethod
    def trainable(self) -> nn.Module:
        """The module post-training updates (UNet / transformer)."""

    @classmethod
    @abstractmethod
    def tiny(cls, **kwargs) -> Backbone:
        """A random-init model built from real diffusers classes at a tiny config (no download)."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str, **kwargs) -> Backbone:
        """Load from a local diffusers pipeline directory."""

    def meta(self) -> dict:
        """Settings a saved copy of this model needs to sample the same way (written to ``vgrl.json``)."""
        return {}

    def init_noise(self, seeds: Tensor) -> Tensor:
        """``(B, *S)`` float32 standard normal noise, row ``i`` drawn from its own generator seeded ``seeds[i]``."""
        return torch.stack([torch.randn(self.sample_shape, generator=seeded(int(s)), dtype=torch.float32)
                            for s in seeds.tolist()])

    def check_guidance(self, cond: Cond, guidance_scale: float) -> bool:
        """Whether to run the unconditional branch; raise if it is needed but was not encoded."""
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1.0 (1.0 = no guidance), got {guidance_scale}")
        if guidance_scale > 1.0 and cond.uncond_embeds is None:
            raise ValueError("guidance_scale > 1 needs the unconditional branch: encode(prompts, guidance=True)")
        return guidance_scale > 1.0



class PipelineBackbone(Backbone):
    """A backbone whose networks are the modules of one diffusers pipeline ``self.pipe``."""

    pipe: Any

    def to(self, device: torch.device | str) -> PipelineBackbone:
        """Move the pipeline's networks (text encoders, denoiser, autoencoder) to ``device``; a no-op when there."""
        device = torch.device(device)
        if device != self.device:
            self.pipe.to(device)
            self.device = device
        return self


def check_images(images: Tensor, size: int, layout: str = "image") -> None:
    """Raise unless ``images`` is a batch in ``layout`` of RGB ``size x size`` frames (what ``encode_images`` takes
    at this resolution): ``(B, 3, size, size)`` for images, ``(B, N, 3, size, size)`` for videos / view sets."""
    from vgrl.layouts import LAYOUTS

    dims = LAYOUTS[layout]
    if images.ndim != len(dims) or images.shape[-3] != 3 or tuple(images.shape[-2:]) != (size, size):
        want = ", ".join({"C": "3", "H": str(size), "W": str(size)}.get(d, d) for d in dims)
        what = "images" if layout == "image" else f"{layout} samples"
        raise ValueError(f"encode_images takes RGB {what} ({want}) at this model's resolution "
                         f"{size}, got {tuple(images.shape)}")


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def to_unit(images: Tensor) -> Tensor:
    """Map decoder output in [-1, 1] to pixels in [0, 1] (clamped), as diffusers' post-processing does."""
    return (images / 2 + 0.5).clamp(0, 1)


META_FILE = "vgrl.json"


def read_meta(path: str | Path) -> dict:
    """The ``vgrl.json`` a vgrl-trained pipeline directory carries (sampling settings), or ``{}``."""
    meta = Path(path) / META_FILE
    return json.loads(meta.read_text()) if meta.is_file() else {}
