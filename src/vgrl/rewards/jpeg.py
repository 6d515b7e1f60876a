"""JPEG (in)compressibility, DDPO's reward-model-free task (Black et al., arXiv 2305.13301).

Each image is quantised to 8 bits, ``u = round(255 x)`` clipped to [0, 255], and encoded with PIL's
JPEG encoder at ``quality``; with ``|J(u)|`` the file size in bytes and ``size_kb = |J(u)| / 1000``:

* ``mode="compressibility"``:   ``r = -size_kb`` (smaller files, i.e. smoother images, score higher);
* ``mode="incompressibility"``: ``r = +size_kb`` (busier, high-frequency images score higher).

The encoder is deterministic, so the reward is a pure function of the 8-bit image; it has no
gradient (quantisation and entropy coding are piecewise constant). A video or a view set scores the
mean ``size_kb`` of its frames (views).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from PIL import Image
from pydantic import Field

from vgrl._lazy import lazy
from vgrl.rewards.base import Reward, RewardOptions
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class JpegOptions(RewardOptions):
    quality: int = Field(95, ge=1, le=100, description="PIL JPEG quality (DDPO uses 95)")
    mode: Literal["compressibility", "incompressibility"] = Field(
        "compressibility", description="'compressibility': r = -size_kb; 'incompressibility': r = +size_kb")


def jpeg_size_kb(images: Tensor, quality: int) -> list[float]:
    """JPEG file size in kB (1 kB = 1000 bytes) of each ``(B, 3, H, W)`` image in [0, 1]."""
    u8 = (images.detach().to("cpu", torch.float32) * 255.0).round().clamp(0, 255).to(torch.uint8)
    arrays = u8.permute(0, 2, 3, 1).contiguous().numpy()
    sizes = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return sizes


class JpegCompressibility(Reward):
    """``-size_kb`` (or ``+size_kb``) of each image's JPEG encoding; ``details["size_kb"]`` ``(B,)``."""

    name = "jpeg"
    differentiable = False
    granularity = "pointwise"
    layouts = ("image", "video", "multiview")
    Options: ClassVar[type[RewardOptions]] = JpegOptions

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        frames = images.flatten(0, -4)  # (B * N, 3, H, W): every frame (view) of every sample
        size_kb = torch.tensor(jpeg_size_kb(frames, self.options.quality), dtype=torch.float32)
        size_kb = size_kb.view(images.shape[0], -1).mean(dim=1)
        sign = -1.0 if self.options.mode == "compressibility" else 1.0
        return RewardOutput(scores=(sign * size_kb).to(images.device), details={"size_kb": size_kb})


COMPONENT = JpegCompressibility
