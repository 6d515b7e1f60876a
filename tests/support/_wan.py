"""A pixel-space text-to-video backbone on diffusers' ``WanTransformer3DModel``, shared by the test-only frames and
views backbones (abstract: each final class declares its layout and the name of its leading axis).

A tiny real ``WanPipeline`` (no autoencoder: the transformer works on pixels in [-1, 1]) with a tiny CLIP text
encoder and a character-level CLIP tokenizer (:mod:`vgrl.backbones._tiny`) in place of UMT5: prompts are encoded by
the pipeline's own ``encode_prompt`` (last hidden state, padded to ``max_sequence_length`` with zeros).

Flow matching as in :mod:`vgrl.backbones.flow` (diffusers' ``FlowMatchEulerDiscreteScheduler``):
``x_t = (1 - t) x0 + t eps``, the model predicts ``v = eps - x0`` and is fed ``t * num_train_timesteps``.
Samples live in vgrl's layout ``(B, N, C, H, W)`` (``N`` frames or views); Wan's is ``(B, C, N, H, W)``, so
``predict`` permutes in and out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from torch import Tensor, nn

from vgrl.backbones import _tiny
from vgrl.backbones._rectified_flow import RectifiedFlow
from vgrl.backbones.base import DTYPES, PipelineBackbone, read_meta, to_unit
from vgrl.types import Cond


class WanPixelBackbone(RectifiedFlow, PipelineBackbone):
    """Rectified flow on pixels with a Wan transformer; ``N`` (frames or views) x 3 x ``H`` x ``W`` samples."""

    predictions = ("flow",)
    time_kind = "flow"
    axis: ClassVar[str]  # the name of the leading sample axis in vgrl.json ("frames" / "views")

    def __init__(self, pipe: WanPipeline, *, count: int, resolution: int | None = None,
                 max_sequence_length: int = 24) -> None:
        if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(f"{self.name}: needs a FlowMatchEulerDiscreteScheduler, got {type(pipe.scheduler).__name__}")
        if pipe.vae is not None:
            raise ValueError(f"{self.name}: a pixel-space model (no autoencoder), got {type(pipe.vae).__name__}")
        self.pipe = pipe
        self.transformer: WanTransformer3DModel = pipe.transformer
        self.scheduler: FlowMatchEulerDiscreteScheduler = pipe.scheduler
        self.vae = None
        self.prediction = "flow"
        self.dtype = self.transformer.dtype
        self.max_sequence_length = max_sequence_length
        self.count = count
        size = resolution or 16
        patch = self.transformer.config.patch_size
        if size % patch[1] or count % patch[0]:
            raise ValueError(f"{self.name}: resolution {size} and {self.axis} {count} must be multiples of the "
                             f"patch size {tuple(patch)}")
        self.sample_shape = (count, self.transformer.config.in_channels, size, size)

    @torch.no_grad()
    def encode(self, prompts: list[str], *, guidance: bool) -> Cond:
        embeds, uncond = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=guidance,
                                                 max_sequence_length=self.max_sequence_length, device=self.device)
        return Cond(embeds=embeds, uncond_embeds=uncond if guidance else None)

    def timesteps(self, num_steps: int) -> Tensor:
        self.scheduler.set_timesteps(num_steps)
        return self.scheduler.sigmas.to(torch.float32).clone()

    def _wan(self, x_t: Tensor, timestep: Tensor, embeds: Tensor) -> Tensor:
        """Wan's ``(B, C, N, H, W)`` in and out, vgrl's ``(B, N, C, H, W)`` around it."""
        out = self.transformer(hidden_states=x_t.permute(0, 2, 1, 3, 4).to(self.dtype), timestep=timestep,
                               encoder_hidden_states=embeds, return_dict=False)[0]
        return out.permute(0, 2, 1, 3, 4)

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond, guidance_scale: float) -> Tensor:
        timestep = t.to(x_t.device, torch.float32) * self.scheduler.config.num_train_timesteps
        if self.check_guidance(cond, guidance_scale):
            v_u, v_c = self._wan(torch.cat([x_t, x_t]), torch.cat([timestep, timestep]),
                                 torch.cat([cond.uncond_embeds, cond.embeds])).chunk(2)
            return v_u + guidance_scale * (v_c - v_u)
        return self._wan(x_t, timestep, cond.embeds)

    def decode(self, x0: Tensor) -> Tensor:
        """``(B, N, 3, H, W)`` pixels in [0, 1] (the working space is pixels in [-1, 1])."""
        return to_unit(x0.float())

    def trainable(self) -> nn.Module:
        return self.transformer

    def meta(self) -> dict:
        return {self.axis: self.count, "max_sequence_length": self.max_sequence_length}

    @classmethod
    def tiny(cls, *, resolution: int = 16, count: int = 4, seed: int = 0, dtype: str = "float32",
             prediction: str = "flow") -> WanPixelBackbone:
        """Random-init tiny Wan: one 3-D transformer layer (2 heads x 8, 1x4x4 patches), a 32-wide CLIP text encoder."""
        if prediction != "flow":
            raise ValueError(f"{cls.name}: predicts 'flow' (velocity), not {prediction!r}")
        tokenizer = _tiny.char_tokenizer()
        text = _tiny.clip_text(tokenizer, seed, projection=False)
        torch.manual_seed(seed + 1)
        transformer = WanTransformer3DModel(
            patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=3,
            text_dim=32, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=32)
        pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text, vae=None, transformer=transformer,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
        if dtype != "float32":
            pipe.to(DTYPES[dtype])
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, count=count, resolution=resolution)

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "float32", resolution: int | None = None,
                        **_ignored) -> WanPixelBackbone:
        """Load a ``WanPipeline`` directory saved by ``save_pretrained`` (``vgrl.json`` carries the
        frame / view count and the text length)."""
        index = json.loads((Path(path) / "model_index.json").read_text())
        absent = {k: None for k, v in index.items() if isinstance(v, list) and v == [None, None]}
        pipe = WanPipeline.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True, **absent)
        pipe.set_progress_bar_config(disable=True)
        meta = read_meta(path)
        return cls(pipe, count=meta.get(cls.axis, 4), resolution=resolution,
                   max_sequence_length=meta.get("max_sequence_length", 24))
