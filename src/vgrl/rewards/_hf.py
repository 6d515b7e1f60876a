"""Shared pieces of the learned-reward wrappers (``clip_score``, ``pickscore``, ``hpsv2``, ``image_reward``,
``aesthetic``): local-path checks with clear errors, quiet offline loading of transformers models, image
preprocessing in torch (differentiable) and a CLIP text/image encoder.

Preprocessing re-expresses the CLIP image processors in torch so that a gradient reaches the pixels:

* ``"crop"`` (``CLIPImageProcessor``, OpenAI CLIP, BLIP): resize the shortest side to ``size`` (bicubic,
  antialiased, the long side ``int(size * long / short)``), clamp to [0, 1], centre-crop ``crop`` x ``crop``;
* ``"pad"`` (OpenCLIP's ``ResizeMaxSize``, used by HPSv2's scorer): resize the longest side to ``size``
  (``round``), pad with black to ``size`` x ``size``, centred;

then ``(x - mean) / std`` per channel. Reference processors work on 8-bit PIL images, so values differ by the
uint8 rounding and PIL's bicubic kernel: after normalisation, at most 0.04 on smooth images (the tests assert
< 0.05) and up to 0.18 on per-pixel noise, mean about 0.005 (docs/rewards/learned.md).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Literal

from vgrl._lazy import lazy, no_grad

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")
F = lazy("torch.nn.functional")
nn = lazy("torch.nn")

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHTS = "model.safetensors"
ResizeMode = Literal["crop", "pad"]


# ------------------------------------------------------------------------------------------- paths
def require_files(who: str, path: str | Path, files: dict[str, str], hint: str = "") -> Path:
    """``path`` as a :class:`Path` if it is a directory holding every file of ``files`` (name -> what it
    is); otherwise a ``FileNotFoundError`` naming the directory and each missing file."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"reward {who!r}: {path} is not a directory (expected one holding "
                                f"{', '.join(files)}){hint}")
    missing = [f"{name} ({what})" for name, what in files.items() if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"reward {who!r}: {path} lacks {'; '.join(missing)}{hint}")
    return path


def require_safetensors(who: str, path: Path, hint: str = "") -> None:
    """Raise unless ``path`` holds ``model.safetensors`` (or its sharded index); ``.bin`` pickles are refused."""
    if (path / WEIGHTS).is_file() or (path / f"{WEIGHTS}.index.json").is_file():
        return
    pickles = sorted(p.name for p in path.glob("*.bin"))
    extra = f"; found {', '.join(pickles)}, a pickle vgrl does not load: convert it to safetensors" if pickles else ""
    raise FileNotFoundError(f"reward {who!r}: {path} lacks {WEIGHTS}{extra}{hint}")


def read_config(who: str, path: Path, model_types: tuple[str, ...]) -> dict[str, Any]:
    """``path/config.json`` as a dict, checked to be one of ``model_types``."""
    file = path / "config.json"
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"reward {who!r}: {file} is not valid JSON ({e})") from None
    if cfg.get("model_type") not in model_types:
        raise ValueError(f"reward {who!r}: {file} has model_type {cfg.get('model_type')!r}, expected "
                         f"{' or '.join(map(repr, model_types))}; is this the right directory?")
    return cfg


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports (unused text-tower keys etc.) while loading, then restore."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def load_frozen(cls: Any, path: Path, **kwargs: Any) -> nn.Module:
    """``cls.from_pretrained(path)`` offline, safetensors only, float32, eval mode, no grad on parameters."""
    with quiet_transformers():
        model = cls.from_pretrained(path, local_files_only=True, use_safetensors=True, **kwargs)
    return model.float().eval().requires_grad_(False)


