"""The rectified-flow transformer family: ``SD3Transformer2DModel`` (SD3 / SD3.5), velocity prediction.

Convention (diffusers' ``FlowMatchEulerDiscreteScheduler``): ``x_t = (1 - t) x0 + t eps``, the model
predicts ``v = eps - x0`` and the time grid is the scheduler's ``sigmas`` (shifted), ending at 0; the
transformer is fed ``t * num_train_timesteps`` (Esser et al., arXiv 2403.03206). Text conditioning is
``StableDiffusion3Pipeline.encode_prompt`` (two CLIP encoders, optional T5), so prompts encode exactly
as in diffusers. Without an autoencoder the transformer works on pixels in [-1, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from torch import Tensor, nn
from transformers import CLIPTextModelWithProjection

from vgrl.backbones import _tiny
from vgrl.backbones._rectified_flow import RectifiedFlow
from vgrl.backbones.base import DTYPES, PipelineBackbone, check_images, read_meta, to_unit
from vgrl.types import Cond


class FlowBackbone(RectifiedFlow, PipelineBackbone):
    """Rectified flow with an MM-DiT transformer; ``prediction = "flow"``."""

    name = "flow"
    predictions = ("flow",)
    time_kind = "flow"
    pipeline_class = "StableDiffusion3Pipeline"

    def __init__(self, pipe: StableDiffusion3Pipeline, *, resolution: int | None = None,
                 max_sequence_length: int = 256) -> None:
        if not isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(f"the flow backbone needs a FlowMatchEulerDiscreteScheduler, got "
                             f"{type(pipe.scheduler).__name__}")
        self.pipe = pipe
        self.transformer: SD3Transformer2DModel = pipe.transformer
        self.vae = pipe.vae
        self.scheduler: FlowMatchEulerDiscreteScheduler = pipe.scheduler
        self.prediction = "flow"
        self.dtype = self.transformer.dtype
        self.max_sequence_length = max_sequence_length
        size = resolution or self.transformer.config.sample_size * self.vae_scale
        if size % (self.vae_scale * self.transformer.config.patch_size):
            raise ValueError(f"resolution {size} must be a multiple of "
                             f"{self.vae_scale * self.transformer.config.patch_size} (autoencoder x patch size)")
        self.sample_shape = (self.transformer.config.in_channels, size // self.vae_scale, size // self.vae_scale)

    @property
    def vae_scale(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)


    @torch.no_grad()
    def encode(self, prompts: list[str], *, guidance: bool) -> Cond:
        return self.condition(prompts, guidance=guidance)

    def condition(self, prompts: list[str], *, guidance: bool) -> Cond:
        prompts = list(prompts)
        embeds, uncond, pooled, uncond_pooled = self.pipe.encode_prompt(
            prompts, prompts, prompts, device=self.device, do_classifier_free_guidance=guidance,
            max_sequence_length=self.max_sequence_length)
        if not guidance:
            uncond = uncond_pooled = None
        return Cond(embeds=embeds, pooled=pooled, uncond_embeds=uncond, uncond_pooled=uncond_pooled)

    def timesteps(self, num_steps: int) -> Tensor:
        self.scheduler.set_timesteps(num_steps)
        return self.scheduler.sigmas.to(torch.float32).clone()

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond, guidance_scale: float) -> Tensor:
        timestep = t.to(x_t.device, torch.float32) * self.scheduler.config.num_train_timesteps
        if self.check_guidance(cond, guidance_scale):
            v_u, v_c = self.transformer(
                hidden_states=torch.cat([x_t, x_t]).to(self.dtype), timestep=torch.cat([timestep, timestep]),
                encoder_hidden_states=torch.cat([cond.uncond_embeds, cond.embeds]),
                pooled_projections=torch.cat([cond.uncond_pooled, cond.pooled]), return_dict=False)[0].chunk(2)
            return v_u + guidance_scale * (v_c - v_u)
        return self.transformer(hidden_states=x_t.to(self.dtype), timestep=timestep,
                                encoder_hidden_states=cond.embeds, pooled_projections=cond.pooled,
                                return_dict=False)[0]

    def decode(self, x0: Tensor) -> Tensor:
        if self.vae is None:
            return to_unit(x0.float())
        latents = x0.to(self.vae.dtype) / self.vae.config.scaling_factor + self.vae.config.shift_factor
        return to_unit(self.vae.decode(latents, return_dict=False)[0].float())

    def encode_images(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, *S)``: ``(mode(E(2x - 1)) - shift) * scale`` (pixels: ``2x - 1``)."""
        check_images(images, self.sample_shape[-1] * self.vae_scale)
        pixels = images.to(self.device, torch.float32) * 2 - 1
        if self.vae is None:
            return pixels
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode().float()
        return (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def trainable(self) -> nn.Module:
        return self.transformer

    def meta(self) -> dict:
        return {"max_sequence_length": self.max_sequence_length}

    @classmethod
    def tiny(cls, *, prediction: str = "flow", resolution: int = 32, vae: bool = True, seed: int = 0,
             shift: float = 3.0, dtype: str = "float32") -> FlowBackbone:
        """Random-init tiny SD3: two MM-DiT layers, two tiny CLIP text encoders, no T5."""
        if prediction != "flow":
            raise ValueError(f"the flow backbone predicts 'flow' (velocity), not {prediction!r}")
        tokenizer = _tiny.char_tokenizer()
        text_1 = _tiny.clip_text(tokenizer, seed, projection=True)
        text_2 = _tiny.clip_text(tokenizer, seed + 1, projection=True)
        autoencoder = _tiny.autoencoder(seed + 2, scaling_factor=0.5, shift_factor=0.1) if vae else None
        channels = 4 if vae else 3
        latent = resolution // (2 if vae else 1)
        torch.manual_seed(seed + 3)
        transformer = SD3Transformer2DModel(
            sample_size=latent, patch_size=2, in_channels=channels, out_channels=channels, num_layers=2,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32,
            pooled_projection_dim=64, pos_embed_max_size=latent // 2)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), vae=autoencoder,
            text_encoder=text_1, tokenizer=tokenizer, text_encoder_2=text_2, tokenizer_2=tokenizer,
            text_encoder_3=None, tokenizer_3=None)
        if dtype != "float32":
            pipe.to(DTYPES[dtype])
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, resolution=resolution, max_sequence_length=4)

    @classmethod
    def tiny_variants(cls) -> dict[str, dict]:
        return {"default": {}, "pixel": {"vae": False}}

    @classmethod
    def pretrain_model(cls, tokenizer, vae, resolution: int, seed: int) -> FlowBackbone:
        """``vgrl pretrain``'s flow model: two CLIP text encoders (width 64, no T5) and a 6-layer MM-DiT
        (4 heads of 32), sampled with shift 3; prompts padded to one T5 token."""
        torch.manual_seed(seed)
        channels = 3 if vae is None else vae.config.latent_channels
        latent = resolution // (1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1))
        texts = [CLIPTextModelWithProjection(_tiny.clip_config(tokenizer, hidden=64, projection=64)) for _ in range(2)]
        transformer = SD3Transformer2DModel(
            sample_size=latent, patch_size=2, in_channels=channels, out_channels=channels, num_layers=6,
            attention_head_dim=32, num_attention_heads=4, joint_attention_dim=128, caption_projection_dim=128,
            pooled_projection_dim=128, pos_embed_max_size=latent // 2)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
            text_encoder=texts[0], tokenizer=tokenizer, text_encoder_2=texts[1], tokenizer_2=tokenizer,
            text_encoder_3=None, tokenizer_3=None)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, resolution=resolution, max_sequence_length=1)

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "float32", resolution: int | None = None,
                        max_sequence_length: int | None = None) -> FlowBackbone:
        """Load a ``StableDiffusion3Pipeline`` directory (components saved as null, e.g. no T5, load as None);
        a vgrl-trained one carries its T5 sequence length in vgrl.json."""
        index = json.loads((Path(path) / "model_index.json").read_text())
        absent = {k: None for k, v in index.items() if isinstance(v, list) and v == [None, None]}
        pipe = StableDiffusion3Pipeline.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True, **absent)
        pipe.set_progress_bar_config(disable=True)
        if max_sequence_length is None:
            max_sequence_length = read_meta(path).get("max_sequence_length", 256)
        return cls(pipe, resolution=resolution, max_sequence_length=max_sequence_length)


COMPONENT = FlowBackbone
