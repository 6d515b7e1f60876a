"""Wrappers of the field's learned rewards (CLIPScore, PickScore, HPSv2, ImageReward, LAION aesthetic) on
tiny random-init models of the same transformers classes, saved to disk and loaded through the wrappers:
hand-computed scores, truthful differentiable flags, determinism, the checkpoint conversions against
independent modules in the original layouts, torch preprocessing against transformers' processor, and
errors that name the missing or wrong file. Nothing is downloaded."""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from vgrl import rewards
from vgrl.rewards._hf import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageSpec, PreferenceMLP
from vgrl.rewards.hpsv2 import convert_checkpoint as convert_hpsv2
from vgrl.rewards.image_reward import MEAN, STD
from vgrl.rewards.image_reward import convert_checkpoint as convert_image_reward

transformers = pytest.importorskip("transformers")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
CTX, RES, PROMPTS = 16, 30, ["a red cat", "two dogs", "a red cat"]


def _clip_tokenizer():
    vocab = {c: i for i, c in enumerate(LETTERS)} | {c + "</w>": 26 + i for i, c in enumerate(LETTERS)}
    return transformers.CLIPTokenizer(vocab=vocab | {"<|startoftext|>": 62, "<|endoftext|>": 63}, merges=[])


def _clip_config(**vision):
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=CTX, bos_token_id=62, eos_token_id=63, pad_token_id=63, hidden_act="gelu")
    v = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=RES,
             patch_size=6, hidden_act="gelu") | vision
    return transformers.CLIPConfig(text_config=text, vision_config=v, projection_dim=16, logit_scale_init_value=2.0)


def _normalise(x):
    return (x - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


def _features(out):  # get_*_features returns a tensor (transformers 4) or an output with pooler_output (5)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    transformers.CLIPModel(_clip_config()).save_pretrained(path)
    _clip_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    torch.manual_seed(1)
    file = tmp_path_factory.mktemp("aesthetic") / "head.pth"
    torch.save(PreferenceMLP(16).state_dict(), file)
    return file


# ----------------------------------------------------------------------------- OpenCLIP layout (HPSv2)
class _Block(nn.Module):
    """OpenCLIP's ResidualAttentionBlock: pre-LN, nn.MultiheadAttention, c_fc -> GELU -> c_proj."""

    def __init__(self, d: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(d, hidden), gelu=nn.GELU(), c_proj=nn.Linear(hidden, d)))

    def forward(self, x, mask=None):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, d: int, layers: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_Block(d, heads, hidden) for _ in range(layers))

    def forward(self, x, mask=None):
        for block in self.resblocks:
            x = block(x, mask)
        return x


