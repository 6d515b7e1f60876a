"""Sample layouts: the shape a modality's decoded samples take, declared by backbones, rewards and worlds.

Every decoded batch is pixels in [0, 1] with the batch first and ``(C, H, W)`` last::

    image       (B, C, H, W)
    video       (B, F, C, H, W)     F frames, in time order
    multiview   (B, V, C, H, W)     V views, in the world's / model's view order

A component declares the layouts it produces (a backbone: one) or accepts (a reward, a world: a tuple);
:func:`check_agree` refuses a run whose parts disagree, in one line naming both sides. Edges that do not
care what the leading axes mean (grids, datasets, the remote protocol, dense credit) see any layout as
``(B, N, C, H, W)`` through :func:`as_frames`: ``N = 1`` for an image.

Torch-free at import: the config layer (``vgrl validate``) reads :data:`LAYOUTS` too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import Tensor

Layout = Literal["image", "video", "multiview"]

LAYOUTS: dict[str, tuple[str, ...]] = {
    "image": ("B", "C", "H", "W"),
    "video": ("B", "F", "C", "H", "W"),
    "multiview": ("B", "V", "C", "H", "W"),
}
AXIS_NAMES = {"F": "frames", "V": "views"}


class LayoutError(ValueError):
    """A tensor, or a component, does not fit the layout it should."""


def check_name(layout: str, who: str = "layout") -> None:
    """Raise unless ``layout`` is one of :data:`LAYOUTS`."""
    if layout not in LAYOUTS:
        raise LayoutError(f"{who}: unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")


def describe(layout: str) -> str:
    """``"video (B, F, C, H, W)"``."""
    check_name(layout)
    return f"{layout} ({', '.join(LAYOUTS[layout])})"


def check_samples(samples: Tensor, layout: str, who: str = "samples", channels: int | None = 3) -> None:
    """Raise :class:`LayoutError` unless ``samples`` is a batch in ``layout`` (with ``channels`` channels, when given)."""
    dims = LAYOUTS.get(layout)
    if dims is None:
        check_name(layout, who)
    if samples.ndim != len(dims) or (channels is not None and samples.shape[-3] != channels):
        want = ", ".join(str(channels) if d == "C" and channels is not None else d for d in dims)
        raise LayoutError(f"{who} must be a {layout} batch ({want}), got shape {tuple(samples.shape)}")


def as_frames(samples: Tensor, layout: str) -> Tensor:
    """``(B, N, C, H, W)`` view of a batch: ``N = 1`` for an image, the frames or views otherwise."""
    check_samples(samples, layout, channels=None)
    return samples.unsqueeze(1) if layout == "image" else samples


def check_agree(producer: str, layout: str, consumers: dict[str, tuple[str, ...]]) -> None:
    """Raise in one line unless every consumer (``{"reward 'ocr'": ("image",), ...}``) accepts ``layout``,
    the layout of ``producer`` (e.g. ``"backbone 'flow'"``)."""
    check_name(layout, producer)
    for who, accepted in consumers.items():
        if layout not in accepted:
            raise LayoutError(f"{producer} produces {describe(layout)} samples but {who} accepts "
                              f"{' or '.join(accepted)} only")
