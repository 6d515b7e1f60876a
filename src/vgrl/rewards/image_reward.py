"""ImageReward: a BLIP image-grounded text encoder + MLP trained on 137k expert preference comparisons.

ImageReward (Xu et al., arXiv 2304.05977) encodes the prompt with BLIP's BERT text encoder cross-attending
to the ViT-L/16 image tokens, and maps the [CLS] feature to a standardised score::

    v = ViT(x)                                   (B, 1 + N, 1024) image tokens, post-norm
    h = BERT(tokens(p), cross-attention to v)[:, 0]  (B, 768)
    r = (MLP(h) - mu) / sigma                    mu = 0.16717362830052426, sigma = 1.0333394966054072

with the prompt tokenised by the ``bert-base-uncased`` tokenizer (padding to 35 tokens, truncated) and
the image resized (bicubic, shortest side 224), centre-cropped and normalised with CLIP's statistics.
This file runs that forward pass with transformers' BLIP classes (``BlipVisionModel``,
``BlipTextModel``, ports of BLIP's ``vit.py`` / ``med.py``) and torch preprocessing, so it is
differentiable in the pixels (ImageReward's own ReFL back-propagates through it).

Weights: :func:`convert_checkpoint` writes the directory this reward loads from the files users download
from the ``THUDM/ImageReward`` hub repo (``ImageReward.pt``, ``med_config.json``) and a ``bert-base-uncased``
tokenizer directory::

    python -m vgrl.rewards.image_reward --checkpoint ImageReward.pt --med-config med_config.json \\
        --tokenizer bert-base-uncased --out image-reward

Key mapping (``blip.visual_encoder.`` -> ``vision_model/``): ``cls_token`` -> ``embeddings.class_embedding``,
``pos_embed`` -> ``embeddings.position_embedding``, ``patch_embed.proj`` -> ``embeddings.patch_embedding``,
``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`` -> ``encoder.layers.i.{layer_norm1,
self_attn.qkv, self_attn.projection, layer_norm2, mlp.fc1, mlp.fc2}``, ``norm`` -> ``post_layernorm``
(LayerNorm eps 1e-6, as BLIP's ViT); ``blip.text_encoder.*`` keeps its names in ``text_encoder/``;
``mlp.layers.*`` -> ``head.safetensors``. Status: tested for consistency on tiny random models, and checked
once against the BLIP code of the ``image-reward`` 1.5 package (its ``vit.py`` / ``med.py`` run on a tiny random
model in ImageReward's own layout: scores equal, docs/rewards/learned.md); not run on the real checkpoint
(no weights on this machine).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from vgrl._lazy import lazy
from vgrl.rewards._hf import (ImageSpec, load_frozen, load_mlp, load_state, quiet_transformers, require_files,
                              require_safetensors)
from vgrl.rewards.base import Reward, RewardOptions
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")

MEAN, STD, MAX_LENGTH = 0.16717362830052426, 1.0333394966054072, 35
VISION, TEXT, HEAD, META = "vision_model", "text_encoder", "head.safetensors", "image_reward.json"
HINT = (" (build it with `python -m vgrl.rewards.image_reward` from THUDM/ImageReward files; "
        "see docs/rewards/learned.md)")
_VIT = [(r"^cls_token$", "embeddings.class_embedding"), (r"^pos_embed$", "embeddings.position_embedding"),
        (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
        (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
        (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
        (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
        (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
        (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."), (r"^norm\.", "post_layernorm.")]


def _vit_key(key: str) -> str:
    for pattern, repl in _VIT:
        if re.search(pattern, key):
            return re.sub(pattern, repl, key)
    raise ValueError(f"unknown BLIP ViT key {key!r}")


def convert_checkpoint(checkpoint: str | Path, med_config: str | Path, tokenizer: str | Path, out: str | Path) -> Path:
    """Write the directory :class:`ImageReward` loads from ImageReward's ``.pt`` (read ``weights_only``),
    its ``med_config.json`` and a ``bert-base-uncased`` tokenizer directory.

    The ViT's size is read from the tensors' shapes (heads = width / 64, as BLIP's ViT-B and ViT-L); the
    text encoder's from ``med_config.json`` with the cross-attention width of the checkpoint. Every
    parameter of both models must be set by the checkpoint.
    """
    from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    state = load_state("image_reward", checkpoint)
    vit = {k.removeprefix("blip.visual_encoder."): v for k, v in state.items() if k.startswith("blip.visual_encoder.")}
    bert = {k.removeprefix("blip.text_encoder."): v for k, v in state.items()
            if k.startswith("blip.text_encoder.") and not k.endswith("position_ids")}
    head = {k.removeprefix("mlp."): v for k, v in state.items() if k.startswith("mlp.")}
    if not vit or not bert or not head:
        raise ValueError(f"{checkpoint}: expected keys blip.visual_encoder.*, blip.text_encoder.* and mlp.* "
                         "(an ImageReward.pt state dict)")
    width, patch = vit["cls_token"].shape[-1], vit["patch_embed.proj.weight"].shape[-1]
    grid = round((vit["pos_embed"].shape[1] - 1) ** 0.5)
    vcfg = BlipVisionConfig(hidden_size=width, intermediate_size=vit["blocks.0.mlp.fc1.weight"].shape[0],
                            num_hidden_layers=len({k.split(".")[1] for k in vit if k.startswith("blocks.")}),
                            num_attention_heads=max(width // 64, 1), image_size=grid * patch, patch_size=patch,
                            layer_norm_eps=1e-6, hidden_act="gelu")
    med = json.loads(Path(med_config).read_text())
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "layer_norm_eps", "hidden_act")
    tcfg = BlipTextConfig(**{k: med[k] for k in keys if k in med},
                          encoder_hidden_size=bert["encoder.layer.0.crossattention.self.key.weight"].shape[1])
    with quiet_transformers():
        vision, text = BlipVisionModel(vcfg), BlipTextModel(tcfg, add_pooling_layer=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for model, sd, sub in ((vision, {_vit_key(k): v for k, v in vit.items()}, VISION), (text, bert, TEXT)):
        missing, extra = sorted(set(model.state_dict()) - set(sd)), sorted(set(sd) - set(model.state_dict()))
        if missing or extra:
            raise ValueError(f"{checkpoint}: {sub} does not match: missing {missing[:6]}, unexpected {extra[:6]}")
        model.load_state_dict(sd, strict=True)
        model.save_pretrained(out / sub, safe_serialization=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in head.items()}, out / HEAD)
    (out / META).write_text(json.dumps({"mean": MEAN, "std": STD, "max_length": MAX_LENGTH}, indent=2) + "\n")
    with quiet_transformers():
        BertTokenizer.from_pretrained(tokenizer, local_files_only=True).save_pretrained(out)
    return out


class ImageRewardOptions(RewardOptions):
    path: str = Field(description=f"converted ImageReward directory ({VISION}/, {TEXT}/, {HEAD}, {META}, tokenizer)")
    standardise: bool = Field(True, description="apply ImageReward's (r - mu) / sigma (the released scores do)")


class ImageReward(Reward):
    """``(MLP(BLIP(x, p)[CLS]) - mu) / sigma``; ``details["image_reward"]``."""

    name = "image_reward"
    differentiable = True
    granularity = "pointwise"
    Options: ClassVar[type[RewardOptions]] = ImageRewardOptions

    @classmethod
    def example(cls, root: Path) -> ImageReward:
        """On a tiny random-init BLIP (vision 32 px, text width 32), head and word tokenizer written to ``root``
        in the converted layout (the conformance suite's instance)."""
        from safetensors.torch import save_file
        from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        from vgrl.rewards._hf import PreferenceMLP

        root = Path(root)
        vcfg = BlipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                                image_size=32, patch_size=8, layer_norm_eps=1e-6)
        tcfg = BlipTextConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                              intermediate_size=48, max_position_embeddings=40, encoder_hidden_size=32)
        with torch.random.fork_rng(devices=[]), quiet_transformers():
            torch.manual_seed(3)
            BlipVisionModel(vcfg).save_pretrained(root / VISION)
            BlipTextModel(tcfg, add_pooling_layer=False).save_pretrained(root / TEXT)
            save_file(PreferenceMLP(32).state_dict(), root / HEAD)
            words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"a photo of red blue circle square".split()]
            BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(root)
        (root / META).write_text(json.dumps({"mean": MEAN, "std": STD, "max_length": 16}))
        return cls(path=str(root))

    def __init__(self, **options: Any) -> None:
        from transformers import BertTokenizer, BlipTextModel, BlipVisionModel

        super().__init__(**options)
        root = require_files(self.name, self.options.path, {META: "mean, std, max_length", HEAD: "the MLP head",
                                                            f"{VISION}/config.json": "BlipVisionModel",
                                                            f"{TEXT}/config.json": "BlipTextModel"}, HINT)
        for sub in (VISION, TEXT):
            require_safetensors(self.name, root / sub, HINT)
        meta = json.loads((root / META).read_text())
        self.mean, self.std, self.max_length = float(meta["mean"]), float(meta["std"]), int(meta["max_length"])
        self.vision = load_frozen(BlipVisionModel, root / VISION)
        self.text = load_frozen(BlipTextModel, root / TEXT, add_pooling_layer=False)
        self.mlp = load_mlp(self.name, root / HEAD, self.text.config.hidden_size)
        with quiet_transformers():
            self.tokenizer = BertTokenizer.from_pretrained(root, local_files_only=True)
        self.spec = ImageSpec(self.vision.config.image_size, self.vision.config.image_size)

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        dev = images.device
        vision, text, mlp = self.vision.to(dev), self.text.to(dev), self.mlp.to(dev)
        tokens = vision(pixel_values=self.spec(images)).last_hidden_state
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(dev)
        h = text(input_ids=tok.input_ids, attention_mask=tok.attention_mask, encoder_hidden_states=tokens,
                 encoder_attention_mask=torch.ones(tokens.shape[:2], dtype=torch.long, device=dev)).last_hidden_state
        r = mlp(h[:, 0].float())
        scores = ((r - self.mean) / self.std if self.options.standardise else r).float()
        return RewardOutput(scores=scores, details={"image_reward": scores.detach()})


COMPONENT = ImageReward


if __name__ == "__main__":  # pragma: no cover - a one-off conversion tool
    import argparse

    ap = argparse.ArgumentParser(description="Convert THUDM's ImageReward.pt to the directory vgrl loads.")
    ap.add_argument("--checkpoint", required=True, help="ImageReward.pt")
    ap.add_argument("--med-config", required=True, help="med_config.json")
    ap.add_argument("--tokenizer", required=True, help="bert-base-uncased tokenizer directory")
    ap.add_argument("--out", required=True, help="output directory")
    a = ap.parse_args()
    print(f"saved {convert_checkpoint(a.checkpoint, a.med_config, a.tokenizer, a.out)}")
