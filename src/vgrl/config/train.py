"""Config sections of a training run: data, reward, algorithm, optimisation, evaluation and logging.

Torch-free like the rest of :mod:`vgrl.config`. Reward and algorithm names are checked here, and so are
the options of a built-in one, by the component's own ``Options`` model (``Reward.check_config``: nested
specs of ``compose`` / ``win_rate`` too): a component module imports torch lazily, inside its functions
(:mod:`vgrl._lazy`), so importing it for its options costs milliseconds. Errors name the field as
``reward.<option>`` / ``algorithm.<option>``. An out-of-tree ``package.module:Class`` component is not
imported here (its module may import torch at its top): its options are checked when ``vgrl train``
builds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_serializer, model_validator)

from vgrl import registry

_MODEL = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _yaml_no(value: Any) -> Any:
    """A precision field's value with YAML's bare ``no`` (read as ``false``) turned back into ``"no"``."""
    return "no" if value is False else value


MixedPrecision = Annotated[Literal["no", "bf16", "fp16"], BeforeValidator(_yaml_no)]


def _check_name(kind: str, name: str) -> str:
    """Accept a registry name of ``kind`` or ``package.module:Class`` (one-line error otherwise)."""
    from vgrl.config.schema import _check_component  # schema imports this module: import lazily

    _check_component(kind, name, ())
    return name


class _Named(BaseModel):
    """A component chosen by name with its options flat beside it in YAML (``{name: X, opt: value}``);
    the options are gathered into ``opts`` and written back flat. Kernel, reward and algorithm configs."""

    model_config = _MODEL
    registry_kind: ClassVar[str | None] = None  # set: names are checked against that registry kind

    name: str
    opts: dict[str, Any] = Field(default_factory=dict, repr=False, description="internal: the options")
    _checked: Any = PrivateAttr(None)  # what the component's check returned (None: not checked, out of tree)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return name if cls.registry_kind is None else _check_name(cls.registry_kind, name)

    @model_validator(mode="before")
    @classmethod
    def _gather_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {"opts": {k: v for k, v in data.items() if k != "name"}}
        if "name" in data:
            out["name"] = data["name"]
        return out

    @model_validator(mode="after")
    def _check_options(self) -> _Named:
        """Validate the options of a built-in component by its own ``Options`` (torch-free imports)."""
        from vgrl.config.schema import _describe, _fail

        if self.registry_kind is None or registry.is_external(self.name):
            return self
        cls = registry.resolve(self.registry_kind, self.name)
        try:
            self._checked = self.check(cls)
        except ValidationError as e:
            valid = sorted(cls.Options.model_fields)
            owner = f" for {self.registry_kind[:-1]} {self.name!r}"
            _fail([(tuple(err["loc"]), _describe(err, valid if len(err["loc"]) == 1 else None, "option", owner))
                   for err in e.errors()])
        return self

    def check(self, cls: type) -> Any:
        """Validate ``opts`` with component class ``cls``; raises pydantic's ``ValidationError``."""
        return cls.Options.model_validate(self.opts)

    @model_serializer(mode="plain")
    def _flat(self) -> dict[str, Any]:
        return {"name": self.name, **self.opts}

    def options(self) -> dict[str, Any]:
        return dict(self.opts)


class RewardConfig(_Named):
    """The training reward: ``{name: shapes_checker, score: partial}``; ``compose`` takes ``terms``."""

    registry_kind: ClassVar[str] = "rewards"
    name: str = Field("shapes_checker", description="reward registry name or package.module:Class")

    def check(self, cls: type) -> bool:
        return cls.check_config(self.opts)

    @property
    def differentiable(self) -> bool | None:
        """Whether the configured reward is differentiable (None: out of tree, known once built)."""
        return self._checked


class AlgorithmConfig(_Named):
    """The post-training algorithm: ``{name: flow_grpo, clip_range: 1e-4, beta: 0.0}``."""

    registry_kind: ClassVar[str] = "algorithms"
    name: str = Field("flow_grpo", description="algorithm registry name or package.module:Class")

    def check(self, cls: type) -> Any:
        return cls.needs_for(cls.Options.model_validate(self.opts))

    @property
    def needs(self) -> Any:
        """The configured algorithm's ``Needs`` (None: out of tree, known once built)."""
        return self._checked


