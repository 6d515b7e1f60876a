"""Run configuration models (pydantic) and their field and cross-field checks.

This module imports no torch (nor diffusers / transformers): ``vgrl validate`` reads a config, checks
every field and every cross-field rule (kernel x backbone prediction, step plan, batch shape) and
answers in a fraction of a second. Every model forbids unknown keys; every error is one line that
starts with the dotted path of the offending field and says what would be valid.

A config file looks like ``configs/sample.yaml``; :func:`dump_config` writes the fully resolved form
(all defaults filled in), which loads back to an equal :class:`RunConfig`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from vgrl import registry
from vgrl.kernels.options import BUILTIN as KERNEL_OPTIONS
from vgrl.kernels.options import KernelOptions
from vgrl.config.train import (AlgorithmConfig, DataConfig, EvalConfig, LogConfig, MixedPrecision, RewardConfig,
                               TrainConfig, _Named, eval_problems)

# Torch-free capability tables, so that validation can pair kernels with backbones without importing
# a model. A conformance test keeps them in sync with ``Backbone.predictions`` / ``Kernel.predictions``.
BACKBONE_PREDICTIONS: dict[str, tuple[str, ...]] = {"sd": ("epsilon", "v"), "flow": ("flow",)}
# the sample layout of each built-in family (vgrl.layouts), torch-free; kept equal to the classes' by a conformance test
BACKBONE_LAYOUTS: dict[str, str] = {"sd": "image", "flow": "image"}
# the config field that sizes each non-image layout's second axis
LAYOUT_AXES: dict[str, str] = {"video": "frames", "multiview": "views"}
KERNEL_PREDICTIONS: dict[str, tuple[str, ...]] = {
    "ddim": ("epsilon", "v"),
    "flow_sde": ("flow",),
    "dance_sde": ("flow",),
    "cps": ("flow",),
    "ode": ("epsilon", "v", "flow"),
}
# diffusers scheduler ``prediction_type`` -> vgrl prediction, read from a local sd pipeline directory.
SD_PREDICTION_TYPES = {"epsilon": "epsilon", "v_prediction": "v"}
DEVICES = ("auto", "cpu", "cuda", "cuda:0")

_TAG = "vgrl_config"  # pydantic error type of our own checks; ctx["problems"] holds (sub-loc, message)
_MODEL = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """An invalid config: ``messages`` are one line each, starting with the dotted field path."""

    def __init__(self, messages: Sequence[str], file: str | os.PathLike | None = None):
        self.messages = list(messages)
        self.file = None if file is None else str(file)
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"invalid config {self.file}" if self.file else "invalid config"
        return head + ":\n" + "\n".join(f"  {m}" for m in self.messages)


def _fail(problems: Sequence[tuple[tuple, str]]) -> NoReturn:
    """Raise a pydantic error carrying ``(loc relative to the current model, message)`` pairs."""
    summary = "; ".join(f"{_dotted(loc) or '<here>'}: {msg}" for loc, msg in problems)
    raise PydanticCustomError(_TAG, "{summary}", {"summary": summary, "problems": list(problems)})


def _dotted(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggest(word: Any, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_component(kind: str, name: str, builtins: Sequence[str]) -> None:
    """Fail unless ``name`` is a known built-in of ``kind`` or of the form ``package.module:Class``."""
    if registry.is_external(name):
        try:
            registry.check_name(kind, name)
        except registry.RegistryError as e:
            _fail([((), str(e))])
        return
    known = sorted(set(builtins) | set(registry.available(kind)))
    if name not in known:
        _fail([((), f"unknown {kind[:-1]} {name!r}{_suggest(name, known)}; valid: {', '.join(known)} "
                    "(or 'package.module:Class' for an out-of-tree one)")])


class BackboneConfig(BaseModel):
    """The generator network: a built-in family (``sd`` or ``flow``) or ``"package.module:Class"``."""

    model_config = _MODEL

    name: str = Field("flow", description="backbone family: sd | flow | package.module:Class")
    path: str | None = Field(None, description="local diffusers pipeline directory (relative to the cwd)")
    tiny: bool = Field(False, description="random-init tiny test model instead of a path")
    prediction: Literal["epsilon", "v", "flow"] | None = Field(
        None, description="network output; defaults from the backbone (sd: epsilon or the scheduler's, flow: flow)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    resolution: int = Field(32, ge=8, le=4096, multiple_of=8, description="image side in pixels")
    frames: int | None = Field(None, ge=1, description="frames per sample of a video family (null: the model's own)")
    views: int | None = Field(None, ge=1, description="views per sample of a multi-view family (null: the model's own)")
    device: str = Field("auto", description="where the networks run: auto (the launcher's: cuda:LOCAL_RANK "
                                            "when CUDA is available, else cpu) | cpu | cuda | cuda:N")

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        _check_component("backbones", name, tuple(BACKBONE_PREDICTIONS))
        return name

    @field_validator("device")
    @classmethod
    def _device_spec(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            _fail([((), f"{device!r} is not a device{_suggest(device, DEVICES)}; valid: auto, cpu, cuda, "
                        "cuda:N (N = GPU index)")])
        return device

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: str | None) -> str | None:
        if path is not None and not (path.strip() and Path(path).expanduser().exists()):
            what = "empty path" if not path.strip() else f"{path!r} does not exist"
            _fail([((), f"{what}; expected a local diffusers pipeline directory (or null with tiny: true)")])
        return path

    @model_validator(mode="after")
    def _resolve(self) -> BackboneConfig:
        if (self.path is None) != self.tiny:
            loc, what = (("tiny",), "true together with path") if self.tiny else (("path",), "missing")
            _fail([(loc, f"{what}; set exactly one of path (a local diffusers directory) or tiny: true")])
        layout = BACKBONE_LAYOUTS.get(self.name)
        for axis in ("frames", "views"):
            if layout is not None and getattr(self, axis) is not None and LAYOUT_AXES.get(layout) != axis:
                _fail([((axis,), f"backbone {self.name!r} produces {layout} samples, which have no {axis}; "
                                 f"set {axis} for a {'video' if axis == 'frames' else 'multi-view'} family, "
                                 "or null")])
        supported = BACKBONE_PREDICTIONS.get(self.name)
        if supported is None:  # out-of-tree backbone: its prediction is whatever the config says
            return self
        found = self._path_prediction()
        if self.prediction is None:
            self.prediction = found or supported[0]
        elif self.prediction not in supported:
            _fail([(("prediction",), f"{self.prediction!r} is not supported by backbone {self.name!r}; "
                                     f"valid: {', '.join(supported)}")])
        elif found is not None and found != self.prediction:
            _fail([(("prediction",), f"{self.prediction!r} but the model at {self.path} predicts {found!r} "
                                     f"(its scheduler config); valid: {found!r} or null")])
        return self

    def _path_prediction(self) -> str | None:
        """The prediction a local built-in pipeline declares (sd: scheduler prediction_type), if any."""
        if self.path is None:
            return None
        root = Path(self.path).expanduser()
        if not (root / "model_index.json").is_file():
            _fail([(("path",), f"{self.path!r} is not a diffusers pipeline directory (no model_index.json)")])
        if self.name != "sd":
            return None
        try:
            kind = json.loads((root / "scheduler" / "scheduler_config.json").read_text()).get("prediction_type")
        except (OSError, ValueError, AttributeError):
            return None
        if kind is not None and kind not in SD_PREDICTION_TYPES:
            _fail([(("path",), f"the scheduler at {self.path} has prediction_type {kind!r}; the sd backbone "
                               f"supports: {', '.join(SD_PREDICTION_TYPES)}")])
        return SD_PREDICTION_TYPES.get(kind)


class KernelConfig(_Named):
    """The transition kernel: ``name`` plus that kernel's options, flat in YAML.

    ``kernel: {name: flow_sde, noise_level: 0.5}``. A built-in kernel's options are validated (and
    completed with defaults) by its model in :mod:`vgrl.kernels.options`; an out-of-tree
    ``"package.module:Class"`` kernel's options pass through unchecked.
    """

    name: str = Field("flow_sde", description="ddim | flow_sde | dance_sde | cps | ode | package.module:Class")

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        _check_component("kernels", name, tuple(KERNEL_OPTIONS))
        return name

    @model_validator(mode="after")
    def _check_options(self) -> KernelConfig:
        model = KERNEL_OPTIONS.get(self.name)
        if model is None:  # out-of-tree kernel: its own constructor checks the options
            return self
        try:
            self.opts = model.model_validate(self.opts, strict=True).model_dump()
        except ValidationError as e:
            valid = sorted(model.model_fields)
            _fail([(tuple(err["loc"]), _describe(err, valid, noun="option", owner=f" for kernel {self.name!r}"))
                   for err in e.errors()])
        own_first = sorted(self.opts, key=lambda k: k in KernelOptions.model_fields)  # eta before reduction
        self.opts = {k: self.opts[k] for k in own_first}
        return self


class PlanConfig(BaseModel):
    """Which steps are stochastic (SDE) and which of those are recorded for training.

    ``all``: every step stochastic (DDPO, Flow-GRPO); ``window``: ``window_size`` SDE steps from
    ``window_start``, ODE elsewhere (MixGRPO, Flow-GRPO-Fast); ``ode``: fully deterministic.
    """

    model_config = _MODEL

    kind: Literal["all", "window", "ode"] = "all"
    window_start: int = Field(0, ge=0, description="first SDE step of a window plan")
    window_size: int = Field(2, ge=1, description="number of SDE steps of a window plan")
    record: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="SDE step indices to record; null records every SDE step")


class SamplingConfig(BaseModel):
    """The sampler: number of steps, classifier-free guidance and the step plan."""

    model_config = _MODEL

    num_steps: int = Field(10, ge=1, le=1000)
    guidance_scale: float = Field(1.0, ge=1.0, description="1.0 means no classifier-free guidance")
    plan: PlanConfig = Field(default_factory=PlanConfig)
    mixed_precision: MixedPrecision | None = Field(
        None, description="autocast of the rollout's forwards (vgrl train); null = train.mixed_precision. "
                          "bf16 rollouts with fp32 training suit the forward-process algorithms (nft, rwr, raft, "
                          "dpo) on CPUs with bf16 units; likelihood-ratio algorithms need the training precision")

    def sde_steps(self) -> list[int]:
        """Indices of the stochastic steps of the plan."""
        plan, n = self.plan, self.num_steps
        if plan.kind == "ode":
            return []
        if plan.kind == "window":
            return list(range(plan.window_start, min(n, plan.window_start + plan.window_size)))
        return list(range(n))

    def recorded_steps(self) -> list[int]:
        """Indices of the steps whose transitions (and log-probabilities) are recorded."""
        return self.sde_steps() if self.plan.record is None else list(self.plan.record)

    @model_validator(mode="after")
    def _check_plan(self) -> SamplingConfig:
        plan, n = self.plan, self.num_steps
        if plan.kind == "window" and plan.window_start >= n:
            _fail([(("plan", "window_start"), f"{plan.window_start} is not a step of {n}; valid: 0..{n - 1}")])
        if plan.kind == "window" and plan.window_start + plan.window_size > n:
            _fail([(("plan", "window_size"), f"window_start {plan.window_start} + window_size "
                                             f"{plan.window_size} exceeds num_steps {n}; valid: "
                                             f"1..{n - plan.window_start}")])
        if plan.record is None:
            return self
        where = ("plan", "record")
        dups = sorted({i for i in plan.record if plan.record.count(i) > 1})
        if dups:
            _fail([(where, f"duplicate step(s) {dups}")])
        sde = self.sde_steps()
        bad = [i for i in plan.record if i not in sde]
        if bad and not sde:
            _fail([(where, f"{plan.record} but plan kind 'ode' has no SDE steps to record; valid: null or []")])
        if bad:
            _fail([(where, f"step(s) {bad} are not SDE steps of plan kind {plan.kind!r} with num_steps {n}; "
                           f"valid: {sde[0]}..{sde[-1]}")])
        plan.record = sorted(plan.record)
        return self


class RunConfig(BaseModel):
    """A whole run: seed, backbone, kernel, sampler, prompts and batch shape; and for ``vgrl train``
    the data, reward, algorithm, optimisation, evaluation and logging sections (:mod:`.train`)."""

    model_config = _MODEL

    seed: int = Field(0, ge=0, lt=2**63)
    backbone: BackboneConfig
    kernel: KernelConfig = Field(default_factory=KernelConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    prompts: list[str] | None = Field(None, min_length=1, description="prompts, cycled to fill "
                                      "batch_size // group_size; null = the prompts of data.world")
    batch_size: int = Field(8, ge=1, description="images per batch")
    group_size: int = Field(1, ge=1, description="samples per prompt")
    deterministic: bool = Field(True, description="fp32 deterministic mode (bitwise reproducible on CPU)")
    run_dir: str | None = Field(None, min_length=1, description="output directory")
    data: DataConfig = Field(default_factory=DataConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @field_validator("prompts")
    @classmethod
    def _non_blank(cls, prompts: list[str] | None) -> list[str] | None:
        if prompts is None:
            return None
        blank = [((i,), "empty prompt; every prompt needs text") for i, p in enumerate(prompts) if not p.strip()]
        if blank:
            _fail(blank)
        return prompts

    def precisions(self) -> dict[str, str]:
        """The autocast mode (``no``, ``bf16``, ``fp16``) of the ``train`` forwards, the ``sampling`` rollouts
        and the ``eval`` sampling, with a null ``sampling`` / ``eval`` value resolved to the training one."""
        train = self.train.mixed_precision
        return {"train": train, "sampling": self.sampling.mixed_precision or train,
                "eval": self.eval.mixed_precision or train}

    def training_problems(self) -> list[str]:
        """What ``vgrl train`` checks when it builds the run, torch-free: a built-in algorithm's ``needs`` against
        the kernel, the reward, the group size, the reference model and the precisions (``check_compatible``).
        One line per problem, led by the field. Not part of validation: ``vgrl sample`` has no algorithm."""
        needs, name = self.algorithm.needs, self.algorithm.name
        if needs is None:  # out-of-tree algorithm: checked when the run is built
            return []
        problems: list[tuple[tuple, str]] = []
        kernel = self.kernel.name
        if (needs.step_log_probs or needs.stochastic_kernel) and not registry.is_external(kernel) \
                and not registry.resolve("kernels", kernel).stochastic:
            problems.append((("kernel", "name"), f"algorithm {name!r} needs per-step log-probabilities, but kernel "
                                                 f"{kernel!r} is deterministic; valid: a stochastic kernel (ddim, "
                                                 "flow_sde, dance_sde, cps)"))
        if needs.differentiable_reward and self.reward.differentiable is False:
            problems.append((("reward", "name"), f"algorithm {name!r} back-propagates through the reward, but reward "
                                                 f"{self.reward.name!r} is not differentiable; valid: a differentiable "
                                                 "reward, or a likelihood-ratio algorithm"))
        if needs.groups and self.group_size < 2:
            problems.append((("group_size",), f"algorithm {name!r} compares the samples of a prompt group; valid: "
                                              f">= 2, got {self.group_size}"))
        if needs.reference and self.train.reference == "none":
            problems.append((("train", "reference"), f"'none' but algorithm {name!r} with these options needs a "
                                                     "reference model (a KL term); valid: 'auto'"))
        modes = self.precisions()
        if needs.step_log_probs and modes["sampling"] != modes["train"]:
            problems.append((("sampling", "mixed_precision"), f"{modes['sampling']!r} differs from "
                                                              f"train.mixed_precision {modes['train']!r}, but {name!r} "
                                                              "recomputes the rollout's log-probs in training precision "
                                                              "(the importance ratio would not start at 1); valid: null"))
        return [f"{_dotted(loc)}: {msg}" for loc, msg in problems]

    @model_validator(mode="after")
    def _cross_checks(self) -> RunConfig:
        problems: list[tuple[tuple, str]] = []
        if self.prompts is None and self.data.world is None:
            problems.append((("prompts",), "missing; give prompts, or data.world to train on a world's prompts"))
        if self.data.categories is not None and (self.prompts is not None or self.data.world is None):
            problems.append((("data", "categories"), "selects categories of data.world's prompts; it cannot "
                                                     "apply to plain prompts (remove it, or set data.world)"))
        problems += eval_problems(self.data, self.eval)
        b, g = self.batch_size, self.group_size
        if b % g:
            problems.append((("batch_size",), f"{b} is not divisible by group_size {g}; valid: a multiple "
                                              f"of {g}, e.g. {g * max(1, b // g)}"))
        pred, kernel = self.backbone.prediction, self.kernel.name
        accepts = KERNEL_PREDICTIONS.get(kernel)
        if pred is not None and accepts is not None and pred not in accepts:
            valid = sorted(k for k, preds in KERNEL_PREDICTIONS.items() if pred in preds)
            problems.append((("kernel", "name"), f"{kernel!r} cannot step a {pred!r}-prediction backbone "
                                                 f"({self.backbone.name!r}); valid kernels for it: {', '.join(valid)}"))
        if kernel == "ode" and self.sampling.plan.kind != "ode":
            problems.append((("sampling", "plan", "kind"), f"{self.sampling.plan.kind!r} has stochastic steps "
                                                           "but kernel 'ode' is deterministic; valid with "
                                                           "kernel 'ode': 'ode' (or pick a stochastic kernel)"))
        if self.deterministic and self.backbone.dtype != "float32":
            problems.append((("backbone", "dtype"), f"{self.backbone.dtype!r} with deterministic: true "
                                                    "(deterministic mode is fp32); valid: 'float32', "
                                                    "or set deterministic: false"))
        t = self.train
        if self.deterministic and t.lr_schedule != "constant" and t.max_minutes is not None:
            problems.append((("train", "lr_schedule"), f"{t.lr_schedule!r} with train.max_minutes follows the "
                                                       "wall-clock, which deterministic: true cannot repeat; valid: "
                                                       "'constant', or max_minutes: null (the schedule then follows "
                                                       "iterations), or deterministic: false"))
        for section, mode in (("train", t.mixed_precision), ("sampling", self.sampling.mixed_precision),
                              ("eval", self.eval.mixed_precision)):
            if mode is not None and mode != "no" and self.deterministic:
                problems.append(((section, "mixed_precision"), f"{mode!r} with deterministic: true "
                                                               "(deterministic mode is fp32); valid: 'no', or set "
                                                               "deterministic: false"))
            elif mode == "fp16" and self.backbone.device == "cpu":
                problems.append(((section, "mixed_precision"), "'fp16' is not supported on backbone.device 'cpu' "
                                                               "(CPU autocast computes in bfloat16); valid on cpu: "
                                                               "'no', 'bf16'"))
        if t.minibatch_size is None:
            t.minibatch_size = b
        per_step = t.minibatch_size * t.grad_accum
        if b % t.minibatch_size:
            problems.append((("train", "minibatch_size"), f"{t.minibatch_size} does not divide batch_size {b}; "
                                                          f"valid: a divisor of {b}"))
        elif (b // t.minibatch_size) % t.grad_accum:
            problems.append((("train", "grad_accum"), f"{t.grad_accum} minibatches of {t.minibatch_size} per step "
                                                      f"({per_step} samples) do not divide batch_size {b}; valid: "
                                                      f"a divisor of {b // t.minibatch_size}"))
        if problems:
            _fail(problems)
        return self


def _describe(err: dict, valid: Sequence[str] | None, noun: str = "key", owner: str = "") -> str:
    """One readable message (without the path) for one pydantic error."""
    kind, loc, value = err["type"], err["loc"], err.get("input")
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        tail = f"; valid {noun}s: {', '.join(valid)}" if valid is not None else ""
        return f"unknown {noun} {key!r}{owner}{_suggest(key, valid or ())}{tail}"
    if kind == "missing":
        return "missing (required)"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of keys, got {type(value).__name__} {_short(value)}"
    return f"{err['msg'][:1].lower()}{err['msg'][1:]}; got {_short(value)}"