# ------------------------------------------------------------------------------------ preprocessing
class ImageSpec:
    """How a model wants its pixels: ``size`` (resize), ``crop`` (output side), ``mean``/``std``, ``mode``."""

    def __init__(self, size: int, crop: int, mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
                 std: tuple[float, ...] = OPENAI_CLIP_STD, mode: ResizeMode = "crop") -> None:
        self.size, self.crop, self.mean, self.std, self.mode = size, crop, tuple(mean), tuple(std), mode

    @classmethod
    def from_dir(cls, path: Path, image_size: int, mode: ResizeMode = "crop") -> "ImageSpec":
        """From ``path/preprocessor_config.json`` if present (``size``, ``crop_size``, ``image_mean``,
        ``image_std``), else ``image_size`` and OpenAI CLIP's statistics."""
        file = path / "preprocessor_config.json"
        if not file.is_file():
            return cls(image_size, image_size, mode=mode)
        p = json.loads(file.read_text())
        size, crop = p.get("size", image_size), p.get("crop_size", image_size)
        size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
        crop = crop.get("height") if isinstance(crop, dict) else crop
        return cls(int(size), int(crop if p.get("do_center_crop", True) else size),
                   p.get("image_mean", OPENAI_CLIP_MEAN), p.get("image_std", OPENAI_CLIP_STD), mode)

    def __call__(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 3, crop, crop)`` normalised, differentiable."""
        return normalise(resize(images.float(), self.size, self.crop, self.mode), self.mean, self.std)


def resize(x: Tensor, size: int, crop: int, mode: ResizeMode = "crop") -> Tensor:
    """Resize ``(B, C, H, W)`` as the CLIP processors do (see the module docstring); differentiable."""
    h, w = x.shape[-2:]
    if mode == "crop":
        short, long = min(h, w), max(h, w)
        new_long = int(size * long / short)
        oh, ow = (size, new_long) if h <= w else (new_long, size)
    else:
        scale = size / max(h, w)
        oh, ow = round(h * scale), round(w * scale)
    if (oh, ow) != (h, w):
        x = F.interpolate(x, size=(oh, ow), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    if mode == "crop":
        top, left = max(oh - crop, 0) // 2, max(ow - crop, 0) // 2
        return x[..., top:top + crop, left:left + crop]
    ph, pw = size - oh, size - ow
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)


def normalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def per_unique(prompts: list[str], encode: Callable[[list[str]], Tensor]) -> Tensor:
    """``encode`` each distinct prompt once (groups repeat prompts) and gather back to ``len(prompts)`` rows."""
    unique = list(dict.fromkeys(prompts))
    index = torch.tensor([unique.index(p) for p in prompts])
    out = encode(unique)
    return out[index.to(out.device)]


# ------------------------------------------------------------------------------------------- CLIP
class ClipEncoder:
    """A frozen transformers ``CLIPModel`` + ``CLIPTokenizer`` from local directories.

    ``cosine(images, prompts)`` is ``cos(E_img(x), E_txt(p))`` with ``E_img = visual_projection(pooled
    vision output)`` and ``E_txt = text_projection(pooled text output)``, the embeddings of
    ``CLIPModel.get_image_features`` / ``get_text_features``; text embeddings carry no gradient.
    """

    def __init__(self, who: str, path: str, tokenizer: str | None, mode: ResizeMode, hint: str = "") -> None:
        from transformers import CLIPModel, CLIPTokenizer

        root = require_files(who, path, {"config.json": "the CLIPModel config"}, hint)
        read_config(who, root, ("clip",))
        require_safetensors(who, root, hint)
        tok_dir = Path(tokenizer) if tokenizer else root
        if not ((tok_dir / "tokenizer.json").is_file() or (tok_dir / "vocab.json").is_file()):
            raise FileNotFoundError(f"reward {who!r}: no CLIP tokenizer in {tok_dir} (tokenizer.json, or vocab.json "
                                    f"+ merges.txt); copy the tokenizer files there or set option 'tokenizer'{hint}")
        self.model = load_frozen(CLIPModel, root)
        with quiet_transformers():
            self.tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.spec = ImageSpec.from_dir(tok_dir if (tok_dir / "preprocessor_config.json").is_file() else root,
                                       self.model.config.vision_config.image_size, mode)

    def image_embeds(self, images: Tensor) -> Tensor:
        """``(B, D)`` projected (unnormalised) image embeddings; differentiable in ``images``."""
        model = self.model.to(images.device)
        pooled = model.vision_model(pixel_values=self.spec(images)).pooler_output
        return model.visual_projection(pooled)

    @no_grad
    def text_embeds(self, prompts: list[str], device: torch.device) -> Tensor:
        """``(B, D)`` projected (unnormalised) text embeddings, padded/truncated to the model's length."""
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(device)
        model = self.model.to(device)
        pooled = model.text_model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).pooler_output
        return model.text_projection(pooled)

    def cosine(self, images: Tensor, prompts: list[str]) -> Tensor:
        """``(B,)`` float32 cosine similarity of each image with its prompt."""
        img = F.normalize(self.image_embeds(images), dim=-1)
        txt = F.normalize(per_unique(prompts, lambda p: self.text_embeds(p, images.device)), dim=-1)
        return (img * txt).sum(-1).float()


