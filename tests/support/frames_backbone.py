"""Test-only text-to-video backbone: ``FramesBackbone`` (layout ``video``, ``(B, F, 3, H, W)``), a tiny real
diffusers ``WanTransformer3DModel`` in pixel space (:mod:`tests.support._wan`). Named in a config as
``backbone.name: tests.support.frames_backbone:FramesBackbone``."""

from __future__ import annotations

from tests.support._wan import WanPixelBackbone


class FramesBackbone(WanPixelBackbone):
    """``F`` frames in time order (``backbone.frames``, default 4) of ``resolution``-sided RGB pixels."""

    name = "frames"
    layout = "video"
    axis = "frames"

    @classmethod
    def tiny(cls, *, frames: int = 4, **kwargs) -> FramesBackbone:
        return super().tiny(count=frames, **kwargs)


COMPONENT = FramesBackbone
