"""The torch-free tables `vgrl validate` reads agree with what the component classes declare."""

from __future__ import annotations

from vgrl import config, registry
from vgrl.kernels import options


def test_kernel_tables_match_classes():
    keys = registry.available("kernels")
    assert set(config.KERNEL_PREDICTIONS) == set(keys) == set(options.BUILTIN)
    for name in keys:
        cls = registry.resolve("kernels", name)
        assert tuple(cls.predictions) == tuple(config.KERNEL_PREDICTIONS[name]), name
        assert cls.Options is options.BUILTIN[name], name


def test_backbone_table_matches_classes():
    keys = registry.available("backbones")
    assert set(config.BACKBONE_PREDICTIONS) == set(keys)
    for name in keys:
        assert tuple(registry.resolve("backbones", name).predictions) == config.BACKBONE_PREDICTIONS[name], name
