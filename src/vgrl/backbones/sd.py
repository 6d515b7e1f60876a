"""The Stable Diffusion family: ``UNet2DConditionModel`` (epsilon or v), optional ``AutoencoderKL``.

Sampling uses a ``DDIMScheduler`` (DDPO's setting, arXiv 2305.13301); the time grid is the
scheduler's integer timesteps followed by the last one's DDIM predecessor (negative = final alpha).
Without an autoencoder the UNet works directly on pixels in [-1, 1] (``decode`` then only rescales).
Text conditioning is ``StableDiffusionPipeline.encode_prompt``, so prompts encode exactly as in
diffusers.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from torch import Tensor, nn
from transformers import CLIPTextModel

from vgrl.backbones import _tiny
from vgrl.backbones.base import DTYPES, PipelineBackbone, check_images, to_unit
from vgrl.types import Cond


class SDBackbone(PipelineBackbone):
    """Latent (or pixel) diffusion with a conditional UNet; ``prediction`` in {epsilon, v}."""

    name = "sd"
    predictions = ("epsilon", "v")
    time_kind = "discrete"
    pipeline_class = "StableDiffusionPipeline"

    def __init__(self, pipe: StableDiffusionPipeline, resolution: int | None = None) -> None:
        if not isinstance(pipe.scheduler, DDIMScheduler):
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        prediction = {"epsilon": "epsilon", "v_prediction": "v"}.get(pipe.scheduler.config.prediction_type)
        if prediction is None:
            raise ValueError(f"scheduler prediction_type {pipe.scheduler.config.prediction_type!r} is not "
                             "supported by the sd backbone; valid: epsilon, v_prediction")
        self.pipe = pipe
        self.unet: UNet2DConditionModel = pipe.unet
        self.vae = pipe.vae
        self.scheduler: DDIMScheduler = pipe.scheduler
        self.prediction = prediction
        self.dtype = self.unet.dtype
        size = resolution or self.unet.config.sample_size * self.vae_scale
        if size % self.vae_scale:
            raise ValueError(f"resolution {size} must be a multiple of the autoencoder's factor {self.vae_scale}")
        self.sample_shape = (self.unet.config.in_channels, size // self.vae_scale, size // self.vae_scale)

    @property
    def vae_scale(self) -> int:
        return 1 if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)


    @torch.no_grad()
    def encode(self, prompts: list[str], *, guidance: bool) -> Cond:
        return self.condition(prompts, guidance=guidance)

    def condition(self, prompts: list[str], *, guidance: bool) -> Cond:
        embeds, uncond = self.pipe.encode_prompt(list(prompts), self.device, 1, guidance)
        return Cond(embeds=embeds, uncond_embeds=uncond if guidance else None)

    def timesteps(self, num_steps: int) -> Tensor:
        self.scheduler.set_timesteps(num_steps)
        ts = self.scheduler.timesteps.to(torch.long)
        ratio = self.scheduler.config.num_train_timesteps // num_steps
        return torch.cat([ts, ts[-1:] - ratio])

    def train_time(self, u: Tensor) -> Tensor:
        """``floor(u T)`` int64 in ``[0, T)``, ``T`` the scheduler's training timesteps."""
        steps = int(self.scheduler.config.num_train_timesteps)
        return (u * steps).floor().clamp(max=steps - 1).to(torch.long)

    def add_noise(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``sqrt(a_t) x0 + sqrt(1 - a_t) eps`` (``DDIMScheduler.add_noise``), ``a_t = alphas_cumprod[t]``."""
        return self.scheduler.add_noise(x0, eps, t)

    def target(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """epsilon: ``eps``; v: ``sqrt(a_t) eps - sqrt(1 - a_t) x0`` (``DDIMScheduler.get_velocity``)."""
        return eps if self.prediction == "epsilon" else self.scheduler.get_velocity(x0, eps, t)

    def x0_coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """epsilon: ``(1 / sqrt(a_t), -sqrt((1 - a_t) / a_t))``; v: ``(sqrt(a_t), -sqrt(1 - a_t))``."""
        alpha = self.scheduler.alphas_cumprod.to(like.device, torch.float32)[t.to(like.device)]
        alpha = alpha.reshape(-1, *([1] * (like.ndim - 1)))
        if self.prediction == "epsilon":
            return alpha.rsqrt(), -((1 - alpha) / alpha).sqrt()
        return alpha.sqrt(), -(1 - alpha).sqrt()

    def predict(self, x_t: Tensor, t: Tensor, cond: Cond, guidance_scale: float) -> Tensor:
        t = t.to(x_t.device)  # a schedule's times may come from the CPU
        if self.check_guidance(cond, guidance_scale):
            eps_u, eps_c = self.unet(torch.cat([x_t, x_t]).to(self.dtype), torch.cat([t, t]),
                                     encoder_hidden_states=torch.cat([cond.uncond_embeds, cond.embeds]),
                                     return_dict=False)[0].chunk(2)
            return eps_u + guidance_scale * (eps_c - eps_u)
        return self.unet(x_t.to(self.dtype), t, encoder_hidden_states=cond.embeds, return_dict=False)[0]

    def decode(self, x0: Tensor) -> Tensor:
        if self.vae is None:
            return to_unit(x0.float())
        images = self.vae.decode(x0.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        return to_unit(images.float())

    def encode_images(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, *S)``: ``mode(E(2x - 1)) * scale`` (pixels: ``2x - 1``)."""
        check_images(images, self.sample_shape[-1] * self.vae_scale)
        pixels = images.to(self.device, torch.float32) * 2 - 1
        if self.vae is None:
            return pixels
        return self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode().float() * self.vae.config.scaling_factor

    def trainable(self) -> nn.Module:
        return self.unet

    @classmethod
    def tiny(cls, *, prediction: str = "epsilon", resolution: int = 32, vae: bool = True, seed: int = 0,
             dtype: str = "float32") -> SDBackbone:
        """Random-init tiny SD: 2-level UNet (cross-attention at the low level), CLIP text encoder."""
        tokenizer = _tiny.char_tokenizer()
        text_encoder = _tiny.clip_text(tokenizer, seed, projection=False)
        autoencoder = _tiny.autoencoder(seed + 1, scaling_factor=0.5) if vae else None
        channels = 4 if vae else 3
        torch.manual_seed(seed + 2)
        unet = UNet2DConditionModel(
            sample_size=resolution // (2 if vae else 1), in_channels=channels, out_channels=channels,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=8)
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                  prediction_type={"epsilon": "epsilon", "v": "v_prediction"}[prediction])
        pipe = StableDiffusionPipeline(vae=autoencoder, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        if dtype != "float32":
            pipe.to(DTYPES[dtype])
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, resolution=resolution)

    @classmethod
    def tiny_variants(cls) -> dict[str, dict]:
        return {"eps": {"prediction": "epsilon"}, "v": {"prediction": "v"},
                "pixel": {"prediction": "epsilon", "vae": False}}

    @classmethod
    def pretrain_model(cls, tokenizer, vae, resolution: int, seed: int) -> SDBackbone:
        """``vgrl pretrain``'s sd model: a CLIP text encoder (width 128) and a 2-level UNet (48, 96) with
        v-prediction, sampled with SD's DDIM settings."""
        torch.manual_seed(seed)
        channels = 3 if vae is None else vae.config.latent_channels
        scale = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)
        text = CLIPTextModel(_tiny.clip_config(tokenizer, hidden=128, projection=128))
        unet = UNet2DConditionModel(
            sample_size=resolution // scale, in_channels=channels, out_channels=channels,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(48, 96),
            layers_per_block=1, cross_attention_dim=128, attention_head_dim=24, norm_num_groups=16)
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, resolution=resolution)

    @classmethod
    def from_pretrained(cls, path: str, *, dtype: str = "float32", resolution: int | None = None) -> SDBackbone:
        pipe = StableDiffusionPipeline.from_pretrained(path, dtype=DTYPES[dtype], safety_checker=None,
                                                       requires_safety_checker=False, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, resolution=resolution)


COMPONENT = SDBackbone
