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
    assert {name: registry.resolve("backbones", name).layout for name in keys} == config.BACKBONE_LAYOUTS


def test_family_lists_come_from_the_registry():
    """`vgrl pretrain --family` offers every backbone, and every backbone builds a pretraining model."""
    from vgrl.backbones.base import Backbone
    from vgrl.cli import build_parser

    keys = registry.available("backbones")
    pretrain = build_parser()._subparsers._group_actions[0].choices["pretrain"]
    family = next(a for a in pretrain._actions if a.dest == "family")
    assert list(family.choices) == keys
    for name in keys:
        cls = registry.resolve("backbones", name)
        assert cls.pretrain_model.__func__ is not Backbone.pretrain_model.__func__, name
        assert cls.tiny_variants(), name