# -------------------------------------------------------------------------------------- MLP head
def write_tiny_clip(root: Path, seed: int = 0) -> Path:
    """A tiny random-init ``CLIPModel`` (30 px, width 32, one layer each side) and a letter-level
    ``CLIPTokenizer`` saved to ``root``: the directory the CLIP rewards' ``example`` load (no download)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)} | {c + "</w>": 26 + i for i, c in enumerate(letters)}
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=16, bos_token_id=62, eos_token_id=63, pad_token_id=63)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, image_size=30,
                  patch_size=6)
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(seed)
        CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(root)
        CLIPTokenizer(vocab=vocab | {"<|startoftext|>": 62, "<|endoftext|>": 63}, merges=[]).save_pretrained(root)
    return Path(root)


@functools.cache
def preference_mlp() -> type:
    """:class:`PreferenceMLP`, defined at its first use: it subclasses ``torch.nn.Module``, and importing this module
    (``vgrl validate`` reads the reward's options) must not import torch."""

    class PreferenceMLP(nn.Module):
        """The 5-layer linear MLP of the LAION aesthetic predictor v2 and of ImageReward (no activations,
        dropout between layers; state-dict keys ``layers.{0,2,4,6,7}``): ``d -> 1024 -> 128 -> 64 -> 16 -> 1``."""

        def __init__(self, input_size: int) -> None:
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128),
                                        nn.Dropout(0.2), nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16),
                                        nn.Linear(16, 1))

        def forward(self, x: Tensor) -> Tensor:
            return self.layers(x).squeeze(-1)
    return PreferenceMLP


def load_state(who: str, file: str | Path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or, with ``torch.load(weights_only=True)``, from ``.pt``/``.pth``."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"reward {who!r}: weights file {file} does not exist")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(file)
    if file.suffix not in (".pt", ".pth"):
        raise ValueError(f"reward {who!r}: {file} must be .safetensors, .pt or .pth")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # an unsafe pickle or a corrupt file
        raise ValueError(f"reward {who!r}: cannot read {file} with torch.load(weights_only=True): {e}") from None
    if not isinstance(state, dict):
        raise ValueError(f"reward {who!r}: {file} holds a {type(state).__name__}, expected a state dict")
    return state


def load_mlp(who: str, file: str | Path, input_size: int) -> PreferenceMLP:
    """A frozen :class:`PreferenceMLP` of ``input_size`` from ``file``; errors name the file and the keys."""
    mlp = preference_mlp()(input_size)
    state = {k.removeprefix("mlp."): v.float() for k, v in load_state(who, file).items()}
    try:
        mlp.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"reward {who!r}: {file} does not hold a {input_size}-input preference MLP "
                         f"(keys layers.{{0,2,4,6,7}}.weight/bias): {e}") from None
    return mlp.eval().requires_grad_(False)


def __getattr__(name: str) -> Any:
    """``PreferenceMLP`` of this module (PEP 562), defined at its first use by :func:`preference_mlp`."""
    if name == "PreferenceMLP":
        return preference_mlp()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
