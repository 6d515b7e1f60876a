"""Every registered backbone's tiny variants, for the conformance suite and the ``tiny_backbones`` fixture."""

from __future__ import annotations

from vgrl import registry


def backbone_variants() -> dict[str, tuple[str, dict]]:
    """Test key -> (registry name, ``tiny`` kwargs) over every registered backbone and each of its
    ``tiny_variants()``: the key is the name for the ``default`` variant, else ``name-variant``."""
    out = {}
    for name in registry.available("backbones"):
        for variant, kwargs in registry.resolve("backbones", name).tiny_variants().items():
            out[name if variant == "default" else f"{name}-{variant}"] = (name, kwargs)
    return out