class DataConfig(BaseModel):
    """Where training prompts come from: a built-in world's split (prompts with checker metadata)."""

    model_config = _MODEL

    world: str | None = Field(None, description="world (registry name, e.g. shapes, or package.module:Class) whose "
                                                "prompt split trains the model")
    split: str = Field("train", description="prompt split of the world (one of the world's splits)")
    categories: list[str] | None = Field(None, min_length=1,
                                         description="train only on these prompt categories of the split "
                                                     "(default: all); each is drawn equally often")
    preferences: str | None = Field(None, description="preference dataset (a pairs.jsonl or pairs.parquet index "
                                                     "or a directory holding one, docs/preferences.md) that an offline "
                                                     "pairwise algorithm (diffusion_dpo, npo with mode: offline) "
                                                     "trains on")

    @field_validator("preferences")
    @classmethod
    def _index_exists(cls, path: str | None) -> str | None:
        if path is None:
            return None
        p = Path(path).expanduser()
        if not (p.is_file() or (p / "pairs.jsonl").is_file() or (p / "pairs.parquet").is_file()):
            from vgrl.config.schema import _fail

            _fail([((), f"{path!r} is neither a pairs.jsonl index nor a pairs.parquet index nor a "
                        "directory holding one (build one with 'vgrl pairs --from-run RUN --out DIR')")])
        return path

    @field_validator("world")
    @classmethod
    def _known_world(cls, world: str | None) -> str | None:
        if world is not None:
            world_class(world)
        return world

    @model_validator(mode="after")
    def _world_split_and_categories(self) -> DataConfig:
        """``split`` and ``categories`` are the world's (read from its class: torch-free for built-in worlds)."""
        if self.world is None:
            return self
        from vgrl.config.schema import _fail

        world = world_class(self.world)
        problems = []
        if (problem := world.split_problem(self.split)) is not None:
            problems.append((("split",), problem))
        elif self.categories is not None and (problem := world.category_problem(self.categories, self.split)):
            problems.append((("categories",), problem))
        if problems:
            _fail(problems)
        return self


def world_class(name: str) -> Any:
    """The :class:`~vgrl.worlds.base.World` class ``name`` resolves to (a built-in world's module imports no
    torch); a one-line config error otherwise."""
    from vgrl import registry
    from vgrl.config.schema import _check_component, _fail
    from vgrl.worlds.base import World

    _check_component("worlds", name, ())
    try:
        cls = registry.resolve("worlds", name)
    except registry.RegistryError as e:
        _fail([((), str(e))])
    if not (isinstance(cls, type) and issubclass(cls, World)):
        _fail([((), f"{name!r} is not a vgrl world; valid: a subclass of vgrl.worlds.base.World")])
    return cls


def eval_problems(data: DataConfig, evaluation: EvalConfig) -> list[tuple[tuple, str]]:
    """``eval.split`` must be a split of ``data.world`` (the held-out evaluation samples it)."""
    if data.world is None:
        return []
    problem = world_class(data.world).split_problem(evaluation.split)
    return [] if problem is None else [(("eval", "split"), problem)]


class LoraConfig(BaseModel):
    """LoRA adapters (peft) on the denoiser; ``train.lora: null`` trains every parameter."""

    model_config = _MODEL

    rank: int = Field(16, ge=1, description="adapter rank r")
    alpha: float = Field(16.0, gt=0, description="scale numerator: the update is (alpha / r) B A")
    targets: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"], min_length=1,
                               description="module-name suffixes that get adapters")
    init_seed: int = Field(0, ge=0, description="seed of the adapters' random init")


