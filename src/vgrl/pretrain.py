"""``vgrl pretrain``: train a small base generator on a built-in world, saved as a diffusers pipeline.

Three stages, all on CPU:
1. an ``AutoencoderKL`` (downsampling 2: 32x32x3 pixels <-> 16x16x4 latents) trained to reconstruct
   the world's renders (L2 + a small KL), its ``scaling_factor`` / ``shift_factor`` set from the
   latents' statistics (or loaded from ``--vae`` to share one autoencoder between models);
2. a CLIP text encoder over a word-level tokenizer of the world's vocabulary, trained jointly with
3. the denoiser: ``sd`` = ``UNet2DConditionModel`` with v-prediction (DDPM noise, t ~ U{0..999});
   ``flow`` = ``SD3Transformer2DModel`` with rectified flow (t drawn through the sampling shift).
   10% of captions are dropped to "" so classifier-free guidance works.

Outputs a pipeline directory (``StableDiffusionPipeline`` / ``StableDiffusion3Pipeline``), a
``vgrl.json`` with what sampling must match, ``metrics.jsonl`` (loss curve) and ``samples.png``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                       StableDiffusion3Pipeline, StableDiffusionPipeline, UNet2DConditionModel)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from vgrl.backbones import _tiny
from vgrl.backbones.base import META_FILE



@dataclass
class PretrainSettings:
    """Everything that determines a pretraining run (saved next to the model)."""

    family: str = "sd"            # sd | flow
    world: str = "shapes"
    resolution: int = 32
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-4
    seed: int = 0
    vae: str | None = None        # path of a trained AutoencoderKL to reuse; None trains one
    vae_steps: int = 600
    drop_caption: float = 0.1
    flow_times: str = "shift"     # flow only: "shift" (uniform through the sampling shift) | "logit_normal"
    init: str | None = None       # a pipeline directory of this family and world to continue training from
    threads: int = 2
    log_every: int = 50


def _world(name: str, resolution: int):
    from vgrl import registry

    return registry.resolve("worlds", name)(resolution=resolution)


class Stream:
    """Endless, seeded stream of (captions, images in [-1, 1]) from a world's training split.

    Each batch draws a category uniformly, then a prompt of it uniformly, so the large categories do
    not drown the small ones; every image gets a fresh render seed.
    """

    def __init__(self, world, seed: int) -> None:
        self.world = world
        self.by_category = {c: world.prompts("train", c) for c in world.categories}
        self.by_category = {c: p for c, p in self.by_category.items() if p}
        self.rng = torch.Generator().manual_seed(seed)
        self.counter = seed * 10_000_000

    def batch(self, n: int) -> tuple[list[str], torch.Tensor]:
        cats = list(self.by_category)
        picks = []
        for c in torch.randint(len(cats), (n,), generator=self.rng).tolist():
            options = self.by_category[cats[c]]
            picks.append(options[int(torch.randint(len(options), (1,), generator=self.rng))])
        seeds = list(range(self.counter, self.counter + n))
        self.counter += n
        images = self.world.render([p.meta for p in picks], seed=seeds)
        return [p.text for p in picks], images * 2 - 1


def _schedule(step: int, total: int, warmup: int = 100) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(stream: Stream, s: PretrainSettings, log) -> AutoencoderKL:
    """Stage 1: an autoencoder for the world's images; scaling/shift set from latent statistics."""
    torch.manual_seed(s.seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16,
                        sample_size=s.resolution)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    for step in range(s.vae_steps):
        _, x = stream.batch(32)
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        rec, kl = F.mse_loss(recon, x), post.kl().mean() / x[0].numel()
        loss = rec + 1e-4 * kl
        opt.zero_grad()
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = 1e-3 * _schedule(step, s.vae_steps, 50)
        opt.step()
        if step % s.log_every == 0 or step == s.vae_steps - 1:
            log({"stage": "vae", "step": step, "recon_mse": rec.item(), "kl": kl.item()})
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(stream.batch(64)[1]).latent_dist.mean for _ in range(4)])
    vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1.0 / z.std()))
    return vae


