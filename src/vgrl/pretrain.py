"""``vgrl pretrain``: train a small base generator on a built-in world, saved as a diffusers pipeline.

Three stages, all on CPU:
1. an ``AutoencoderKL`` (downsampling 2: 32x32x3 pixels <-> 16x16x4 latents) trained to reconstruct
   the world's renders (L2 + a small KL), its ``scaling_factor`` / ``shift_factor`` set from the
   latents' statistics (or loaded from ``--vae`` to share one autoencoder between models);
2. a CLIP text encoder over a word-level tokenizer of the world's vocabulary, trained jointly with
3. the denoiser of a backbone family (``Backbone.pretrain_model``: ``sd`` = ``UNet2DConditionModel`` with
   v-prediction, t ~ U{0..999}; ``flow`` = ``SD3Transformer2DModel`` with rectified flow, t drawn through
   the sampling shift), regressed on the backbone's own forward process (``add_noise``, ``target``).
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
from diffusers import AutoencoderKL

from vgrl.backbones import _tiny
from vgrl.backbones.base import META_FILE, Backbone, PipelineBackbone


@dataclass
class PretrainSettings:
    """Everything that determines a pretraining run (saved next to the model)."""

    family: str = "sd"            # a backbone family (families()): sd | flow
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


def load_init(s: PretrainSettings, tokenizer) -> tuple[Backbone, dict]:
    """The pipeline ``s.init`` as a float32 backbone of ``s.family`` and its ``vgrl.json``, checked against ``s``:
    same family, world and resolution, and the same word vocabulary as the tokenizer built for this world."""
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
    return _family(s.family).from_pretrained(str(init), dtype="float32"), meta


def _family(name: str) -> type[Backbone]:
    from vgrl import registry

    if name not in families():
        raise ValueError(f"--family {name!r} is not a backbone family; valid: {', '.join(families())}")
    return registry.resolve("backbones", name)


def families() -> list[str]:
    """The backbone families ``vgrl pretrain`` can train (the built-in backbones; torch-free)."""
    from vgrl import registry

    return registry.available("backbones")


def denoising_loss(backbone: Backbone, x0: torch.Tensor, prompts: list[str], gen: torch.Generator,
                   flow_times: str = "shift") -> torch.Tensor:
    """``mean (pred - target)^2`` of the backbone's own forward process (``add_noise``, ``target``) on latents
    ``x0``, text encoders included in the graph. Times: discrete ``t ~ U{0..T-1}``; flow ``t`` uniform through
    the sampling shift ``s u / (1 + (s - 1) u)`` or logit-normal (SD3's choice, Esser et al., arXiv 2403.03206)."""
    b = x0.shape[0]
    eps = torch.randn(x0.shape, generator=gen)
    cond = backbone.condition(prompts, guidance=False)
    if backbone.time_kind == "discrete":
        t = torch.randint(0, backbone.scheduler.config.num_train_timesteps, (b,), generator=gen)
    elif flow_times == "logit_normal":
        t = torch.sigmoid(torch.randn(b, generator=gen))
    elif flow_times == "shift":
        u, shift = torch.rand(b, generator=gen), backbone.scheduler.config.shift
        t = shift * u / (1 + (shift - 1) * u)
    else:
        raise ValueError(f"flow_times must be 'shift' or 'logit_normal', got {flow_times!r}")
    pred = backbone.predict(backbone.add_noise(x0, t, eps), t, cond, 1.0)
    return F.mse_loss(pred, backbone.target(x0, eps, t))


def save_pipeline(backbone: PipelineBackbone, path: str | Path) -> None:
    """Save with the denoiser and autoencoder stored in float16 (half the size; diffusers loads them
    back as float32) and the text encoders in float32 (transformers keeps the stored dtype)."""
    modules = [m for m in (backbone.trainable(), backbone.vae) if m is not None]
    for module in modules:
        module.to(torch.float16)
    try:
        backbone.pipe.save_pretrained(path, safe_serialization=True)
    finally:
        for module in modules:
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
    cls, init_meta = _family(s.family), None
    if s.init:  # checked before anything is written
        backbone, init_meta = load_init(s, tokenizer)
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
        backbone = cls.pretrain_model(tokenizer, vae, s.resolution, s.seed + 1)
    vae = backbone.vae
    vae.requires_grad_(False).eval()
    texts, denoiser = backbone.text_encoders(), backbone.trainable()
    params = [p for m in (*texts, denoiser) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(s.seed + 2)
    for m in (*texts, denoiser):
        m.train()
    for step in range(s.steps):
        prompts, x = stream.batch(s.batch_size)
        drop = torch.rand(len(prompts), generator=gen) < s.drop_caption
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
        loss = denoising_loss(backbone, _encode_latents(vae, x), prompts, gen, s.flow_times)
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
    save_pipeline(backbone, out / "pipeline")
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