class OpenClipLayout(nn.Module):
    """An OpenCLIP ViT CLIP (OpenAI layout, parameter names as open_clip's ``CLIP``), written from torch
    primitives: class token + ln_pre, ln_post on the class token, ``x @ proj``; text pooled at argmax id."""

    def __init__(self, d=32, layers=2, heads=4, hidden=48, patch=6, vocab=64, embed=16) -> None:
        super().__init__()
        grid = RES // patch
        self.visual = nn.Module()
        self.visual.conv1 = nn.Conv2d(3, d, patch, patch, bias=False)
        self.visual.class_embedding = nn.Parameter(torch.randn(d) * 0.5)
        self.visual.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, d) * 0.5)
        self.visual.ln_pre, self.visual.ln_post = nn.LayerNorm(d), nn.LayerNorm(d)
        self.visual.transformer = _Transformer(d, layers, heads, hidden)
        self.visual.proj = nn.Parameter(torch.randn(d, embed) * 0.2)
        self.token_embedding = nn.Embedding(vocab, d)
        self.positional_embedding = nn.Parameter(torch.randn(CTX, d) * 0.5)
        self.transformer = _Transformer(d, layers, heads, hidden)
        self.ln_final = nn.LayerNorm(d)
        self.text_projection = nn.Parameter(torch.randn(d, embed) * 0.2)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("attn_mask", torch.full((CTX, CTX), float("-inf")).triu(1), persistent=False)
        with torch.no_grad():
            for p in self.parameters():
                p.add_(0.1 * torch.randn_like(p))  # layer norms and biases away from their init

    def encode_image(self, pixels):
        v = self.visual
        x = v.conv1(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
        x = v.transformer(v.ln_pre(x))
        return nn.functional.normalize(v.ln_post(x[:, 0]) @ v.proj, dim=-1)

    def encode_text(self, ids):
        x = self.transformer(self.token_embedding(ids) + self.positional_embedding, self.attn_mask)
        x = self.ln_final(x)[torch.arange(ids.shape[0]), ids.argmax(-1)]
        return nn.functional.normalize(x @ self.text_projection, dim=-1)


@pytest.fixture(scope="module")
def hps(tmp_path_factory):
    """(converted HPSv2 directory, the OpenCLIP-layout reference it came from)."""
    root = tmp_path_factory.mktemp("hps")
    torch.manual_seed(2)
    ref = OpenClipLayout().eval()
    torch.save({"state_dict": ref.state_dict(), "epoch": 1}, root / "HPS_v2_compressed.pt")
    base = root / "base"
    _clip_config().save_pretrained(base)
    _clip_tokenizer().save_pretrained(base)
    return convert_hpsv2(root / "HPS_v2_compressed.pt", base, root / "hpsv2"), ref


# ----------------------------------------------------------------------------- BLIP layout (ImageReward)
def _to_blip_vit_name(key: str) -> str:
    """transformers BlipVisionModel name -> BLIP's vit.py name (the inverse of the converter's table)."""
    for a, b in (("embeddings.class_embedding", "cls_token"), ("embeddings.position_embedding", "pos_embed"),
                 ("embeddings.patch_embedding.", "patch_embed.proj."), ("post_layernorm.", "norm."),
                 ("encoder.layers.", "blocks."), (".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."),
                 (".self_attn.qkv.", ".attn.qkv."), (".self_attn.projection.", ".attn.proj.")):
        key = key.replace(a, b)
    return key


@pytest.fixture(scope="module")
def image_reward(tmp_path_factory):
    """(converted ImageReward directory, (vision, text, mlp, tokenizer) it came from)."""
    root = tmp_path_factory.mktemp("imagereward")
    torch.manual_seed(3)
    vcfg = transformers.BlipVisionConfig(hidden_size=128, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8, layer_norm_eps=1e-6)
    med = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
               max_position_embeddings=40, layer_norm_eps=1e-12, hidden_act="gelu", encoder_width=768)
    vision = transformers.BlipVisionModel(vcfg).eval()
    tcfg = transformers.BlipTextConfig(**{k: v for k, v in med.items() if k != "encoder_width"},
                                       encoder_hidden_size=128)
    text = transformers.BlipTextModel(tcfg, add_pooling_layer=False).eval()
    mlp = PreferenceMLP(32).eval()
    state = {f"blip.visual_encoder.{_to_blip_vit_name(k)}": v for k, v in vision.state_dict().items()}
    state |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    state |= {f"mlp.{k}": v for k, v in mlp.state_dict().items()} | {"blip.vision_proj.weight": torch.zeros(4, 128)}
    torch.save(state, root / "ImageReward.pt")
    (root / "med_config.json").write_text(json.dumps(med))
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"a red cat two dogs".split()]
    tok = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    tok.save_pretrained(root / "bert")
    out = convert_image_reward(root / "ImageReward.pt", root / "med_config.json", root / "bert", root / "converted")
    return out, (vision, text, mlp, tok)


# ----------------------------------------------------------------------------- hand computations
def test_clip_score_equals_hand_computation(clip_dir):
    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    tok = transformers.CLIPTokenizer.from_pretrained(clip_dir)
    images = torch.rand(3, 3, RES, RES, generator=torch.Generator().manual_seed(0))  # model size: no resize
    with torch.no_grad():
        img = _features(model.get_image_features(pixel_values=_normalise(images)))
        txt = _features(model.get_text_features(**tok(PROMPTS, padding=True, return_tensors="pt")))
        cos = nn.functional.cosine_similarity(img, txt, dim=-1)
        clipscore = rewards.get("clip_score", path=str(clip_dir))(images, PROMPTS).scores
        cosine = rewards.get("clip_score", path=str(clip_dir), mode="cosine")(images, PROMPTS).scores
    torch.testing.assert_close(cosine, cos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clipscore, 100 * cos.clamp(min=0), atol=1e-3, rtol=1e-5)


