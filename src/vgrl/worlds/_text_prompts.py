"""A small text-rendering prompt set for the OCR reward, and ground-truth renders of its words.

Flow-GRPO's OCR task (arXiv 2505.05470) trains on prompts that ask for a visible text, e.g.
``'a sign that says "HELLO"'``, and rewards the generated image by how well an OCR engine reads the
quoted text back (:mod:`vgrl.rewards.ocr`). This module supplies such prompts, each with metadata
``{"text": word}`` (the OCR reward's target), and renders a word as a clean image with PIL's bundled
default font (``ImageFont.load_default(size=...)``, Pillow >= 10.1; no system font, nothing downloaded),
so tests and benchmarks have images whose correct reading is known.

Splits (disjoint by word, deterministic): ``heldout`` holds every word of :data:`HELDOUT_WORDS`, ``train``
every other word of :data:`WORDS`; each word appears under every template of :data:`TEMPLATES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from vgrl._lazy import lazy

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")

WORDS = ("HELLO", "WORLD", "OPEN", "STOP", "EXIT", "CAFE", "SALE", "PARK", "BOOK", "MILK", "RAIN",
         "SNOW", "GOLD", "JAZZ", "TAXI", "HOTEL", "PIZZA", "MUSIC", "RIVER", "CLOUD", "LIGHT", "QUIET",
         "HAPPY", "SMILE")
HELDOUT_WORDS = frozenset({"JAZZ", "PIZZA", "QUIET", "SNOW"})
TEMPLATES = ('a sign that says "{}"', 'a poster with the word "{}"',
             'a storefront with "{}" written above the door', 'the word "{}" written on a blackboard')
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class TextPrompt:
    """A prompt asking for a visible word; ``meta = {"text": word}`` is the OCR reward's target."""

    prompt: str
    meta: dict = field(hash=False)


def text_prompts(split: str = "train") -> list[TextPrompt]:
    """Every (template, word) prompt of ``split`` ("train" or "heldout"), words in :data:`WORDS` order."""
    if split not in SPLITS:
        raise ValueError(f"unknown text-prompt split {split!r}; valid: {', '.join(SPLITS)}")
    words = [w for w in WORDS if (w in HELDOUT_WORDS) == (split == "heldout")]
    return [TextPrompt(t.format(w), {"text": w}) for w in words for t in TEMPLATES]


def _fit_font(draw: ImageDraw.ImageDraw, text: str, box: int) -> ImageFont.FreeTypeFont:
    """The largest bundled-font size (binary search) whose rendering of ``text`` fits a ``box`` square."""
    lo, hi = 1, 4 * box
    while lo < hi:
        mid = (lo + hi + 1) // 2
        left, top, right, bottom = draw.textbbox((0, 0), text, font=ImageFont.load_default(size=mid))
        if right - left <= box and bottom - top <= box:
            lo = mid
        else:
            hi = mid - 1
    return ImageFont.load_default(size=lo)


def render_text(texts: Sequence[str], size: int = 128, margin: float = 0.1,
                foreground: tuple[float, float, float] = (0.0, 0.0, 0.0),
                background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Tensor:
    """Render each text centred, as large as fits within ``margin`` of the border; ``(B, 3, size, size)`` in [0, 1].

    Deterministic (no randomness): the same text gives the same pixels. Colours are RGB in [0, 1].
    """
    if size < 16:
        raise ValueError(f"render_text: size must be >= 16 pixels, got {size}")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"render_text: margin must be in [0, 0.5), got {margin}")
    box = max(1, int(round(size * (1.0 - 2.0 * margin))))
    fg = tuple(int(round(255 * c)) for c in foreground)
    bg = tuple(int(round(255 * c)) for c in background)
    out = []
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"render_text: texts[{i}] is blank; give a non-empty word")
        img = Image.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(img)
        font = _fit_font(draw, text, box)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        xy = ((size - (right - left)) / 2 - left, (size - (bottom - top)) / 2 - top)
        draw.text(xy, text, font=font, fill=fg)
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)
