"""The World contract (vgrl.worlds.base), the generic world_checker reward, validation of world fields and the
build-time modality check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vgrl import registry, rewards
from vgrl.config import ConfigError, load_config
from vgrl.layouts import LAYOUTS
from vgrl.training import TrainingError
from vgrl.worlds.base import CheckResult, SummaryField, World
from vgrl.worlds.shapes import CATEGORIES, COLOURS, ObjectSpec, PromptMeta, ShapesWorld

ROOT = Path(__file__).resolve().parents[2]
PARTS = "tests.unit.world_testparts"
TINY = {"backbone": {"name": "flow", "tiny": True}, "data": {"world": "shapes"}, "batch_size": 4, "group_size": 2}


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(32)


def _metas(world: ShapesWorld, per_category: int) -> list[PromptMeta]:
    out = []
    for c in CATEGORIES:
        pool = [p.meta for split in ("train", "heldout") for p in world.prompts(split, c)]
        out += pool[:: max(1, len(pool) // per_category)][:per_category]
    return out


def _recoloured(meta: PromptMeta) -> PromptMeta:
    """The same prompt with every named colour replaced by the next colour of the palette."""
    shift = {c: COLOURS[(i + 1) % len(COLOURS)] for i, c in enumerate(COLOURS)}
    return PromptMeta(meta.category, tuple(ObjectSpec(o.shape, o.colour and shift[o.colour], o.count)
                                           for o in meta.objects), meta.relation)


# ---------------------------------------------------------------------- the contract on shapes
def test_every_registered_world_declares_the_contract():
    for name in registry.available("worlds"):
        cls = registry.resolve("worlds", name)
        assert issubclass(cls, World) and cls.name == name and cls.layout in LAYOUTS
        assert cls.splits and cls.categories and isinstance(cls.Meta, type)
        assert all(isinstance(f, SummaryField) and f.label for f in cls.fields.values())
        for split in cls.splits:
            assert set(cls.categories_of(split)) <= set(cls.categories)


def test_registry_finds_worlds_by_name_and_by_module_path():
    assert "shapes" in registry.available("worlds") and "base" not in registry.available("worlds")
    assert registry.resolve("worlds", "shapes") is ShapesWorld
    assert registry.resolve("worlds", "vgrl.worlds.shapes:ShapesWorld") is ShapesWorld
    frames = registry.resolve("worlds", f"{PARTS}:FramesWorld")
    assert issubclass(frames, World) and frames.layout == "video" and frames.flags() == ("blank",)


def test_shapes_world_class_is_readable_without_torch():
    code = ("import sys; from vgrl import registry; w = registry.resolve('worlds', 'shapes'); "
            "assert w.splits and w.categories and w.layout == 'image' and w.fields and w.categories_of('heldout'); "
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_checker_passes_its_own_ground_truth_and_fails_mismatched_prompts(world):
    metas = _metas(world, 12)
    images = world.render(metas, seed=list(range(len(metas))))
    res = world.check(images, metas)
    assert isinstance(res, CheckResult) and len(res) == len(metas)
    assert res.passed.all() and (res.score == 1).all()
    assert set(res.values) == set(ShapesWorld.fields)
    assert not res.values["extra_objects"].any() and res.values["strict_accuracy"].all()
    coloured = [m for m in metas if any(o.colour for o in m.objects)]
    mis = world.check(world.render(coloured, seed=1), [_recoloured(m) for m in coloured])
    assert not mis.passed.any() and not mis.values["strict_accuracy"].any()


def test_check_dense_is_a_credit_map_of_ones_on_ground_truth(world):
    metas = _metas(world, 2)
    res = world.check(world.render(metas, seed=3), metas, dense=True)
    assert res.dense.shape == (len(metas), 32, 32) and (res.dense == 1).all()
    assert world.check(world.render(metas, seed=3), metas).dense is None


def test_shapes_values_are_its_extra_count_and_strict_pass(world):
    three = PromptMeta("counting", (ObjectSpec("triangle", "green", 3),))
    one = PromptMeta("colors", (ObjectSpec("triangle", "green"),))
    res = world.check(world.render([three], seed=0).expand(2, -1, -1, -1), [three, one])
    assert res.passed.tolist() == [True, True] and res.extra.tolist() == [0, 2]
    assert res.values["extra_objects"].tolist() == [False, True]
    assert res.values["strict_accuracy"].tolist() == [True, False]


# ---------------------------------------------------------------------- world_checker
@pytest.mark.parametrize("options", [{}, {"score": "pass"}, {"extra_penalty": 0.5}, {"dense": True},
                                     {"dense": True, "score": "pass", "extra_penalty": 0.25}, {"resolution": 64}])
def test_world_checker_equals_shapes_checker_bit_for_bit(options):
    res = options.get("resolution", 32)
    world = ShapesWorld(res)
    metas = _metas(world, 4)
    images = world.render(metas, seed=7)
    noisy = (images + 0.3 * torch.rand(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    extra = world.render([PromptMeta("counting", (ObjectSpec("circle", "red", 3),))] * 2, seed=1)
    images = torch.cat([images, noisy, extra])
    metas = metas + metas[1:] + metas[:1] + [PromptMeta("colors", (ObjectSpec("circle", "red"),))] * 2
    generic = dict(options)
    if "extra_penalty" in generic:
        generic["penalties"] = {"extra_objects": generic.pop("extra_penalty")}
    a = rewards.get("shapes_checker", **options)(images, [""] * len(metas), metas)
    b = rewards.get("world_checker", world="shapes", **generic)(images, [""] * len(metas), metas)
    assert torch.equal(a.scores, b.scores) and a.details.keys() == b.details.keys()
    for key in ("passed", "partial", "extra_objects"):
        assert torch.equal(a.details[key], b.details[key]), key
    assert a.details["category"] == b.details["category"]
    assert (a.dense is None) == (b.dense is None) and (a.dense is None or torch.equal(a.dense, b.dense))
    assert 0 < a.scores.mean() < 1  # neither all-pass nor all-fail: the comparison sees both


def test_world_checker_serves_an_out_of_tree_world_and_checks_its_flags():
    reward = rewards.get("world_checker", world=f"{PARTS}:FramesWorld", resolution=16, penalties={"blank": 0.5})
    assert reward.layouts == ("video",) and reward.world.layout == "video"
    assert rewards.get("world_checker").layouts == ("image",)  # an instance accepts its world's layout only
    with pytest.raises(ValueError, match=r"penalties: 'extra' not a flag of world 'frames'; valid: blank"):
        rewards.get("world_checker", world=f"{PARTS}:FramesWorld", penalties={"extra": 1.0})
    with pytest.raises(ValueError, match=r"penalties: 'blanks' not a flag of world 'shapes'; valid: extra_objects"):
        rewards.get("world_checker", penalties={"blanks": 1.0})


# ---------------------------------------------------------------------- vgrl validate
def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_refuses_unknown_world_splits_and_categories_without_torch(tmp_path):
    """Each bad field is one line naming it and the valid values; validating imports no torch."""
    path = _write(tmp_path, TINY)
    cases = {
        "data.split=testing": "data.split: unknown split 'testing' of world 'shapes'; valid: train, heldout, "
                              "paraphrase",
        "data.categories=[flying]": "data.categories: 'flying': not a category of world 'shapes'; valid in split "
                                    "'train': single_object, two_object, counting, colors, position, color_attr",
        "eval.split=validation": "eval.split: unknown split 'validation' of world 'shapes'; valid: train, heldout, "
                                 "paraphrase",
        "data.world=shape": "data.world: unknown world 'shape' (did you mean 'shapes'?); valid: shapes",
        "data.world=json:dumps": "data.world: 'json:dumps' is not a vgrl world; valid: a subclass of "
                                 "vgrl.worlds.base.World",
        f"data.world={PARTS}:FramesWorld": "data.split: unknown split 'train' of world 'frames'; valid: fit, probe",
    }
    code = f"""
