"""Test-only multi-view backbone: ``ViewsBackbone`` (layout ``multiview``, ``(B, V, 3, H, W)``), the tiny real
diffusers ``WanTransformer3DModel`` of :mod:`tests.support._wan` with the views as its frame axis (its 3-D
attention lets every view see the others). Named as ``tests.support.views_backbone:ViewsBackbone``."""

from __future__ import annotations

from tests.support._wan import WanPixelBackbone


class ViewsBackbone(WanPixelBackbone):
    """``V`` views (``backbone.views``, default 2) of one object, ``resolution``-sided RGB pixels each."""

    name = "views"
    layout = "multiview"
    axis = "views"

    @classmethod
    def tiny(cls, *, views: int = 2, **kwargs) -> ViewsBackbone:
        return super().tiny(count=views, **kwargs)


COMPONENT = ViewsBackbone