class TrainConfig(BaseModel):
    """Optimisation: iterations, inner PPO epochs, minibatches, accumulation, clipping, EMA, budgets."""

    model_config = _MODEL

    iterations: int = Field(100, ge=1, description="rollout-and-update iterations")
    max_minutes: float | None = Field(None, gt=0, description="stop after this much training wall-clock "
                                                              "(evaluation excluded); null = no limit")
    lr: float = Field(1e-4, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    warmup_iterations: int = Field(0, ge=0, description="linear LR warm-up, in optimiser steps")
    lr_schedule: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="decay of the LR over the run's budget (the fraction of iterations or "
                                "max_minutes done, whichever is larger): constant, cosine or linear")
    lr_min_ratio: float = Field(0.0, ge=0, le=1, description="final LR of a decaying schedule, as a fraction "
                                                           "of lr")
    inner_epochs: int = Field(1, ge=1, description="passes over each rollout batch (PPO epochs)")
    minibatch_size: int | None = Field(None, ge=1, description="samples per forward/backward; null = batch_size")
    grad_accum: int = Field(1, ge=1, description="minibatches per optimiser step")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm; null = off")
    lora: LoraConfig | None = Field(default_factory=LoraConfig, description="null = full fine-tuning")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="EMA of trained weights (used by eval); null = off")
    reference: Literal["auto", "none"] = Field("auto", description="auto: a reference model when the "
                                                                    "algorithm needs one (LoRA: adapters off; "
                                                                    "full: a frozen copy)")
    max_consecutive_skips: int = Field(3, ge=1, description="stop after this many non-finite steps in a row")
    checkpoint_every: int = Field(10, ge=1, description="iterations between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null = torch's default")
    mixed_precision: MixedPrecision = Field(
        "no", description="autocast of the network forwards (fp32 master weights and optimiser); fp16 adds a "
                          "loss scaler and needs CUDA; needs deterministic: false. Rollouts and evaluation "
                          "follow it unless sampling.mixed_precision / eval.mixed_precision say otherwise")


class MonitorConfig(BaseModel):
    """Reward-hacking monitor at each evaluation (docs/hacking.md): the training reward on the evaluation
    samples (proxy) next to the checker's accuracy (gold), intra-prompt diversity and feature drift."""

    model_config = _MODEL

    patience: int = Field(3, ge=1, description="evaluations in a row of proxy up and gold down that warn")
    diversity_prompts: int = Field(16, ge=1, description="prompts of the diversity set (0 samples if off)")
    diversity_seeds: int = Field(4, ge=2, description="samples per prompt of the diversity set")
    feature_resolution: int = Field(96, ge=32, description="side the samples are resized to for EfficientNet-lite0")


class EvalConfig(BaseModel):
    """Periodic held-out evaluation with fixed prompts and seeds (deterministic sampler)."""

    model_config = _MODEL

    every: int | None = Field(10, ge=1, description="iterations between evaluations; null = only before/after")
    split: str = Field("heldout", description="prompt split of data.world the evaluation samples")
    per_category: int = Field(128, ge=1, description="fixed samples per category")
    num_steps: int | None = Field(None, ge=1, description="sampling steps; null = the model's, else sampling.num_steps")
    guidance_scale: float | None = Field(None, ge=1.0, description="null = the model's eval guidance, else sampling's")
    seed: int = Field(0, ge=0)
    batch_size: int = Field(128, ge=1)
    before: bool = Field(True, description="evaluate the base model before training")
    mixed_precision: MixedPrecision | None = Field(
        None, description="autocast of the evaluation's sampling; null = train.mixed_precision ('no' keeps "
                          "held-out numbers in fp32, comparable with 'vgrl eval')")
    monitor: MonitorConfig | None = Field(None, description="reward-hacking monitor (proxy vs gold, diversity, "
                                                           "feature drift); null = off")


class LogConfig(BaseModel):
    """Run artefacts: metrics.jsonl always; tensorboard, grids and the progress bar on request."""

    model_config = _MODEL

    tensorboard: bool = True
    grid_every: int | None = Field(10, ge=1, description="iterations between training-sample grids; null = off")
    save_rollouts: bool = Field(False, description="write each iteration's decoded images (PNG), prompts, "
                                                   "metadata, rewards and group ids to RUN/rollouts/iter_XXXXX/ "
                                                   "(input of 'vgrl pairs')")
    progress: bool = True
