"""Per-category checker accuracy of a generator on a world's prompt split, with fixed prompts and seeds.

The evaluation set is a pure function of (world, split, samples per category, seed): prompts of each
category are taken in a fixed shuffled order (cycling when a category has fewer prompts than
samples) and sample ``i`` of the set gets seed ``seed * 1_000_003 + i``. So two models, or one model
before and after training, are scored on exactly the same prompts and initial noise. The overall
accuracy is the mean over categories, as GenEval reports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import Progress

from vgrl.backbones.base import Backbone
from vgrl.rollout import StepPlan, kernel_for, rollout
from vgrl.worlds.base import World


@dataclass
class EvalSet:
    """Fixed prompts, metadata and seeds of an evaluation."""

    texts: list[str]
    metas: list
    categories: list[str]
    seeds: torch.Tensor


@dataclass
class EvalResult:
    """Accuracy (GenEval pass rate) and mean partial score per category, and overall (the mean over
    categories); and the world's own fields (``World.fields``), each per category (``fields[key]``) and
    overall (``overall_fields[key]``), also readable as attributes ``result.<key>`` / ``result.overall_<key>``
    and written to JSON under those names."""

    accuracy: dict[str, float]
    score: dict[str, float]
    overall_accuracy: float
    overall_score: float
    samples: int
    images: torch.Tensor | None = field(default=None, repr=False)
    fields: dict[str, dict[str, float]] = field(default_factory=dict)
    overall_fields: dict[str, float] = field(default_factory=dict)
    headline: str | None = None  # the world's first headline field: the gold metric of the hacking monitor
    passed: torch.Tensor | None = field(default=None, repr=False)  # (samples,) bool, each sample's verdict

    def __getattr__(self, name: str):
        fields = self.__dict__.get("fields", {})
        if name in fields:
            return fields[name]
        if name.startswith("overall_") and name[len("overall_"):] in fields:
            return self.__dict__["overall_fields"][name[len("overall_"):]]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def gold(self) -> float:
        """The headline field's overall value where the world declares one, else the overall accuracy."""
        return self.overall_accuracy if self.headline is None else self.overall_fields[self.headline]

    def as_dict(self) -> dict:
        out = {"overall_accuracy": self.overall_accuracy, "overall_score": self.overall_score,
               "accuracy": self.accuracy, "score": self.score, "samples": self.samples}
        for key, per_category in self.fields.items():
            out[f"overall_{key}"] = self.overall_fields[key]
            out[key] = per_category
        return out


def eval_set(world: World, split: str, per_category: int, seed: int = 0) -> EvalSet:
    """The fixed evaluation set: ``per_category`` samples of each category present in ``split``."""
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    texts, metas, cats = [], [], []
    gen = torch.Generator().manual_seed(seed)
    for category in world.categories:
        prompts = world.prompts(split, category)
        if not prompts:
            continue
        order = torch.randperm(len(prompts), generator=gen).tolist()
        for i in range(per_category):
            p = prompts[order[i % len(prompts)]]
            texts.append(p.text)
            metas.append(p.meta)
            cats.append(category)
    seeds = seed * 1_000_003 + torch.arange(len(texts), dtype=torch.int64)
    return EvalSet(texts, metas, cats, seeds)


def diversity_set(es: EvalSet, prompts: int, seeds: int) -> EvalSet:
    """``prompts`` prompts spread evenly over ``es``, each with ``seeds`` fixed seeds of its own (group ids:
    consecutive blocks of ``seeds``); the hacking monitor's intra-prompt diversity set."""
    picks = [round(i * len(es.texts) / prompts) for i in range(min(prompts, len(es.texts)))]
    texts = [es.texts[i] for i in picks for _ in range(seeds)]
    metas = [es.metas[i] for i in picks for _ in range(seeds)]
    cats = [es.categories[i] for i in picks for _ in range(seeds)]
    return EvalSet(texts, metas, cats, 7_000_003 + torch.arange(len(texts), dtype=torch.int64))


@torch.no_grad()
def evaluate(backbone: Backbone, world: World, es: EvalSet, *, num_steps: int, guidance_scale: float,
             kernel: str = "ode", batch_size: int = 64, keep_images: int = 0, progress: bool = True,
             **kernel_options) -> EvalResult:
    """Sample every prompt of ``es`` with its seed (deterministic sampler unless ``kernel`` says otherwise)."""
    k = kernel_for(backbone, kernel, **kernel_options)
    plan = StepPlan.ode(num_steps) if not k.stochastic else StepPlan.all(num_steps, record=[])
    keys = list(world.fields)
    passed, scores, kept = [], [], []
    values: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"eval {len(es.texts)} samples", total=len(es.texts))
        for lo in range(0, len(es.texts), batch_size):
            hi = min(lo + batch_size, len(es.texts))
            cond = backbone.encode(es.texts[lo:hi], guidance=guidance_scale > 1)
            traj = rollout(backbone, k, cond, num_steps, plan, seeds=es.seeds[lo:hi], guidance_scale=guidance_scale)
            images = backbone.decode(traj.x0)
            verdict = world.check(images, es.metas[lo:hi])
            passed.append(verdict.passed.float())
            scores.append(verdict.score.float())
            for key in keys:
                values[key].append(verdict.values[key].float())
            if sum(len(x) for x in kept) < keep_images:
                kept.append(images.cpu())
            bar.advance(task, hi - lo)
    passed_t, scores_t = torch.cat(passed), torch.cat(scores)
    cats = sorted(set(es.categories), key=es.categories.index)
    idx = {c: torch.tensor([i for i, x in enumerate(es.categories) if x == c]) for c in cats}
    acc = {c: passed_t[i].mean().item() for c, i in idx.items()}
    sco = {c: scores_t[i].mean().item() for c, i in idx.items()}
    images = torch.cat(kept)[:keep_images] if kept else None
    result = EvalResult(acc, sco, sum(acc.values()) / len(acc), sum(sco.values()) / len(sco), len(es.texts), images,
                        headline=next(iter(world.headline()), None), passed=passed_t.bool())
    for key in keys:
        value_t = torch.cat(values[key])
        result.fields[key] = {c: value_t[i].mean().item() for c, i in idx.items()}
        result.overall_fields[key] = sum(result.fields[key].values()) / len(idx)
    return result


