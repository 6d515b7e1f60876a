"""Backbones: one model family per file, each built from diffusers classes."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from vgrl.backbones.base import Backbone
    from vgrl.config import BackboneConfig


def quiet_loading() -> None:
    """Silence diffusers' and transformers' per-component loading bars (vgrl shows its own progress)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def build(cfg: BackboneConfig) -> Backbone:
    """The backbone a config names: tiny random-init, or loaded from a local diffusers directory.

    ``backbone.frames`` / ``backbone.views``, when set, go to the family as the keyword of that name (a video family's
    ``tiny(frames=...)`` / ``from_pretrained(path, frames=...)``); a family that takes no such keyword is refused."""
    import inspect

    from vgrl import registry

    quiet_loading()
    cls = registry.resolve("backbones", cfg.name)
    sized = {axis: n for axis in ("frames", "views") if (n := getattr(cfg, axis)) is not None}
    make = cls.tiny if cfg.tiny else cls.from_pretrained
    takes = inspect.signature(make).parameters
    for axis in sized:
        if axis not in takes:
            raise ValueError(f"backbone.{axis}: backbone {cfg.name!r} ({cls.layout} samples) takes no {axis}; "
                             "valid: null")
    if cfg.tiny:
        kwargs = {"resolution": cfg.resolution, "dtype": cfg.dtype, **sized}
        if cfg.prediction is not None:
            kwargs["prediction"] = cfg.prediction
        return cls.tiny(**kwargs)
    backbone = cls.from_pretrained(cfg.path, dtype=cfg.dtype, resolution=cfg.resolution, **sized)
    if cfg.prediction is not None and backbone.prediction != cfg.prediction:
        raise ValueError(f"backbone.prediction: the model at {cfg.path} predicts {backbone.prediction!r}, "
                         f"config says {cfg.prediction!r}")
    return backbone


def pipeline_families() -> dict[str, str]:
    """diffusers pipeline class name -> built-in backbone family, from each family's ``pipeline_class``."""
    from vgrl import registry

    classes = {name: registry.resolve("backbones", name) for name in registry.available("backbones")}
    return {cls.pipeline_class: name for name, cls in classes.items() if cls.pipeline_class is not None}


def load(path: str, *, dtype: str = "float32") -> Backbone:
    """Load a local diffusers pipeline directory with the backbone family its ``model_index.json`` names."""
    import json
    from pathlib import Path

    from vgrl import registry

    quiet_loading()
    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{path} is not a diffusers pipeline directory (no model_index.json)")
    cls_name = json.loads(index.read_text()).get("_class_name")
    families = pipeline_families()
    if cls_name not in families:
        raise ValueError(f"{index}: pipeline class {cls_name!r} has no vgrl backbone; "
                         f"supported: {', '.join(families)}")
    return registry.resolve("backbones", families[cls_name]).from_pretrained(path, dtype=dtype)
