"""The backbone contract: a generator's network seen as ``(x_t, t, cond) -> prediction``.

A backbone knows nothing about RL. It wraps diffusers components (never a pipeline's ``__call__``:
it re-expresses one denoising step) and reuses the pipeline's own ``encode_prompt`` so that text
conditioning is exactly the library's.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
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
        pipeline_class: the diffusers pipeline class name (``model_index.json``'s ``_class_name``) this family
            loads (:func:`vgrl.backbones.load`), or None.
    Instance attributes:
        prediction: the prediction type of this model.
        sample_shape: shape ``S`` of one sample in the working space (latents or pixels).
        scheduler: the diffusers scheduler that defines the time grid and the forward process; kernels
            that step integer timesteps (DDIM) read its ``alphas_cumprod``.
        device: where the networks are (``to`` moves them); ``encode`` returns conditioning there and
            ``predict`` / ``decode`` take inputs there. Noise is drawn on the CPU (``init_noise``) and moved.

    The forward process ``q(x_t | x0)`` is the backbone's: ``add_noise``, ``target`` and ``x0_coefficients``
    are the one implementation rollout-free training (the forward-process algorithms, ``vgrl pretrain``) uses.
    """

    name: ClassVar[str]
    predictions: ClassVar[tuple[str, ...]]
    time_kind: ClassVar[str]
    layout: ClassVar[str] = "image"
    pipeline_class: ClassVar[str | None] = None

    prediction: str
    sample_shape: tuple[int, ...]
    scheduler: Any
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

    def condition(self, prompts: list[str], *, guidance: bool) -> Cond:
        """``encode`` with gradients to the text encoders (``vgrl pretrain`` trains them jointly)."""
        raise NotImplementedError(f"backbone {self.name!r} cannot train its text encoders (no condition())")

    @abstractmethod
    def timesteps(self, num_steps: int) -> Tensor:
        """``(num_steps + 1,)`` time grid: step ``i`` goes from ``grid[i]`` to ``grid[i + 1]``."""

    @abstractmethod
    def train_time(self, u: Tensor) -> Tensor:
        """Training times ``t`` ``(B,)`` from uniform draws ``u`` ``(B,)`` in [0, 1): flow float32 ``t = u``,
        discrete int64 ``floor(u T)`` (``T`` training timesteps)."""

    @abstractmethod
    def add_noise(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """The forward process: ``x_t`` ``(B, *S)`` from clean ``x0`` and noise ``eps`` ``(B, *S)`` at ``t`` ``(B,)``."""

    @abstractmethod
    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The regression target ``(B, *S)`` of this model's ``prediction`` for ``x_t = add_noise(x0, t, eps)``."""

    @abstractmethod
    def x0_coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` float32, shaped ``(B, 1, ..., 1)`` like ``like``, with ``x0_hat = a x_t + b pred``: the clean-
        sample estimate of a prediction at ``(x_t, t)`` (every prediction type is affine in it)."""

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
    def tiny_variants(cls) -> dict[str, dict]:
        """Variant name -> ``tiny`` kwargs: the configurations the conformance suite builds and checks
        (``"default"`` first; the test key is the registry name, or ``name-variant``)."""
        return {"default": {}}

    @classmethod
    def pretrain_model(cls, tokenizer: Any, vae: Any, resolution: int, seed: int) -> Backbone:
        """The fresh base model ``vgrl pretrain`` trains (seeded text encoders and denoiser at its sizes) with
        ``tokenizer`` and the autoencoder ``vae`` (``None``: pixel space)."""
        raise NotImplementedError(f"backbone {cls.name!r} has no model for vgrl pretrain (no pretrain_model())")

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str, **kwargs) -> Backbone:
        """Load from a local diffusers pipeline directory."""

    def meta(self) -> dict:
        """Settings a saved copy of this model needs to sample the same way (written to ``vgrl.json``)."""
        return {}

    def init_noise(self, seeds: Tensor | Sequence[torch.Generator]) -> Tensor:
        """``(B, *S)`` float32 standard normal noise in the working space, row ``i`` from its own generator:
        ``seeds[i]`` seeded afresh, or the CPU generator ``generators[i]`` (advanced: rollout draws a sample's
        initial noise and then each stochastic step's noise from it, both through this method)."""
        gens = [seeded(int(s)) for s in seeds.tolist()] if isinstance(seeds, Tensor) else seeds
        return torch.stack([torch.randn(self.sample_shape, generator=g, dtype=torch.float32) for g in gens])

    def check_guidance(self, cond: Cond, guidance_scale: float) -> bool:
        """Whether to run the unconditional branch; raise if it is needed but was not encoded."""
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1.0 (1.0 = no guidance), got {guidance_scale}")
        if guidance_scale > 1.0 and cond.uncond_embeds is None:
            raise ValueError("guidance_scale > 1 needs the unconditional branch: encode(prompts, guidance=True)")
        return guidance_scale > 1.0



class PipelineBackbone(Backbone):
    """A backbone whose networks are the modules of one diffusers pipeline ``self.pipe`` (its autoencoder
    ``self.vae``, None when the denoiser works on pixels)."""

    pipe: Any
    vae: Any

    def text_encoders(self) -> list[nn.Module]:
        """The pipeline's text encoders in order (``text_encoder``, ``text_encoder_2``, ...; absent ones skipped)."""
        return [m for k, m in self.pipe.components.items() if k.startswith("text_encoder") and m is not None]

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