@dataclass
class WorldEvaluator:
    """A fixed evaluation of one backbone during training: the same prompts, seeds and sampler each time."""

    backbone: Backbone
    world: World
    es: EvalSet
    num_steps: int
    guidance_scale: float
    batch_size: int = 128
    keep_images: int = 64

    @classmethod
    def from_config(cls, cfg, backbone: Backbone) -> WorldEvaluator:
        """From a run config's ``eval`` section; steps and guidance default to the model's ``vgrl.json``
        (``eval_steps``, ``eval_guidance``), else to the config's ``sampling``."""
        from vgrl import registry
        from vgrl.backbones.base import read_meta

        e = cfg.eval
        meta = read_meta(cfg.backbone.path) if cfg.backbone.path else {}
        world = registry.resolve("worlds", cfg.data.world)(resolution=cfg.backbone.resolution)
        if (problem := world.split_problem(e.split)) is not None:
            raise ValueError(f"eval.split: {problem}")
        steps = e.num_steps or meta.get("eval_steps", cfg.sampling.num_steps)
        guidance = e.guidance_scale or meta.get("eval_guidance", cfg.sampling.guidance_scale)
        return cls(backbone, world, eval_set(world, e.split, e.per_category, e.seed), steps, guidance, e.batch_size)

    def run(self, progress: bool = True, keep_images: int | None = None, es: EvalSet | None = None) -> EvalResult:
        """Evaluate the fixed set (or ``es``), keeping the first ``keep_images`` samples (default 64)."""
        return evaluate(self.backbone, self.world, es or self.es, num_steps=self.num_steps,
                        guidance_scale=self.guidance_scale, batch_size=self.batch_size,
                        keep_images=self.keep_images if keep_images is None else keep_images, progress=progress)


def run(model: str, world_name: str = "shapes", split: str = "heldout", *, per_category: int = 128,
        num_steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
        out_dir: str = "runs/eval", kernel: str = "ode", negative_model: str | None = None,
        device: str = "auto", label: str | None = None) -> EvalResult:
    """``vgrl eval``: load a pipeline directory, score it, print the table, write eval.json and a grid.

    Sampling settings default to the ones a vgrl-trained model records in its ``vgrl.json``
    (``eval_steps``, ``eval_guidance``), else 10 steps and guidance 1. ``negative_model``: a pipeline
    directory whose denoiser replaces the model's in the unconditional CFG branch (Diffusion-NPO,
    :class:`vgrl.algorithms.npo.NegativeGuidance`). ``device``: auto | cpu | cuda | cuda:N, as ``backbone.device``.
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from vgrl import backbones, registry
    from vgrl.backbones.base import read_meta
    from vgrl.device import resolve_device
    from vgrl.media import save_grid

    where = resolve_device(device)
    meta = read_meta(model)
    backbone = backbones.load(model).to(where)
    num_steps = num_steps or meta.get("eval_steps", 10)
    guidance_scale = guidance_scale or meta.get("eval_guidance", 1.0)
    if negative_model is not None:
        from vgrl.algorithms.npo import NegativeGuidance

        if guidance_scale <= 1:
            raise ValueError(f"--negative-model acts through classifier-free guidance; give --guidance > 1 "
                             f"(got {guidance_scale})")
        backbone = NegativeGuidance(backbone, backbones.load(negative_model).to(where))
    world = registry.resolve("worlds", world_name)(resolution=meta.get("resolution", 32))
    world.check_split(split)
    es = eval_set(world, split, per_category, seed)
    result = evaluate(backbone, world, es, num_steps=num_steps, guidance_scale=guidance_scale, kernel=kernel,
                      keep_images=64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": str(label or model), "negative_model": negative_model, "world": world_name, "split": split, "num_steps": num_steps,
              "guidance_scale": guidance_scale, "kernel": kernel, "seed": seed, **result.as_dict()}
    (out / "eval.json").write_text(json.dumps(record, indent=2))
    if result.images is not None:
        save_grid(result.images, out / "grid.png", nrow=8, scale=3, passed=result.passed[:len(result.images)].tolist())
    table = Table(title=f"{world_name}/{split}: {Path(label or model).name} ({num_steps} steps, guidance {guidance_scale})")
    labels = [f.label for f in world.fields.values()]
    for col in ("category", "accuracy", "score", *labels, "samples"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for c in result.accuracy:
        table.add_row(c, f"{result.accuracy[c]:.3f}", f"{result.score[c]:.3f}",
                      *(f"{result.fields[k][c]:.3f}" for k in world.fields), str(es.categories.count(c)))
    table.add_row("overall", f"{result.overall_accuracy:.3f}", f"{result.overall_score:.3f}",
                  *(f"{result.overall_fields[k]:.3f}" for k in world.fields), str(result.samples))
    Console().print(table)
    print(f"wrote {out / 'eval.json'}" + (f" and {out / 'grid.png'}" if result.images is not None else ""))
    return result
