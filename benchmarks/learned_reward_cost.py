"""Cost per image of the learned-reward wrappers at their real architecture sizes, and of the
composite rewards; prints a markdown table.

    python benchmarks/learned_reward_cost.py --threads 2 [--batch 4] [--repeats 5] [--big-repeats 1]
        [--size 512] [--models DIR] [--only clip_score hpsv2 ...] [--tiny]

Nothing is downloaded. Each wrapper's transformers model is built from the published config values
written below (``openai/clip-vit-large-patch14`` for ``clip_score`` and ``aesthetic``;
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, the architecture of PickScore_v1 and HPSv2, for ``pickscore``
and ``hpsv2``; BLIP ViT-L/16 + BERT-base with cross-attention, ImageReward's ``BLIP_Pretrain(vit="large")``
and ``med_config.json``, for ``image_reward``) with **random weights**, saved to ``--models`` (default: a
temporary directory, deleted at the end; an existing directory is reused) and loaded through the
wrapper, so the numbers are the real models' compute, not their scores. Tokenizers are tiny stand-ins:
every wrapper pads prompts to the model's fixed length (77 CLIP tokens, 35 BERT tokens), so the token
count, and the cost, is the real one.

Inputs: learned wrappers get ``--batch`` random smooth ``--size`` x ``--size`` images with **one** prompt
(a GRPO group; CLIP-type wrappers encode each distinct prompt once per call, so more distinct prompts add
one text-tower forward each); ``learned_bt`` (default architecture, random weights), ``shapes_critic``
(the shipped one), ``win_rate`` over ``shapes_checker`` and ``compose`` (``shapes_checker`` + 0.1
``jpeg``, ``normalise: before``) get shapes-world 32x32 renders with their metadata, two prompts of
``batch / 2`` samples. ``forward`` is the best of ``--repeats`` calls (``--big-repeats`` for models of
100 M parameters or more) after a warm-up call on one group; ``+ backward`` adds the gradient of the
summed scores with respect to the images (differentiable rewards only). ``load`` is the constructor's
time (reading the weights). ``--tiny`` shrinks every architecture to a few layers, for a smoke test.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import torch
import transformers

from vgrl import rewards
from vgrl.rewards._hf import PreferenceMLP
from vgrl.rewards.compose import Compose
from vgrl.worlds.shapes import ShapesWorld

# published config values (config.json of the hub repos named in the module docstring)
CLIP_L = dict(text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"),
              vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          image_size=224, patch_size=14, hidden_act="quick_gelu"),
              projection_dim=768)
CLIP_H = dict(text=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                        num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu"),
              vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                          image_size=224, patch_size=14, hidden_act="gelu"),
              projection_dim=1024)
BLIP_VIT_L = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")
MED_BERT_BASE = dict(vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, max_position_embeddings=512, layer_norm_eps=1e-12, hidden_act="gelu")
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PROMPT = "a photo of a red circle to the left of a blue square"


def _tiny(cfg: dict, tiny: bool) -> dict:
    return cfg | TINY if tiny else cfg


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {c: i for i, c in enumerate(LETTERS)} | {c + "</w>": 26 + i for i, c in enumerate(LETTERS)}
    return CLIPTokenizer(vocab=vocab | {"<|startoftext|>": 62, "<|endoftext|>": 63}, merges=[])


def build_clip(out: Path, arch: dict, tiny: bool) -> Path:
    """A random-weight ``CLIPModel`` of ``arch`` with a stand-in tokenizer in ``out`` (reused if present)."""
    from transformers import CLIPConfig, CLIPModel

    if (out / "model.safetensors").is_file():
        return out
    text = _tiny(arch["text"], tiny) | dict(bos_token_id=62, eos_token_id=63, pad_token_id=63)
    cfg = CLIPConfig(text_config=text, vision_config=_tiny(arch["vision"], tiny),
                     projection_dim=arch["projection_dim"], logit_scale_init_value=2.6592)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(out)
    _clip_tokenizer().save_pretrained(out)
    return out


def build_image_reward(out: Path, tiny: bool) -> Path:
    """The directory ``image_reward`` loads (the converter's layout), with random weights."""
    from safetensors.torch import save_file
    from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    if (out / "head.safetensors").is_file():
        return out
    torch.manual_seed(0)
    vcfg = BlipVisionConfig(**_tiny(BLIP_VIT_L, tiny))
    BlipVisionModel(vcfg).save_pretrained(out / "vision_model")
    tcfg = BlipTextConfig(**_tiny(MED_BERT_BASE, tiny), encoder_hidden_size=vcfg.hidden_size)
    BlipTextModel(tcfg, add_pooling_layer=False).save_pretrained(out / "text_encoder")
    save_file(PreferenceMLP(tcfg.hidden_size).state_dict(), out / "head.safetensors")
    (out / "image_reward.json").write_text(json.dumps({"mean": 0.0, "std": 1.0, "max_length": 35}))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PROMPT.split()]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(out)
    return out


def build_learned_bt(out: Path) -> Path:
    from safetensors.torch import save_file

    from vgrl.rewards.learned_bt import BTRewardNet

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = BTRewardNet()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps({"model": net.config}))
    return out


def aesthetic_head(root: Path, dim: int = 768) -> Path:
    from safetensors.torch import save_file

    file = root / f"aesthetic_head_{dim}.safetensors"
    if not file.is_file():
        torch.manual_seed(0)
        save_file(PreferenceMLP(dim).state_dict(), file)
    return file


