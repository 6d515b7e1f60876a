"""BUILD: everything a training run needs, made from its config once — devices and precisions, the reward and
algorithm (their options validated), the backbone with its LoRA, reference, optimiser, LR schedule and EMA, the
prompt sampler, random generators and the held-out evaluator — checked against each other before any model is
loaded where possible. :mod:`vgrl.training.loop` runs the loop over the :class:`Run` this returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vgrl import backbones, registry
from vgrl.training import TrainingError, distributed
from vgrl.algorithms.base import check_compatible
from vgrl.config import RunConfig
from vgrl.device import DeviceError, Precision, resolve_device, set_deterministic
from vgrl.training.policy import PromptSampler, Reference, add_lora
from vgrl.rollout import kernel_for, plan_from_config
from vgrl.training.schedule import LRSchedule

if TYPE_CHECKING:  # pragma: no cover
    from diffusers.training_utils import EMAModel

    from vgrl.algorithms.base import Algorithm
    from vgrl.backbones.base import Backbone
    from vgrl.data.preferences import PreferenceDataset
    from vgrl.evaluation.monitor import HackingMonitor
    from vgrl.evaluation.world_eval import WorldEvaluator
    from vgrl.kernels.base import Kernel
    from vgrl.rewards.base import Reward
    from vgrl.rollout import StepPlan


@dataclass
class Run:
    """Everything built from the config, once."""

    cfg: RunConfig
    dist: distributed.Dist
    backbone: Backbone
    kernel: Kernel
    plan: StepPlan
    reward: Reward
    algorithm: Algorithm
    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ref: Reference | None
    ema: EMAModel | None
    sampler: PromptSampler
    generators: dict[str, torch.Generator]
    evaluator: WorldEvaluator | None
    pairs: PreferenceDataset | None = None  # the preference dataset of an offline pairwise run (data.preferences)
    rollout_dir: Path | None = None    # log.save_rollouts: where each iteration's samples are written
    monitor: HackingMonitor | None = None  # eval.monitor: the reward-hacking monitor
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # backbone.device, resolved
    precision: Precision = field(default_factory=Precision)                    # train.mixed_precision
    sampling_precision: Precision = field(default_factory=Precision)           # sampling.mixed_precision
    eval_precision: Precision = field(default_factory=Precision)               # eval.mixed_precision
    schedule: LRSchedule = field(default_factory=LRSchedule)   # the LR factor: the only writer of the LR


def build(cfg: RunConfig) -> Run:
    """Components from the config, checked against each other before any model is loaded."""
    from vgrl.evaluation.world_eval import WorldEvaluator

    dist = distributed.init(cpu=cfg.backbone.device == "cpu" or not torch.cuda.is_available())
    try:
        device = resolve_device(cfg.backbone.device, dist.device, dist.world)
        modes = cfg.precisions()
        precision = Precision.build(modes["train"], device)
        sampling_precision = Precision.build(modes["sampling"], device, "sampling.mixed_precision", training=False)
        eval_precision = Precision.build(modes["eval"], device, "eval.mixed_precision", training=False)
    except DeviceError as e:
        raise TrainingError(str(e)) from None
    set_deterministic(cfg.deterministic, device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.batch_size % (cfg.group_size * dist.world) or cfg.train.minibatch_size % dist.world:
        raise TrainingError(f"batch_size {cfg.batch_size} (groups of {cfg.group_size}) and train.minibatch_size "
                            f"{cfg.train.minibatch_size} must split evenly over {dist.world} processes")
    reward = component("rewards", "reward", cfg.reward)
    check_layouts(cfg, reward)
    algorithm = component("algorithms", "algorithm", cfg.algorithm, reward=reward)
    pairs = _preference_data(cfg, algorithm, dist)
    torch.manual_seed(cfg.seed)
    try:
        backbone = backbones.build(cfg.backbone)
    except ValueError as e:  # a setting the model cannot take (backbone.frames, resolution, prediction)
        raise TrainingError(str(e)) from None
    try:
        backbone.to(device)
    except NotImplementedError as e:
        raise TrainingError(f"backbone.device: {e}") from None
    kernel = kernel_for(backbone, cfg.kernel.name, **cfg.kernel.options())
    plan = plan_from_config(cfg.sampling.plan, cfg.sampling.num_steps)
    use_ref = algorithm.needs.reference and cfg.train.reference == "auto"
    try:
        check_compatible(algorithm, kernel, reward, group_size=cfg.group_size, has_reference=use_ref)
    except ValueError as e:
        raise TrainingError(str(e)) from None
    if algorithm.needs.step_log_probs and sampling_precision.mode != precision.mode:
        raise TrainingError(f"sampling.mixed_precision: {sampling_precision.mode!r} differs from train.mixed_precision "
                            f"{precision.mode!r}, but {cfg.algorithm.name!r} recomputes the rollout's log-probs "
                            "in training precision (the importance ratio would not start at 1); valid: null")

    module = backbone.trainable()
    module.eval()
    lora = cfg.train.lora
    if lora is not None:
        add_lora(module, lora.rank, lora.alpha, lora.targets, lora.init_seed)
    ref = Reference(backbone, lora=lora is not None) if use_ref else None
    params = [p for p in module.parameters() if p.requires_grad]
    precision.master_weights(params)
    t = cfg.train
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas), weight_decay=t.weight_decay)
    schedule = LRSchedule(t.lr_schedule, t.warmup_iterations, t.lr_min_ratio)
    ema = None
    if t.ema_decay is not None:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=t.ema_decay, use_ema_warmup=False)
    sampler = prompt_sampler(cfg)
    generators = {name: torch.Generator().manual_seed(cfg.seed * 1000 + i)
                  for i, name in enumerate(("seeds", "shuffle"))}
    try:
        evaluator = WorldEvaluator.from_config(cfg, backbone) if cfg.data.world else None
    except ValueError as e:
        raise TrainingError(str(e)) from None
    monitor = None
    if cfg.eval.monitor is not None and evaluator is not None:
        from vgrl.evaluation.monitor import HackingMonitor

        monitor = HackingMonitor(reward, cfg.eval.monitor.patience, cfg.eval.monitor.feature_resolution)
    return Run(cfg, dist, backbone, kernel, plan, reward, algorithm, module, params, optimizer, ref, ema,
               sampler, generators, evaluator, pairs=pairs, monitor=monitor, device=device, precision=precision,
               sampling_precision=sampling_precision, eval_precision=eval_precision, schedule=schedule)


def _preference_data(cfg: RunConfig, algorithm, dist: distributed.Dist):
    """The validated preference dataset of an offline pairwise run (None otherwise); see ``dataset_for_run``."""
    from vgrl.data.preferences import dataset_for_run

    try:
        return dataset_for_run(cfg, algorithm, dist.world)
    except ValueError as e:
        raise TrainingError(str(e)) from None


def check_layouts(cfg: RunConfig, reward) -> None:
    """Refuse, in one line naming both sides, a backbone whose sample layout (``Backbone.layout``, read from the
    class: no weights are loaded) the reward (``reward.layouts``) or the world (``World.layout``) does not accept."""
    from vgrl.layouts import LayoutError, check_agree

    backbone = registry.resolve("backbones", cfg.backbone.name)
    consumers = {f"reward {cfg.reward.name!r}": tuple(reward.layouts)}
    if cfg.data.world is not None:
        consumers[f"world {cfg.data.world!r}"] = (registry.resolve("worlds", cfg.data.world).layout,)
    try:
        check_agree(f"backbone {cfg.backbone.name!r}", backbone.layout, consumers)
    except LayoutError as e:
        raise TrainingError(str(e)) from None


def component(kind: str, key: str, section, **runtime):
    """Build a reward / algorithm, turning its options' validation errors into ``key.option: ...`` lines
    (``key``: the config section, e.g. ``reward``)."""
    from pydantic import ValidationError

    cls = registry.resolve(kind, section.name)
    try:
        if kind == "rewards":
            return cls.from_config(section.options())
        options = cls.Options(**section.options())
    except ValidationError as e:
        lines = [f"{key}.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise TrainingError(f"invalid {key} options for {section.name!r}:\n  " + "\n  ".join(lines)) from None
    except (TypeError, ValueError, LookupError) as e:
        raise TrainingError(f"invalid {key} options for {section.name!r}: {e}") from None
    return cls(options, **runtime)


def prompt_sampler(cfg: RunConfig) -> PromptSampler:
    if cfg.prompts is not None:
        return PromptSampler(list(cfg.prompts), [None] * len(cfg.prompts), list(cfg.prompts), cfg.seed)
    world = registry.resolve("worlds", cfg.data.world)(resolution=cfg.backbone.resolution)
    problem = world.split_problem(cfg.data.split)
    if problem is None and cfg.data.categories is not None:
        problem = world.category_problem(cfg.data.categories, cfg.data.split)
    if problem is not None:
        raise TrainingError(f"data.{'split' if cfg.data.split not in world.splits else 'categories'}: {problem}")
    prompts = world.prompts(cfg.data.split)
    if cfg.data.categories is not None:
        prompts = [p for p in prompts if p.meta.category in cfg.data.categories]
    return PromptSampler([p.text for p in prompts], [p.meta for p in prompts],
                         [p.meta.category for p in prompts], cfg.seed)
