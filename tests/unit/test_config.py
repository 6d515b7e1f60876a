"""The run config: every bad config names its dotted field path (and what is valid); good configs
round-trip through dump / load; overrides parse their values as YAML; file errors name the file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from vgrl.config import (ConfigError, RunConfig, apply_overrides, dump_config, load_config, save_config,
                         validate_config)

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "backbone": {"name": "flow", "tiny": True},
    "kernel": {"name": "flow_sde"},
    "prompts": ["a red circle", "a blue square"],
    "batch_size": 4,
    "group_size": 2,
}


def errors_for(overrides: list[str], base: dict | None = None) -> list[str]:
    data = apply_overrides(copy.deepcopy(BASE if base is None else base), overrides)
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    return info.value.messages


# (overrides on BASE, expected dotted path, substrings the message must contain)
BAD = [
    (["lr=0.1"], "lr", ["unknown key 'lr'", "valid keys: seed, backbone, kernel"]),
    (["seed=-1"], "seed", ["greater than or equal to 0", "-1"]),
    (["seed=1.5"], "seed", ["valid integer", "1.5"]),
    (["backbone.name=unet"], "backbone.name", ["unknown backbone 'unet'", "flow", "sd", "package.module:Class"]),
    (["backbone.name='mypkg.mod:'"], "backbone.name", ["package.module:Class"]),
    (["backbone.tiny=false"], "backbone.path", ["exactly one of path", "tiny: true"]),
    (["backbone.frames=4"], "backbone.frames", ["backbone 'flow' produces image samples, which have no frames"]),
    (["backbone.views=0"], "backbone.views", ["greater than or equal to 1"]),
    (["backbone.name=sd", "backbone.views=2"], "backbone.views", ["backbone 'sd' produces image samples"]),
    (["backbone.path=/no/such/dir"], "backbone.path", ["does not exist", "/no/such/dir"]),
    (["backbone.path=/"], "backbone.tiny", ["exactly one of path"]),
    (["backbone.path=/", "backbone.tiny=false"], "backbone.path", ["no model_index.json"]),
    (["backbone.path=''", "backbone.tiny=false"], "backbone.path", ["empty path"]),
    (["backbone.prediction=epsilon"], "backbone.prediction", ["not supported by backbone 'flow'", "valid: flow"]),
    (["backbone.name=sd", "kernel.name=ddim", "backbone.prediction=flow"], "backbone.prediction",
     ["valid: epsilon, v"]),
    (["backbone.prediction=x0"], "backbone.prediction", ["'epsilon', 'v' or 'flow'", "'x0'"]),
    (["backbone.dtype=float64"], "backbone.dtype", ["'float32', 'bfloat16' or 'float16'", "float64"]),
    (["backbone.dtype=bfloat16"], "backbone.dtype", ["deterministic: true", "valid: 'float32'"]),
    (["backbone.resolution=30"], "backbone.resolution", ["multiple of 8", "30"]),
    (["backbone.resolution=0"], "backbone.resolution", ["greater than or equal to 8"]),
    (["backbone.resolution=32.0"], "backbone.resolution", ["valid integer"]),
    (["backbone.tiny='true'"], "backbone.tiny", ["valid boolean", "'true'"]),
    (["backbone.colour=red"], "backbone.colour", ["unknown key 'colour'", "valid keys: name, path, tiny"]),
    (["backbone=null"], "backbone", ["expected a mapping"]),
    (["kernel.nosie_level=0.5"], "kernel.nosie_level",
     ["unknown option 'nosie_level'", "did you mean 'noise_level'", "valid options: noise_level, reduction"]),
    (["kernel.noise_level=0"], "kernel.noise_level", ["greater than 0", "got 0"]),
    (["kernel.noise_level=5"], "kernel.noise_level", ["less than or equal to 3"]),
    (["kernel.noise_level=fast"], "kernel.noise_level", ["valid number", "'fast'"]),
    (["kernel.reduction=max"], "kernel.reduction", ["'mean' or 'sum'", "'max'"]),
    (["kernel.name=dpm"], "kernel.name", ["unknown kernel 'dpm'", "cps, dance_sde, ddim, flow_sde, ode"]),
    (["kernel.name=':Cls'"], "kernel.name", ["package.module:Class"]),
    (["kernel.name=ddim"], "kernel.name",
     ["'ddim' cannot step a 'flow'-prediction backbone ('flow'); valid kernels for it: cps, dance_sde, flow_sde, ode"]),
    (["backbone.name=sd"], "kernel.name", ["'flow_sde' cannot step a 'epsilon'-prediction", "ddim, ode"]),
    (["backbone.name=sd", "kernel={name: ddim, eta: 2}"], "kernel.eta", ["less than or equal to 1"]),
    (["backbone.name=sd", "kernel={name: ddim, noise_level: 0.5}"], "kernel.noise_level",
     ["unknown option 'noise_level' for kernel 'ddim'", "valid options: eta, reduction"]),
    (["kernel.name=ode"], "sampling.plan.kind", ["kernel 'ode' is deterministic", "valid with kernel 'ode': 'ode'"]),
    (["kernel=ddim"], "kernel", ["expected a mapping", "'ddim'"]),
    (["sampling.num_steps=0"], "sampling.num_steps", ["greater than or equal to 1"]),
    (["sampling.num_steps=1001"], "sampling.num_steps", ["less than or equal to 1000"]),
    (["sampling.guidance_scale=0.5"], "sampling.guidance_scale", ["greater than or equal to 1"]),
    (["sampling.guidance_scale=.inf"], "sampling.guidance_scale", ["finite number"]),
    (["sampling.steps=5"], "sampling.steps", ["valid keys: num_steps, guidance_scale, plan"]),
    (["sampling.plan.kind=sde"], "sampling.plan.kind", ["'all', 'window' or 'ode'", "'sde'"]),
    (["sampling.plan.kind=window", "sampling.plan.window_start=9"], "sampling.plan.window_size",
     ["window_start 9 + window_size 2 exceeds num_steps 10", "valid: 1..1"]),
    (["sampling.plan.kind=window", "sampling.plan.window_start=10"], "sampling.plan.window_start", ["valid: 0..9"]),
    (["sampling.plan.window_size=0"], "sampling.plan.window_size", ["greater than or equal to 1"]),
    (["sampling.plan.window_start=-1"], "sampling.plan.window_start", ["greater than or equal to 0"]),
    (["sampling.plan.windowsize=3"], "sampling.plan.windowsize", ["did you mean 'window_size'"]),
    (["sampling.plan.record=[1, 1, 2]"], "sampling.plan.record", ["duplicate step(s) [1]"]),
    (["sampling.plan.record=[10]"], "sampling.plan.record", ["[10] are not SDE steps", "valid: 0..9"]),
    (["sampling.plan.kind=window", "sampling.plan.record=[0, 5]"], "sampling.plan.record",
     ["[5] are not SDE steps of plan kind 'window'", "valid: 0..1"]),
    (["sampling.plan.kind=ode", "sampling.plan.record=[0]"], "sampling.plan.record", ["no SDE steps"]),
    (["sampling.plan.record=[-1]"], "sampling.plan.record.0", ["greater than or equal to 0"]),
    (["sampling.plan.record=3"], "sampling.plan.record", ["valid list"]),
    (["prompts=[]"], "prompts", ["at least 1 item"]),
    (["prompts=['a cube', '  ']"], "prompts.1", ["empty prompt"]),
    (["prompts=a red circle"], "prompts", ["valid list", "'a red circle'"]),
    (["prompts=[1]"], "prompts.0", ["valid string"]),
    (["batch_size=5"], "batch_size", ["5 is not divisible by group_size 2", "multiple of 2"]),
    (["batch_size=0"], "batch_size", ["greater than or equal to 1"]),
    (["group_size=0"], "group_size", ["greater than or equal to 1"]),
    (["deterministic=1"], "deterministic", ["valid boolean"]),
    (["run_dir=''"], "run_dir", ["at least 1 character"]),
]


@pytest.mark.parametrize("overrides, path, needles", BAD, ids=[" ".join(case[0]) for case in BAD])
def test_bad_config_names_field_path(overrides, path, needles):
    messages = errors_for(overrides)
    hits = [m for m in messages if m.startswith(f"{path}: ")]
    assert hits, f"no message for {path!r} in {messages}"
    for needle in needles:
        assert any(needle in m for m in hits), f"{needle!r} not in {hits}"


def test_bad_case_table_is_large():
    assert len(BAD) >= 35


@pytest.mark.parametrize("data, path", [
    ({"prompts": ["a"]}, "backbone"),
    ({"backbone": {"tiny": True}}, "prompts"),
    ([1, 2], "<config>"),
])
def test_missing_sections(data, path):
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    assert any(m.startswith(f"{path}: ") for m in info.value.messages), info.value.messages


def test_all_independent_errors_reported_at_once():
    messages = errors_for(["seed=-1", "backbone.resolution=3", "sampling.num_steps=0", "lr=1"])
    assert [m.split(":")[0] for m in messages] == ["seed", "backbone.resolution", "sampling.num_steps", "lr"]


def test_messages_are_single_lines():
    for overrides, _, _ in BAD:
        assert all("\n" not in m for m in errors_for(overrides))


def test_defaults_resolved():
    cfg = validate_config(copy.deepcopy(BASE))
    assert cfg.backbone.prediction == "flow"
    assert cfg.kernel.options() == {"noise_level": 0.7, "reduction": "mean"}
    assert cfg.sampling.recorded_steps() == list(range(10))
    sd = validate_config(apply_overrides(copy.deepcopy(BASE), ["backbone.name=sd", "kernel.name=ddim"]))
    assert sd.backbone.prediction == "epsilon" and sd.kernel.options() == {"eta": 1.0, "reduction": "mean"}


def test_window_plan_and_record():
    cfg = validate_config(apply_overrides(copy.deepcopy(BASE), [
        "sampling.plan={kind: window, window_start: 3, window_size: 4, record: [6, 4]}"]))
    assert cfg.sampling.sde_steps() == [3, 4, 5, 6]
    assert cfg.sampling.recorded_steps() == [4, 6]
    ode = validate_config(apply_overrides(copy.deepcopy(BASE), ["kernel.name=ode", "sampling.plan.kind=ode"]))
    assert ode.sampling.sde_steps() == [] and ode.sampling.recorded_steps() == []
    flow_sde_ode_plan = validate_config(apply_overrides(copy.deepcopy(BASE), ["sampling.plan.kind=ode"]))
    assert flow_sde_ode_plan.sampling.plan.kind == "ode"


def test_external_components_pass_options_through():
    cfg = validate_config(apply_overrides(copy.deepcopy(BASE), [
        "backbone.name=mypkg.nets:Net", "kernel={name: 'mypkg.kernels:MyKernel', temperature: 3, mode: fast}"]))
    assert cfg.backbone.prediction is None
    assert cfg.kernel.options() == {"temperature": 3, "mode": "fast"}
    messages = errors_for(["backbone.name=mypkg.nets:Net", "backbone.prediction=flow", "kernel.name=ddim"])
    assert any(m.startswith("kernel.name: 'ddim' cannot step a 'flow'") for m in messages)


def _fake_sd_pipeline(root: Path, prediction_type: str) -> Path:
    (root / "scheduler").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction_type}))
    return root


def test_sd_path_prediction_from_scheduler(tmp_path):
    path = _fake_sd_pipeline(tmp_path / "pipe", "v_prediction")
    sd = ["backbone.name=sd", f"backbone.path={path}", "backbone.tiny=false", "kernel.name=ddim"]
    cfg = validate_config(apply_overrides(copy.deepcopy(BASE), sd))
    assert cfg.backbone.prediction == "v"
    messages = errors_for([*sd, "backbone.prediction=epsilon"])
    assert any(m.startswith("backbone.prediction: 'epsilon' but the model at") for m in messages)
    bad = _fake_sd_pipeline(tmp_path / "sample", "sample")
    messages = errors_for(["backbone.name=sd", f"backbone.path={bad}", "backbone.tiny=false", "kernel.name=ddim"])
    assert any(m.startswith("backbone.path: ") and "'sample'" in m for m in messages)


# ---------------------------------------------------------------- round trip


GOOD = [
    [],
    ["backbone.name=sd", "kernel={name: ddim, eta: 0.5}", "sampling.guidance_scale=4.5", "seed=7"],
    ["sampling.plan={kind: window, window_start: 2, window_size: 3, record: [4, 2]}", "kernel.name=cps"],
    ["kernel.name=ode", "sampling.plan.kind=ode", "deterministic=false", "backbone.dtype=bfloat16"],
    ["kernel={name: 'mypkg.kernels:K', alpha: [1, 2]}", "run_dir=runs/x"],
]


@pytest.mark.parametrize("overrides", GOOD, ids=[" ".join(g) or "base" for g in GOOD])
def test_round_trip(overrides, tmp_path):
    cfg = validate_config(apply_overrides(copy.deepcopy(BASE), overrides))
    text = dump_config(cfg)
    again = validate_config(yaml.safe_load(text))
    assert again == cfg and dump_config(again) == text
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(tmp_path / "out" / "config.yaml") == cfg
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.yaml"]  # no temp files left


def test_dump_fills_every_default():
    dumped = yaml.safe_load(dump_config(validate_config(copy.deepcopy(BASE))))
    assert set(dumped) == set(RunConfig.model_fields)
    assert dumped["kernel"] == {"name": "flow_sde", "noise_level": 0.7, "reduction": "mean"}
    assert dumped["sampling"]["plan"] == {"kind": "all", "window_start": 0, "window_size": 2, "record": None}


# ---------------------------------------------------------------- overrides


def test_overrides_parse_yaml_values():
    data = apply_overrides({}, ["seed=3", "deterministic=false", "sampling.plan.record=[1, 2]",
                                "kernel.noise_level=0.5", "prompts=[a cube, two balls]", "run_dir=", "x.y=hello"])
    assert data == {"seed": 3, "deterministic": False, "sampling": {"plan": {"record": [1, 2]}},
                    "kernel": {"noise_level": 0.5}, "prompts": ["a cube", "two balls"], "run_dir": None,
                    "x": {"y": "hello"}}


def test_overrides_applied_by_load_config(tmp_path):
    cfg = load_config(ROOT / "configs" / "sample.yaml", ["seed=5", "sampling.num_steps=4", "kernel.noise_level=1"])
    assert (cfg.seed, cfg.sampling.num_steps, cfg.kernel.options()["noise_level"]) == (5, 4, 1.0)


@pytest.mark.parametrize("item, needle", [
    ("seed", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("a..b=1", "expected KEY=VALUE"),
    ("sampling num_steps=1", "expected KEY=VALUE"),
    ("seed=[1,", "seed: override 'seed=[1,': value is not valid YAML"),
    ("prompts.0=x", "prompts: override 'prompts.0=x' goes through prompts, which is list"),
    ("seed.x=1", "seed: override 'seed.x=1' goes through seed, which is int"),
])
def test_bad_override_rejected(item, needle):
    with pytest.raises(ConfigError) as info:
        apply_overrides(copy.deepcopy(BASE) | {"seed": 0}, [item], "c.yaml")
    assert info.value.file == "c.yaml"
    assert any(needle in m for m in info.value.messages), info.value.messages


# ---------------------------------------------------------------- files


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, needle", [
    ("seed: 0\nbackbone: {tiny: true\nprompts: [a]\n", "invalid YAML"),
    ("seed: 0\nprompts:\n  - a\n - b\n", ":4:"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("seed: 0\nseed: 1\n", "c.yaml:2:1: invalid YAML: duplicate key 'seed'"),
])
def test_bad_file_names_file(tmp_path, text, needle):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert any(str(path) in m and needle in m for m in info.value.messages), info.value.messages


def test_missing_and_unreadable_files(tmp_path):
    for path, needle in [(tmp_path / "nope.yaml", "no such file"), (tmp_path, "cannot read")]:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert info.value.messages[0].startswith(f"{path}: {needle}")
        assert str(path) in str(info.value)


def test_empty_file_reports_missing_sections(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "# nothing\n"))
    assert [m.split(":")[0] for m in info.value.messages] == ["backbone"]


def test_prompts_or_world_required(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "backbone: {name: flow, tiny: true}\n"))
    assert info.value.messages == ["prompts: missing; give prompts, or data.world to train on a world's prompts"]
    cfg = load_config(_write(tmp_path, "backbone: {name: flow, tiny: true}\ndata: {world: shapes}\n"))
    assert cfg.prompts is None and cfg.data.world == "shapes"


@pytest.mark.parametrize("text, message", [
    ("batch_size: 8\ntrain: {minibatch_size: 3}", "train.minibatch_size: 3 does not divide batch_size 8"),
    ("batch_size: 8\ntrain: {minibatch_size: 2, grad_accum: 3}", "train.grad_accum: 3 minibatches of 2"),
    ("algorithm: {name: flow_grpoo}", "algorithm.name: unknown algorithm 'flow_grpoo' (did you mean 'flow_grpo'?)"),
    ("reward: {name: jpg}", "reward.name: unknown reward 'jpg'"),
    ("data: {world: shape}", "data.world: unknown world 'shape' (did you mean 'shapes'?)"),
    ("train: {lora: {rank: 0}}", "train.lora.rank: "),
    ("train: {lr_rate: 0.1}", "train.lr_rate: unknown key 'lr_rate' (did you mean 'lr_min_ratio'?); valid keys: "
                              "iterations"),
])
def test_training_sections_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "backbone: {name: flow, tiny: true}\nprompts: [a red circle]\n" + text + "\n"))
    assert any(m.startswith(message) for m in info.value.messages), info.value.messages


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert validate_config(yaml.safe_load(dump_config(cfg))) == cfg


def test_shipped_configs_exist():
    assert {"sample.yaml", "sample_sd.yaml"} <= {p.name for p in (ROOT / "configs").glob("*.yaml")}