def cases(root: Path, tiny: bool):
    """``(reward name, model, learned?, prepare)``; ``prepare()`` writes the weights (untimed) and returns
    the reward's options (for ``compose``, its terms' spec)."""
    clip_l = lambda: str(build_clip(root / "clip-vit-l-14", CLIP_L, tiny))  # noqa: E731
    clip_h = lambda: str(build_clip(root / "clip-vit-h-14", CLIP_H, tiny))  # noqa: E731
    return [
        ("clip_score", "CLIP ViT-L/14", True, lambda: dict(path=clip_l())),
        ("aesthetic", "CLIP ViT-L/14 vision + MLP", True, lambda: dict(path=clip_l(), head=str(aesthetic_head(root)))),
        ("pickscore", "CLIP ViT-H/14", True, lambda: dict(path=clip_h())),
        ("hpsv2", "CLIP ViT-H/14", True, lambda: dict(path=clip_h())),
        ("image_reward", "BLIP ViT-L/16 + BERT-base", True,
         lambda: dict(path=str(build_image_reward(root / "image-reward", tiny)))),
        ("learned_bt", "BTRewardNet (defaults)", False, lambda: dict(path=str(build_learned_bt(root / "bt")))),
        ("shapes_critic", "the shipped critic", False, lambda: {}),
        ("win_rate", "over shapes_checker (partial)", False, lambda: dict(inner={"name": "shapes_checker"})),
        ("compose", "shapes_checker + 0.1 jpeg, before", False,
         lambda: [{"name": "shapes_checker"}, {"name": "jpeg", "weight": 0.1}]),
    ]


def build(name: str, prepared):
    if name == "compose":
        return Compose.from_spec(prepared, normalise="before")
    return rewards.get(name, **prepared)


def smooth_images(batch: int, size: int) -> torch.Tensor:
    """``(batch, 3, size, size)`` in [0, 1]: bilinear upsampling of 8x8 noise (photo-like, not white noise)."""
    low = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def params(reward) -> float:
    """Millions of parameters of the torch modules a reward holds (its model(s), not its tokenizer)."""
    mods = [v for v in vars(reward).values() if isinstance(v, torch.nn.Module)]
    mods += [v for obj in vars(reward).values() if hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module)
             for v in vars(obj).values() if isinstance(v, torch.nn.Module)]
    return sum(p.numel() for m in mods for p in m.parameters()) / 1e6


def time_reward(reward, images, prompts, metas, repeats: int, warm: int) -> tuple[float, float | None]:
    """Best seconds per image of a forward call and (differentiable rewards) of forward + backward."""
    def fwd(x=images):
        reward(x, prompts[:len(x)], metas[:len(x)])

    def bwd(x=images):
        x = x.clone().requires_grad_(True)
        torch.autograd.grad(reward(x, prompts[:len(x)], metas[:len(x)]).scores.sum(), x)

    out = []
    for fn in (fwd, bwd) if reward.differentiable else (fwd,):
        fn(images[:warm])  # warm-up on one group
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        out.append(best / len(images))
    return out[0], (out[1] if len(out) > 1 else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls of the small rewards (best is kept)")
    ap.add_argument("--big-repeats", type=int, default=1, help="timed calls of models >= 100 M parameters")
    ap.add_argument("--size", type=int, default=512, help="side of the learned wrappers' input images")
    ap.add_argument("--models", default=None, help="directory for the random-weight models (kept; reused)")
    ap.add_argument("--only", nargs="+", default=None, help="reward names to time")
    ap.add_argument("--tiny", action="store_true", help="tiny architectures (smoke test; numbers meaningless)")
    ap.add_argument("--build-only", action="store_true", help="write the random-weight models to --models and stop")
    args = ap.parse_args()
    if args.batch < 4 or args.batch % 2:
        ap.error("--batch must be even and >= 4 (two prompt groups of >= 2 for the groupwise rewards)")
    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    tmp = None if args.models else tempfile.TemporaryDirectory(prefix="vgrl-reward-cost-")
    root = Path(args.models or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    print(f"torch threads: {torch.get_num_threads()}, batch: {args.batch}, learned inputs: {args.size}x{args.size}"
          f"{', TINY architectures' if args.tiny else ''}; random weights of the real architecture, cost only\n")
    print("| reward | model | parameters | input | load s | forward ms/image | forward + backward ms/image |")
    print("|---|---|---:|---|---:|---:|---:|")
    world = ShapesWorld(32)
    ps = world.prompts("train", "position")[:2]
    half = args.batch // 2
    shapes_metas = [ps[0].meta] * half + [ps[1].meta] * (args.batch - half)
    shapes_prompts = [ps[0].text] * half + [ps[1].text] * (args.batch - half)
    shapes = world.render(shapes_metas, seed=0)
    big_images = smooth_images(args.batch, args.size)
    try:
        for name, arch, learned, prepare in cases(root, args.tiny):
            if args.only and name not in args.only:
                continue
            prepared = prepare()
            gc.collect()
            if args.build_only:
                continue
            t = time.perf_counter()
            reward = build(name, prepared)
            load = time.perf_counter() - t
            n = params(reward)
            repeats = args.big_repeats if n >= 100 else args.repeats
            if learned:
                images, prompts, metas, what = big_images, [PROMPT] * args.batch, [None] * args.batch, \
                    f"{args.size}x{args.size}, 1 prompt"
                warm = 1
            else:
                images, prompts, metas, what = shapes, shapes_prompts, shapes_metas, "shapes 32x32, 2 prompts"
                warm = 2 if reward.granularity == "groupwise" else 1
            fwd, bwd = time_reward(reward, images, prompts, metas, repeats, warm)
            bwd_s = "-" if bwd is None else f"{1000 * bwd:,.1f}"
            size = f"{n:,.1f} M" if n else "-"
            print(f"| {name} | {arch} | {size} | {what} | {load:.1f} | {1000 * fwd:,.1f} | {bwd_s} |", flush=True)
            del reward
            gc.collect()
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
