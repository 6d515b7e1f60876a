"""HPSv2: Human Preference Score v2, an OpenCLIP ViT-H/14 fine-tuned on HPD v2, run as a transformers CLIPModel.

HPSv2 (Wu et al., arXiv 2306.09341) scores an image ``x`` for prompt ``p`` by the cosine of the fine-tuned
model's normalised embeddings (``hpsv2.score``: the diagonal of ``image_features @ text_features.T``)::

    r = cos(E_img(x), E_txt(p))          (typically 0.2 - 0.35; no logit scale)

Its scorer preprocesses with OpenCLIP's ``ResizeMaxSize`` (longest side to 224, black padding), which is
the default ``resize="pad"`` here; for square images it equals resize + crop.

The released checkpoints (``HPS_v2_compressed.pt``, ``HPS_v2.1_compressed.pt`` in the ``xswu/HPSv2`` hub
repo) are OpenCLIP state dicts. vgrl does not depend on ``open_clip``: :func:`convert_checkpoint` maps one,
once, onto a transformers ``CLIPModel`` whose config, tokenizer and preprocessor come from
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (the base HPSv2 fine-tunes; its weights are not needed)::

    python -m vgrl.rewards.hpsv2 --checkpoint HPS_v2.1_compressed.pt --base CLIP-ViT-H-14-laion2B --out hpsv2.1

The mapping (:func:`convert_state_dict`) is the OpenAI/OpenCLIP layout to transformers' CLIP layout:
``in_proj_weight`` split into ``q/k/v_proj``, ``c_fc``/``c_proj`` -> ``fc1``/``fc2``, ``ln_1``/``ln_2`` ->
``layer_norm1``/``layer_norm2``, ``ln_pre``/``ln_post``/``ln_final`` -> ``pre_layrnorm``/``post_layernorm``/
``final_layer_norm``, ``conv1`` -> ``patch_embedding``, and ``visual.proj``/``text_projection`` (used as
``x @ P``) transposed into the projection ``Linear`` weights. Its test checks it against an independent
module written in OpenCLIP's layout (tests/unit/test_learned_rewards.py), and it was checked once against
``open_clip_torch`` 3.3.0's own ``CLIP`` on a tiny random ViT-H-14-shaped model (scores equal to 3e-8;
docs/rewards/learned.md). It has not been run on the real checkpoint (no weights on this machine).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from vgrl.rewards._hf import ClipEncoder, ResizeMode, load_state, quiet_transformers, read_config, require_files
from vgrl.rewards.base import Reward, RewardOptions
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "preprocessor_config.json")
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_TOP = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight", "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias"}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_RESBLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")


def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenCLIP (OpenAI layout) CLIP state dict -> transformers ``CLIPModel`` state dict.

    Raises ``ValueError`` listing keys it does not know (e.g. a non-ViT tower or layer scale), so a
    checkpoint of another architecture fails instead of loading partially. ``attn_mask`` buffers are dropped.
    """
    out, unknown = {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key == "attn_mask" or key.endswith(".attn_mask"):
            continue
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif m := _RESBLOCK.match(re.sub(r"in_proj_(weight|bias)$", r"in_proj.\1", key)):
            tower = "vision_model" if m.group(1) else "text_model"
            prefix, name, kind = f"{tower}.encoder.layers.{m.group(2)}", m.group(3), m.group(4)
            if name == "attn.in_proj":  # nn.MultiheadAttention packs [W_q; W_k; W_v]
                for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"{prefix}.self_attn.{part}_proj.{kind}"] = chunk.contiguous()
            elif name in _BLOCK:
                out[f"{prefix}.{_BLOCK[name]}.{kind}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"not an OpenCLIP ViT CLIP state dict: unknown keys {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''}")
    return out


def convert_checkpoint(checkpoint: str | Path, base: str | Path, out: str | Path) -> Path:
    """Write a transformers ``CLIPModel`` directory ``out`` from an OpenCLIP checkpoint (HPSv2's ``.pt``).

    ``base`` holds the architecture's ``config.json`` and tokenizer (+ ``preprocessor_config.json``), e.g.
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; they are copied to ``out``. The checkpoint is read with
    ``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` wrapper is unwrapped. Every parameter of the
    model must be set by the checkpoint, and every checkpoint tensor used.
    """
    from transformers import CLIPConfig, CLIPModel

    who = "hpsv2"
    base = require_files(who, base, {"config.json": "the base CLIPModel config"})
    read_config(who, base, ("clip",))
    cfg = CLIPConfig.from_pretrained(base, local_files_only=True)
    for tower in (cfg.text_config, cfg.vision_config):
        if tower.hidden_act != "gelu":
            raise ValueError(f"{base / 'config.json'}: hidden_act {tower.hidden_act!r}, but OpenCLIP ViT-H-14 "
                             "uses exact GELU ('gelu'); use laion/CLIP-ViT-H-14-laion2B-s32B-b79K's config")
    state = load_state(who, checkpoint)
    state = state.get("state_dict", state)
    with quiet_transformers():
        model = CLIPModel(cfg)
    mapped = convert_state_dict(state)
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(mapped)), sorted(set(mapped) - expected)
    if missing or extra:
        raise ValueError(f"{checkpoint} does not match {base / 'config.json'}: missing {missing[:6]}, "
                         f"unexpected {extra[:6]}")
    model.load_state_dict(mapped, strict=True)
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    return out


class Hpsv2Options(RewardOptions):
    path: str = Field(description="converted HPSv2 CLIPModel directory (see convert_checkpoint)")
    tokenizer: str | None = Field(None, description="directory of the CLIP-ViT-H-14 tokenizer (default: path)")
    resize: ResizeMode = Field("pad", description="'pad' (HPSv2's ResizeMaxSize, default) or 'crop'")


class Hpsv2(Reward):
    """``cos(E_img, E_txt)`` of the HPSv2 model; ``details["hps"]``."""

    name = "hpsv2"
    differentiable = True
    granularity = "pointwise"
    Options: ClassVar[type[RewardOptions]] = Hpsv2Options

    @classmethod
    def example(cls, root: Path) -> "Hpsv2":
        """On a tiny random-init CLIP written to ``root`` (the conformance suite's instance)."""
        from vgrl.rewards._hf import write_tiny_clip

        return cls(path=str(write_tiny_clip(root)))

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.clip = ClipEncoder(self.name, o.path, o.tokenizer, o.resize,
                                hint=" (convert HPS_v2.1_compressed.pt with `python -m vgrl.rewards.hpsv2`; "
                                     "see docs/rewards/learned.md)")

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        cos = self.clip.cosine(images, prompts)
        return RewardOutput(scores=cos, details={"hps": cos.detach()})


COMPONENT = Hpsv2


if __name__ == "__main__":  # pragma: no cover - a one-off conversion tool
    import argparse

    ap = argparse.ArgumentParser(description="Convert an HPSv2 (OpenCLIP) checkpoint to a transformers CLIPModel.")
    ap.add_argument("--checkpoint", required=True, help="HPS_v2_compressed.pt or HPS_v2.1_compressed.pt")
    ap.add_argument("--base", required=True, help="laion/CLIP-ViT-H-14-laion2B-s32B-b79K config + tokenizer dir")
    ap.add_argument("--out", required=True, help="output directory")
    a = ap.parse_args()
    print(f"saved {convert_checkpoint(a.checkpoint, a.base, a.out)}")