import contextlib, io, json, sys
from vgrl.cli import main
out = {{}}
for override in {list(cases)!r} + ['data.split=heldout', 'data.world={PARTS}:FramesWorld data.split=fit eval.split=probe']:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(['validate', {str(path)!r}, *override.split()])
    out[override] = [rc, err.getvalue()]
out['torch'] = 'torch' in sys.modules
print(json.dumps(out))
"""
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out.pop("torch") is False
    assert out.pop("data.split=heldout") == [0, ""]
    assert out.pop(f"data.world={PARTS}:FramesWorld data.split=fit eval.split=probe") == [0, ""]
    for override, line in cases.items():
        rc, err = out[override]
        assert rc != 0 and line in err.splitlines()[-1], (override, err)
        assert "Traceback" not in err


def test_data_categories_must_have_prompts_in_the_split(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.categories: 'single_object': no prompt of split 'heldout' of "
                                          r"world 'shapes'; valid in split 'heldout': two_object"):
        load_config(_write(tmp_path, {**TINY, "data": {"world": "shapes", "split": "heldout",
                                                        "categories": ["single_object"]}}))


# ---------------------------------------------------------------------- modality at build time
def _unloadable_pipeline(tmp_path: Path) -> str:
    """A directory that passes config validation but holds no weights: building the backbone would fail."""
    path = tmp_path / "pipeline"
    path.mkdir()
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    return str(path)


@pytest.mark.parametrize("part, message", [
    ({"reward": {"name": "tests.unit.video_reward:VideoReward"}},
     "backbone 'flow' produces image (B, C, H, W) samples but reward 'tests.unit.video_reward:VideoReward' accepts "
     "video only"),
    ({"reward": {"name": "jpeg"}, "data": {"world": f"{PARTS}:FramesWorld", "split": "fit"},
      "eval": {"split": "probe"}},
     f"backbone 'flow' produces image (B, C, H, W) samples but world '{PARTS}:FramesWorld' accepts video only"),
    ({"reward": {"name": "world_checker", "world": f"{PARTS}:FramesWorld", "resolution": 16},
      "data": {"world": f"{PARTS}:FramesWorld", "split": "fit"}, "eval": {"split": "probe"}},
     "backbone 'flow' produces image (B, C, H, W) samples but reward 'world_checker' accepts video only"),
])
def test_layout_mismatch_is_refused_at_build_time_before_any_weights_load(tmp_path, part, message):
    from vgrl.training.build import build

    cfg = load_config(_write(tmp_path, {**TINY, **part, "backbone": {"name": "flow",
                                                                      "path": _unloadable_pipeline(tmp_path)}}))
    with pytest.raises(TrainingError) as info:
        build(cfg)
    assert str(info.value) == message