def load_components(s: PretrainSettings, tokenizer):
    """The autoencoder, text encoder(s) and denoiser of the pipeline ``s.init`` (float32) and its ``vgrl.json``,
    checked against ``s``: same family, world and resolution, and the same word vocabulary as the tokenizer built
    for this world."""
    from transformers import CLIPTokenizer

    init = Path(s.init)
    if s.vae:
        raise ValueError(f"--vae {s.vae} with --init {init}: a continued run keeps the autoencoder of --init")
    try:
        meta = json.loads((init / META_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--init {init}: not a vgrl pretrained pipeline ({init / META_FILE}: {e})") from None
    for key, want in (("family", s.family), ("world", s.world), ("resolution", s.resolution)):
        if meta.get(key) != want:
            raise ValueError(f"--init {init}: its {key} is {meta.get(key)!r} ({init / META_FILE}), this run's "
                             f"{want!r}; continue a pipeline of the same {key}")
    if CLIPTokenizer.from_pretrained(init / "tokenizer").get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"--init {init}: its tokenizer's vocabulary ({init / 'tokenizer'}) differs from the "
                         f"{s.world} world's; was it trained on another version of the world?")
    vae = AutoencoderKL.from_pretrained(init / "vae").float()
    if s.family == "sd":
        texts = [CLIPTextModel.from_pretrained(init / "text_encoder").float()]
        denoiser = UNet2DConditionModel.from_pretrained(init / "unet").float()
    else:
        texts = [CLIPTextModelWithProjection.from_pretrained(init / name).float()
                 for name in ("text_encoder", "text_encoder_2")]
        denoiser = SD3Transformer2DModel.from_pretrained(init / "transformer").float()
    return vae, texts, denoiser, meta


def build_denoiser(family: str, tokenizer, resolution: int, seed: int):
    """The text encoder(s) and denoiser of the shipped small models."""
    torch.manual_seed(seed)
    latent = resolution // 2
    if family == "sd":
        text = CLIPTextModel(_tiny.clip_config(tokenizer, hidden=128, projection=128))
        unet = UNet2DConditionModel(
            sample_size=latent, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(48, 96),
            layers_per_block=1, cross_attention_dim=128, attention_head_dim=24, norm_num_groups=16)
        return [text], unet
    texts = [CLIPTextModelWithProjection(_tiny.clip_config(tokenizer, hidden=64, projection=64)) for _ in range(2)]
    transformer = SD3Transformer2DModel(
        sample_size=latent, patch_size=2, in_channels=4, out_channels=4, num_layers=6, attention_head_dim=32,
        num_attention_heads=4, joint_attention_dim=128, caption_projection_dim=128, pooled_projection_dim=128,
        pos_embed_max_size=latent // 2)
    return texts, transformer


def assemble(family: str, vae, tokenizer, texts, denoiser):
    """The diffusers pipeline holding the components (schedulers as vgrl samples them)."""
    if family == "sd":
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=texts[0], tokenizer=tokenizer, unet=denoiser,
                                       scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    else:
        pipe = StableDiffusion3Pipeline(transformer=denoiser, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                        vae=vae, text_encoder=texts[0], tokenizer=tokenizer, text_encoder_2=texts[1],
                                        tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def denoising_loss(family: str, pipe, x0: torch.Tensor, prompts: list[str], gen: torch.Generator,
                   flow_times: str = "shift") -> torch.Tensor:
    """v-prediction (sd) or rectified-flow (flow) regression loss on latents ``x0``."""
    b = x0.shape[0]
    eps = torch.randn(x0.shape, generator=gen)
    if family == "sd":
        embeds, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
        t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (b,), generator=gen)
        x_t = pipe.scheduler.add_noise(x0, eps, t)
        pred = pipe.unet(x_t, t, encoder_hidden_states=embeds).sample
        return F.mse_loss(pred, pipe.scheduler.get_velocity(x0, eps, t))
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, device="cpu",
                                              do_classifier_free_guidance=False, max_sequence_length=1)
    if flow_times == "logit_normal":  # SD3's choice (Esser et al., arXiv 2403.03206)
        t = torch.sigmoid(torch.randn(b, generator=gen))
    elif flow_times == "shift":
        u, shift = torch.rand(b, generator=gen), pipe.scheduler.config.shift
        t = shift * u / (1 + (shift - 1) * u)
    else:
        raise ValueError(f"flow_times must be 'shift' or 'logit_normal', got {flow_times!r}")
    tb = t.view(-1, 1, 1, 1)
    x_t = (1 - tb) * x0 + tb * eps
    pred = pipe.transformer(hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=embeds,
                            pooled_projections=pooled).sample
    return F.mse_loss(pred, eps - x0)


def save_pipeline(pipe, path: str | Path) -> None:
    """Save with the denoiser and autoencoder stored in float16 (half the size; diffusers loads them
    back as float32) and the text encoders in float32 (transformers keeps the stored dtype)."""
    denoiser = pipe.unet if isinstance(pipe, StableDiffusionPipeline) else pipe.transformer
    for module in (denoiser, pipe.vae):
        module.to(torch.float16)
    try:
        pipe.save_pretrained(path, safe_serialization=True)
    finally:
        for module in (denoiser, pipe.vae):
            module.to(torch.float32)


def _encode_latents(vae, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
    return (z - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def run(s: PretrainSettings, out_dir: str | Path, progress: bool = True) -> Path:
    """Train and save; returns the pipeline directory."""
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    out = Path(out_dir)
    world = _world(s.world, s.resolution)
    stream = Stream(world, s.seed)
    words = sorted({w for split in world.splits for p in world.prompts(split) for w in p.text.split()})
    tokenizer = _tiny.word_tokenizer(words, max_length=24)
    init_meta = None
    if s.init:  # checked before anything is written
        vae, texts, denoiser, init_meta = load_components(s, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    metrics = (out / "metrics.jsonl").open("a")
    start = time.perf_counter()

    def log(row: dict) -> None:
        row["seconds"] = round(time.perf_counter() - start, 1)
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        if progress:
            print(json.dumps(row), flush=True)

    if not s.init:
        vae = AutoencoderKL.from_pretrained(s.vae) if s.vae else train_vae(stream, s, log)
        texts, denoiser = build_denoiser(s.family, tokenizer, s.resolution, s.seed + 1)
    vae.requires_grad_(False).eval()
    pipe = assemble(s.family, vae, tokenizer, texts, denoiser)
    params = [p for m in (*texts, denoiser) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(s.seed + 2)
    for m in (*texts, denoiser):
        m.train()
    for step in range(s.steps):
        prompts, x = stream.batch(s.batch_size)
        drop = torch.rand(len(prompts), generator=gen) < s.drop_caption
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        loss = denoising_loss(s.family, pipe, _encode_latents(vae, x), prompts, gen, s.flow_times)
        opt.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        for g in opt.param_groups:
            g["lr"] = s.lr * _schedule(step, s.steps)
        opt.step()
        if step % s.log_every == 0 or step == s.steps - 1:
            log({"stage": s.family, "step": step, "loss": loss.item(), "grad_norm": grad_norm.item(),
                 "lr": opt.param_groups[0]["lr"]})
    for m in (*texts, denoiser):
        m.eval()
    save_pipeline(pipe, out / "pipeline")
    meta = {"family": s.family, "world": s.world, "resolution": s.resolution,
            "max_sequence_length": 1, "settings": asdict(s),
            "train_seconds": round(time.perf_counter() - start, 1)}
    if init_meta is not None:  # provenance: the run this one continued; its evaluation sampling settings carry over
        meta["init_meta"] = init_meta
        carried = {k: init_meta[k] for k in ("eval_steps", "eval_guidance") if k in init_meta}
        if carried:
            why = init_meta.get("eval_settings_chosen_by", "set there")
            meta.update(carried, eval_settings_chosen_by=f"carried over from --init {s.init} ({why})")
    (out / "pipeline" / META_FILE).write_text(json.dumps(meta, indent=2))
    metrics.close()
    return out / "pipeline"