def test_pickscore_is_logit_scale_times_cosine(clip_dir):
    images = torch.rand(3, 3, 40, 52, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cos = rewards.get("clip_score", path=str(clip_dir), mode="cosine")(images, PROMPTS).scores
        pick = rewards.get("pickscore", path=str(clip_dir))(images, PROMPTS).scores
    torch.testing.assert_close(pick, math.exp(2.0) * cos, atol=1e-5, rtol=1e-5)  # logit_scale_init_value=2


def test_hpsv2_conversion_reproduces_the_openclip_layout_model(hps):
    path, ref = hps
    images = torch.rand(3, 3, RES, RES, generator=torch.Generator().manual_seed(2))
    ids = _clip_tokenizer()(PROMPTS, padding="max_length", max_length=CTX, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = (ref.encode_image(_normalise(images)) * ref.encode_text(ids)).sum(-1)
        got = rewards.get("hpsv2", path=str(path))(images, PROMPTS).scores
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert expected.abs().min() > 1e-3  # not a trivial zero match


def test_image_reward_conversion_reproduces_the_blip_forward(image_reward):
    path, (vision, text, mlp, tok) = image_reward
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    prompts = ["a red cat", "two dogs"]
    with torch.no_grad():
        v = vision(pixel_values=_normalise(images)).last_hidden_state
        t = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        h = text(input_ids=t.input_ids, attention_mask=t.attention_mask, encoder_hidden_states=v,
                 encoder_attention_mask=torch.ones(v.shape[:2], dtype=torch.long)).last_hidden_state[:, 0]
        expected = (mlp(h) - MEAN) / STD
        reward = rewards.get("image_reward", path=str(path))
        got = reward(images, prompts).scores
        raw = rewards.get("image_reward", path=str(path), standardise=False)(images, prompts).scores
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(raw, mlp(h), atol=1e-5, rtol=1e-4)
    assert reward.vision.config.layer_norm_eps == 1e-6 and reward.vision.config.num_attention_heads == 2


def test_aesthetic_is_the_mlp_of_the_normalised_image_embedding(clip_dir, head_file, tmp_path):
    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    mlp = PreferenceMLP(16).eval()
    mlp.load_state_dict(torch.load(head_file, weights_only=True))
    images = torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        emb = nn.functional.normalize(_features(model.get_image_features(pixel_values=_normalise(images))), dim=-1)
        got = rewards.get("aesthetic", path=str(clip_dir), head=str(head_file))(images, ["", ""]).scores
        save_file(mlp.state_dict(), tmp_path / "head.safetensors")
        again = rewards.get("aesthetic", path=str(clip_dir), head=str(tmp_path / "head.safetensors"))(images, ["", ""])
    torch.testing.assert_close(got, mlp(emb), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again.scores, got)


# ----------------------------------------------------------------------------- flags, determinism, shapes
def _build(name, clip_dir, head_file, hps, image_reward):
    paths = {"clip_score": dict(path=str(clip_dir)), "pickscore": dict(path=str(clip_dir)),
             "hpsv2": dict(path=str(hps[0])), "image_reward": dict(path=str(image_reward[0])),
             "aesthetic": dict(path=str(clip_dir), head=str(head_file))}
    return rewards.get(name, **paths[name])


@pytest.mark.parametrize("name", ["clip_score", "pickscore", "hpsv2", "image_reward", "aesthetic"])
def test_scores_are_deterministic_and_gradients_reach_the_images(name, clip_dir, head_file, hps, image_reward):
    reward = _build(name, clip_dir, head_file, hps, image_reward)
    assert name in rewards.available() and reward.differentiable and reward.granularity == "pointwise"
    images = torch.rand(3, 3, 48, 40, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    out = reward(images, PROMPTS)
    assert out.scores.shape == (3,) and out.scores.dtype == torch.float32
    (grad,) = torch.autograd.grad(out.scores.sum(), images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(reward(images, PROMPTS).scores, out.scores.detach(), rtol=0, atol=0)
        single = reward(images[1:2], PROMPTS[1:2]).scores
    torch.testing.assert_close(single, out.scores[1:2].detach(), atol=1e-5, rtol=1e-5)  # pointwise
    owners = [vars(reward)] + ([vars(reward.clip)] if hasattr(reward, "clip") else [])
    frozen = [m for o in owners for m in o.values() if isinstance(m, nn.Module)]
    assert frozen and not any(p.requires_grad for m in frozen for p in m.parameters())


# ----------------------------------------------------------------------------- preprocessing
def test_torch_preprocessing_matches_clip_image_processor():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)  # smooth image: upsampled noise, 45 x 60
    pil = Image.fromarray(small).resize((60, 45), Image.BICUBIC)
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": RES}, crop_size={"height": RES, "width": RES})
    expected = torch.as_tensor(np.asarray(processor(pil, return_tensors="np").pixel_values))
    x = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None].float() / 255
    got = ImageSpec(RES, RES)(x)
    assert got.shape == expected.shape == (1, 3, RES, RES)
    assert (got - expected).abs().max() < 0.05  # uint8 rounding and PIL's bicubic kernel


def test_pad_mode_matches_resize_max_size():
    """OpenCLIP's ResizeMaxSize: longest side to the size, black padding centred."""
    rng = np.random.default_rng(1)
    pil = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)).resize((60, 40), Image.BICUBIC)
    canvas = Image.new("RGB", (RES, RES))
    canvas.paste(pil.resize((30, 20), Image.BICUBIC), (0, 5))
    expected = _normalise(torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)[None].float() / 255)
    got = ImageSpec(RES, RES, mode="pad")(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)[None].float() / 255)
    assert (got - expected).abs().max() < 0.05
    torch.testing.assert_close(got[..., :5, :], _normalise(torch.zeros(1, 3, 5, RES)))  # the black band


