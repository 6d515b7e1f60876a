"""OCR reward: how well an OCR engine reads the prompt's target text in the image (Flow-GRPO's OCR task).

Flow-GRPO (Liu et al., arXiv 2505.05470) trains visual text rendering with a reward from PaddleOCR.
Here the engine is RapidOCR (``rapidocr-onnxruntime``): the same PP-OCRv4 detection and recognition
networks exported to ONNX and shipped inside the wheel, run by onnxruntime on the CPU; nothing is
downloaded. With ``t`` the target text and ``o`` the recognised text (the engine's text lines in
reading order, top to bottom then left to right, concatenated), both normalised by ``norm`` (all
whitespace removed and lower-cased, as Flow-GRPO; see the options):

    d = 0                       if substring_match and norm(t) is a substring of norm(o)
    d = lev(norm(o), norm(t))   otherwise (Levenshtein edit distance: insertions, deletions, substitutions)
    r = 1 - min(d, |norm(t)|) / |norm(t)|          in [0, 1]

So a perfect reading (or, with ``substring_match``, a reading that contains the target among other
text) scores 1, an image where nothing is read scores 0, and the cap ``min(d, |t|)`` stops a long
spurious reading from scoring below 0 (Flow-GRPO's rule).

**The target** of sample ``i`` is ``metadata[i]["text"]`` when ``metadata[i]`` is a mapping with a
``"text"`` key (the prompts of :func:`vgrl.worlds._text_prompts.text_prompts` carry one); otherwise the
first double-quoted span of the prompt (``'a sign that says "HELLO"'`` -> ``HELLO``; straight ``"..."``
or curly quotes). A prompt with neither raises :class:`RewardInputError` naming the sample.

Unlike Flow-GRPO, an OCR engine error is not turned into a reward of 0: it propagates. The reward is
not differentiable (detection thresholds, argmax decoding and the edit distance are piecewise constant).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from vgrl._lazy import lazy
from vgrl.rewards.base import Reward, RewardInputError, RewardOptions
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")

_QUOTED = re.compile(r'"([^"]+)"|\u201c([^\u201d]+)\u201d')


class OcrOptions(RewardOptions):
    case_sensitive: bool = Field(False, description="compare case; Flow-GRPO lower-cases both texts (False)")
    ignore_spaces: bool = Field(True, description="remove all whitespace from both texts before comparing "
                                                  "(Flow-GRPO removes spaces)")
    substring_match: bool = Field(True, description="distance 0 when the target occurs inside the reading "
                                                    "(Flow-GRPO); False: always the plain edit distance")
    text_score: float = Field(0.5, ge=0.0, le=1.0, description="RapidOCR drops text lines recognised with "
                                                               "confidence below this")
    use_cls: bool = Field(False, description="run RapidOCR's 0/180-degree text-orientation classifier "
                                             "(Flow-GRPO: off)")
    threads: int | None = Field(None, ge=1, description="onnxruntime intra-op threads; None = onnxruntime's "
                                                        "default (all cores)")


def levenshtein(a: str, b: str) -> int:
    """Edit distance between ``a`` and ``b`` (unit-cost insertions, deletions and substitutions)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def target_text(prompt: str, meta: Any, index: int = 0) -> str:
    """Sample ``index``'s target: ``meta["text"]`` if ``meta`` is a mapping with one, else the prompt's quoted text."""
    if isinstance(meta, Mapping) and "text" in meta:
        text = meta["text"]
        if not isinstance(text, str) or not text.strip():
            raise RewardInputError(f'reward \'ocr\': metadata[{index}]["text"] must be a non-empty string, '
                                   f"got {text!r}")
        return text
    match = _QUOTED.search(prompt)
    if match is None:
        raise RewardInputError(
            f"reward 'ocr': sample {index} has no target text: metadata[{index}] has no \"text\" key and "
            f"prompt {prompt!r} has no double-quoted text (write e.g. 'a sign that says \"HELLO\"')")
    return match.group(1) or match.group(2)


@functools.lru_cache(maxsize=4)
def _engine(text_score: float, threads: int | None):
    """A RapidOCR engine with its bundled ONNX models (built once per setting)."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as e:
        raise ImportError(f"reward 'ocr' needs rapidocr-onnxruntime ({e}); "
                          "pip install 'vgrl[offline-rewards]'") from e

    kwargs: dict[str, Any] = {"text_score": text_score}
    if threads is not None:
        kwargs.update(intra_op_num_threads=threads, inter_op_num_threads=1)
    return RapidOCR(**kwargs)


class OcrReward(Reward):
    """``1 - min(d, |t|) / |t|`` for the edit distance ``d`` between the OCR reading and the target ``t``.

    ``details``: ``recognised`` (list of ``B`` strings, the raw reading), ``target`` (``B`` strings) and
    ``edit_distance`` ``(B,)`` (the capped ``min(d, |t|)`` on normalised texts).
    """

    name = "ocr"
    differentiable = False
    granularity = "pointwise"
    Options: ClassVar[type[RewardOptions]] = OcrOptions

    def _norm(self, text: str) -> str:
        if self.options.ignore_spaces:
            text = "".join(text.split())
        return text if self.options.case_sensitive else text.lower()

    def read(self, images: Tensor) -> list[str]:
        """The recognised text of each ``(B, 3, H, W)`` image in [0, 1] (``""`` where nothing is read)."""
        engine = _engine(self.options.text_score, self.options.threads)
        u8 = (images.detach().to("cpu", torch.float32) * 255.0).round().clamp(0, 255).to(torch.uint8)
        sep = "" if self.options.ignore_spaces else " "
        texts = []
        for rgb in u8.permute(0, 2, 3, 1).numpy():
            bgr = np.ascontiguousarray(rgb[..., ::-1])  # RapidOCR takes arrays in OpenCV's BGR order
            lines, _ = engine(bgr, use_cls=self.options.use_cls)
            texts.append(sep.join(line[1] for line in lines) if lines else "")
        return texts

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        targets = [target_text(p, m, i) for i, (p, m) in enumerate(zip(prompts, metadata))]
        for i, t in enumerate(targets):
            if not self._norm(t):
                raise RewardInputError(f"reward 'ocr': sample {i}'s target text {t!r} is empty after "
                                       "normalisation (ignore_spaces removes whitespace)")
        recognised = self.read(images)
        dists, scores = [], []
        for o, t in zip(recognised, targets):
            o, t = self._norm(o), self._norm(t)
            d = 0 if self.options.substring_match and t in o else levenshtein(o, t)
            d = min(d, len(t))
            dists.append(float(d))
            scores.append(1.0 - d / len(t))
        return RewardOutput(
            scores=torch.tensor(scores, dtype=torch.float32, device=images.device),
            details={"recognised": recognised, "target": targets,
                     "edit_distance": torch.tensor(dists, dtype=torch.float32)})


COMPONENT = OcrReward
