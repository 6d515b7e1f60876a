"""Tiny, offline, random-init text and autoencoder components for tests and demos.

The tokenizer is a real ``CLIPTokenizer`` over a character-level byte vocabulary written to a
temporary folder (no merges), so pipelines save and load it like any other; the models are real
transformers / diffusers classes at tiny sizes.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

MAX_TOKENS = 48


def char_tokenizer(max_length: int = MAX_TOKENS) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (plus end-of-word forms)."""
    symbols = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return _clip_tokenizer(vocab, [], max_length)


def clip_config(tokenizer: CLIPTokenizer, hidden: int = 32, projection: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, projection_dim=projection,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)


def clip_text(tokenizer: CLIPTokenizer, seed: int, *, projection: bool, hidden: int = 32) -> torch.nn.Module:
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(clip_config(tokenizer, hidden=hidden, projection=hidden)).eval()


def autoencoder(seed: int, latent_channels: int = 4, **extra) -> AutoencoderKL:
    """A 2-level AutoencoderKL: downsamples by 2."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, sample_size=32, **extra).eval()


def word_tokenizer(words: list[str], max_length: int = MAX_TOKENS) -> CLIPTokenizer:
    """A CLIP tokenizer in which each of ``words`` is one token (other text falls back to characters).

    BPE merges build every word left to right, so ``"red"`` -> ``["red</w>"]``; the byte symbols stay
    in the vocabulary, so unseen words still tokenize (as characters).
    """
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    for word in sorted({w.lower() for w in words}):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        prefix = parts[0]
        for part in parts[1:]:
            merge = f"{prefix} {part}"
            prefix = prefix + part
            if merge not in merges:
                merges.append(merge)
                tokens.append(prefix)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return _clip_tokenizer(vocab, merges, max_length)


def _clip_tokenizer(vocab: dict[str, int], merges: list[str], max_length: int) -> CLIPTokenizer:
    """A CLIPTokenizer from an in-memory vocabulary and merge list (files live only while loading)."""
    with tempfile.TemporaryDirectory(prefix="vgrl-tok-") as tmp:
        folder = Path(tmp)
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