# ----------------------------------------------------------------------------- errors
def test_missing_or_wrong_paths_name_the_file(clip_dir, head_file, image_reward, tmp_path):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(nowhere))):
        rewards.get("clip_score", path=str(nowhere))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        rewards.get("pickscore", path=str(tmp_path / "empty"))
    no_weights = tmp_path / "no_weights"
    _clip_config().save_pretrained(no_weights)
    (no_weights / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*pytorch_model\.bin.*pickle"):
        rewards.get("hpsv2", path=str(no_weights))
    with pytest.raises(ValueError, match=r"config\.json has model_type 'blip_vision_model'"):
        rewards.get("clip_score", path=str(image_reward[0] / "vision_model"))
    no_tok = tmp_path / "no_tok"
    transformers.CLIPModel(_clip_config()).save_pretrained(no_tok)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        rewards.get("clip_score", path=str(no_tok))
    with pytest.raises(FileNotFoundError, match="head.safetensors"):
        rewards.get("image_reward", path=str(clip_dir))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent.pth"))):
        rewards.get("aesthetic", path=str(clip_dir), head=str(tmp_path / "absent.pth"))
    save_file({"w": torch.zeros(2)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"bad\.safetensors.*preference MLP"):
        rewards.get("aesthetic", path=str(clip_dir), head=str(tmp_path / "bad.safetensors"))
    torch.save({"layers": [nn.Linear(2, 2)]}, tmp_path / "pickled.pt")  # a module: refused by weights_only
    with pytest.raises(ValueError, match=r"pickled\.pt.*weights_only"):
        rewards.get("aesthetic", path=str(clip_dir), head=str(tmp_path / "pickled.pt"))
    with pytest.raises(pydantic.ValidationError, match="path"):
        rewards.get("clip_score")
    with pytest.raises(pydantic.ValidationError, match="mode"):
        rewards.get("clip_score", path=str(clip_dir), mode="probability")


def test_conversions_reject_other_checkpoints(hps, tmp_path):
    from vgrl.rewards.hpsv2 import convert_state_dict

    with pytest.raises(ValueError, match="unknown keys.*visual.trunk"):
        convert_state_dict({"visual.trunk.stem.weight": torch.zeros(1)})
    torch.save({"model": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt.*blip\.visual_encoder"):
        convert_image_reward(tmp_path / "other.pt", tmp_path / "med.json", tmp_path, tmp_path / "out")
    quick = tmp_path / "quick"
    cfg = _clip_config()
    cfg.vision_config.hidden_act = "quick_gelu"
    cfg.save_pretrained(quick)
    with pytest.raises(ValueError, match="quick_gelu"):
        convert_hpsv2(tmp_path / "other.pt", quick, tmp_path / "out")
