"""``vgrl train``: the one training loop, readable top to bottom.

One iteration (DESIGN.md)::

    prompts --repeat xG--> cond = backbone.encode(prompts)
    COLLECT  traj = rollout(...)                     no grad; records x_t, x_next, t, old log-probs, x0, seeds;
                                                     in algorithm.sampling_policy (current weights by default)
    SCORE    r = reward(backbone.decode(traj.x0), prompts, metadata)
    PREPARE  batch = algorithm.prepare(traj, r, group_ids, prompts, metadata)
             batch = algorithm.before_update(backbone, batch)   no grad, training precision; a no-op by default
    UPDATE   for each inner epoch, optimiser step, minibatch and unit: backward(loss / (units x grad_accum));
             average gradients over processes; skip the step if anything is non-finite; clip; step; EMA
    LOG / EVAL / SAVE

Exactness: every random draw of the loop comes from a named ``torch.Generator`` (prompts, seeds,
minibatch order) saved in each checkpoint with the optimiser, LR schedule, EMA, algorithm state and
counters (:mod:`vgrl.training.state`), so a resumed run continues bit for bit (fp32, ``deterministic: true``, CPU). The policy is
kept in eval mode throughout (no dropout), so the importance ratio is exactly 1 at the first inner
step after a rollout.

Devices (:mod:`vgrl.device`): the networks, rollouts and losses live on ``backbone.device``; random
draws stay on CPU generators; ``prepare`` (advantages, algorithm state) runs on the CPU; network
forwards run under ``train.mixed_precision``'s autocast with fp32 master weights; rollouts under
``sampling.mixed_precision`` and evaluation under ``eval.mixed_precision`` (each defaults to the training one).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vgrl.config import RunConfig, save_config
from vgrl.training.policy import ema_weights
from vgrl.rewards.base import NonFiniteRewardError
from vgrl.rollout import make_seeds, rollout
from vgrl.training.build import Run, build
from vgrl.training import TrainingError, TrainingFailed
from vgrl.training.state import Counters, restore, resume_point, save
from vgrl.training.schedule import budget_fraction
from vgrl.types import Batch, RewardOutput

__all__ = ["Collected", "Counters", "Run", "TrainingError", "build", "collect", "evaluate", "export", "iterate",
           "prepare", "train", "update"]


# ----------------------------------------------------------------------------------------------- train


def train(cfg: RunConfig, run_dir: str | Path | None = None, resume: str | None = None) -> dict:
    """Train per ``cfg``; write the run directory; return ``summary.json``'s content.

    Args:
        run_dir: output directory (default ``cfg.run_dir``, else ``runs/train``).
        resume: ``"auto"`` (newest complete checkpoint in ``run_dir``, or a fresh start), or a
            checkpoint directory.
    """
    from vgrl.evaluation.report import write_report
    from vgrl.training.tracking import Progress, Tracker

    run_dir = Path(run_dir or cfg.run_dir or "runs/train")
    start_from = resume_point(run_dir, resume, cfg)  # refuses a used run folder or another run's config, fast
    run = build(cfg)
    counters, before = Counters(), None
    run.dist.barrier()  # every process has checked before the main one writes
    if start_from is not None:
        counters, before = restore(run, start_from)
    if resume is not None and run.dist.main:
        print(f"resuming {run_dir} from {start_from} (iteration {counters.iteration})" if start_from is not None
              else f"--resume {resume}: no complete checkpoint in {run_dir / 'checkpoints'}; starting afresh")
    _apply_schedule(run, counters)
    if run.dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    # a resumed run re-does what came after its checkpoint; '--resume auto' with no checkpoint restarts
    resume_iteration = counters.iteration if start_from is not None else (-1 if resume == "auto" else None)
    tracker = Tracker(run_dir, cfg.log.tensorboard, resume_iteration=resume_iteration) if run.dist.main else None
    if cfg.log.save_rollouts and run.dist.main:
        run.rollout_dir = run_dir / "rollouts"
    if counters.iteration == 0 and cfg.eval.before:
        before = evaluate(run, counters, tracker, "eval_before")
    last_eval = before if counters.iteration == 0 else None

    progress = Progress(cfg.train, counters, enabled=cfg.log.progress and run.dist.main)
    while not _finished(cfg, counters):
        started = time.perf_counter()
        row, images = iterate(run, counters)
        counters.wall_seconds += time.perf_counter() - started
        counters.iteration += 1
        counters.images += cfg.batch_size if run.pairs is None else 0  # offline: no image is generated
        row.update(iteration=counters.iteration, images=counters.images, wall_seconds=counters.wall_seconds)
        _apply_schedule(run, counters)  # the LR of the next iteration's optimiser steps
        if tracker is not None:
            tracker.log(row)
            if cfg.log.grid_every and counters.iteration % cfg.log.grid_every == 0 and images is not None:
                tracker.image(f"train_{counters.iteration:06d}", images[:64], counters.iteration,
                              layout=run.backbone.layout)
        progress.update(row)
        last_eval = None
        if cfg.eval.every and counters.iteration % cfg.eval.every == 0 and not _finished(cfg, counters):
            last_eval = evaluate(run, counters, tracker, None)
        if counters.iteration % cfg.train.checkpoint_every == 0:
            save(run, counters, before, run_dir)
    progress.close()

    after = last_eval if last_eval is not None else evaluate(run, counters, tracker, "eval_after")
    save(run, counters, before, run_dir)
    if run.dist.main:
        export(run, run_dir / "final" / "pipeline", counters)
    world = run.evaluator.world if run.evaluator is not None else None
    headline = world.headline() if world is not None else ()
    summary = _summary(cfg, counters, before, after, headline)
    if run.dist.main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        tracker.close()
        write_report(run_dir)
        _print_summary(summary, run_dir, {key: world.fields[key].label for key in headline})
    run.dist.barrier()
    return summary


# ------------------------------------------------------------------------------------------- iterate


def iterate(run: Run, counters: Counters) -> tuple[dict, Tensor | None]:
    """One COLLECT / SCORE / PREPARE / UPDATE iteration; returns its log row and the decoded images."""
    if run.pairs is not None:
        return iterate_pairs(run, counters), None
    g = run.cfg.group_size
    t0 = time.perf_counter()
    c = collect(run)
    row: dict[str, Any] = {"kind": "train"}
    try:
        reward = run.reward(c.images, c.prompts, c.metadata)
    except NonFiniteRewardError as e:
        return _skip(run, counters, row, "non-finite reward", [c.ids[i // g] for i in e.samples]), c.images
    scores = run.dist.gather(reward.scores.detach())
    row.update(reward_mean=scores.mean().item(), reward_std=scores.std(unbiased=False).item(),
               seconds_rollout=time.perf_counter() - t0, **_detail_means(reward.details, len(c.images)),
               **_category_means(scores, c.draw.metas, g))
    if run.rollout_dir is not None:
        from vgrl.data.preferences import save_rollouts

        rows = range(len(c.prompts))
        save_rollouts(run.rollout_dir / f"iter_{counters.iteration + 1:05d}", c.images, c.prompts, c.metadata,
                      scores.tolist(), [i // g for i in rows], [c.ids[i // g] for i in rows], c.traj.seeds.tolist(),
                      layout=run.backbone.layout)
    batch = prepare(run, c, reward, scores)
    bad = (~torch.isfinite(batch.adv)).nonzero().flatten().tolist()
    if run.dist.any(bool(bad)):
        return _skip(run, counters, row, "non-finite advantage", sorted({c.ids[i // g] for i in bad})), c.images
    if len(batch) == 0:  # a pairwise algorithm found no pair above its margin: nothing to learn from
        row["empty_batch"] = 1.0
        return row, c.images
    t1 = time.perf_counter()
    with torch.no_grad(), run.precision.autocast():
        batch = run.algorithm.before_update(run.backbone, batch.to(run.device))
    row.update(update(run, counters, batch))
    row["seconds_update"] = time.perf_counter() - t1
    return row, c.images


@dataclass
class Collected:
    """COLLECT's output: this process's share of one rollout (its prompt groups, expanded x ``group_size``)."""

    draw: Any              # the global draw of prompts (every process holds all of them)
    groups: slice          # this process's prompt groups
    prompts: list[str]
    metadata: list[Any]
    ids: list[int]         # prompt ids of this process's groups
    traj: Any
    images: Tensor


def collect(run: Run) -> Collected:
    """Draw prompts and seeds from the run's generators, roll out (in ``sampling.mixed_precision`` and the
    algorithm's sampling policy) and decode: COLLECT of one iteration."""
    cfg, g = run.cfg, run.cfg.group_size
    draw = run.sampler.draw(cfg.batch_size // g)
    seeds = make_seeds(cfg.batch_size, run.generators["seeds"])
    groups = run.dist.shard(len(draw.texts))
    texts, metas = draw.texts[groups], draw.metas[groups]
    cond = run.backbone.encode(texts, guidance=cfg.sampling.guidance_scale > 1).repeat_interleave(g)
    with run.sampling_precision.autocast(), run.algorithm.sampling_policy(run.backbone):
        traj = rollout(run.backbone, run.kernel, cond, cfg.sampling.num_steps, run.plan,
                       seeds=seeds[groups.start * g: groups.stop * g], guidance_scale=cfg.sampling.guidance_scale)
        with torch.no_grad():
            images = run.backbone.decode(traj.x0)
    return Collected(draw, groups, [p for p in texts for _ in range(g)], [m for m in metas for _ in range(g)],
                     draw.ids[groups], traj, images)


def iterate_pairs(run: Run, counters: Counters) -> dict:
    """One offline iteration: the next ``batch_size`` pairs of the preference dataset instead of a rollout
    (epochs of seeded permutations, a function of the iteration: resume reads the same pairs)."""
    from vgrl.algorithms._pairs import offline_batch

    cfg = run.cfg
    t0 = time.perf_counter()
    idx = run.pairs.order(counters.iteration, cfg.batch_size, cfg.seed)
    seeds = make_seeds(len(idx), run.generators["seeds"])
    mine = run.dist.shard(len(idx))
    batch = offline_batch(run.backbone, run.pairs, idx[mine], seeds[mine], cfg.sampling.num_steps)
    row: dict[str, Any] = {"kind": "train", "pairs": len(idx), "seconds_load": time.perf_counter() - t0}
    t1 = time.perf_counter()
    row.update(update(run, counters, batch.to(run.device)))
    row["seconds_update"] = time.perf_counter() - t1
    return row


def _detail_means(details: dict, batch: int) -> dict[str, float]:
    """``reward/<key>``: the mean of every per-sample numeric detail of the reward (this process's samples) —
    a composition's terms, a win rate's inner scores, the checker's pass rate."""
    out = {}
    for key, value in details.items():
        if isinstance(value, Tensor) and value.shape == (batch,) and (value.is_floating_point()
                                                                      or value.dtype == torch.bool):
            out[f"reward/{key}"] = value.detach().float().mean().item()
    return out


def _category_means(scores: Tensor, metas, group_size: int) -> dict[str, float]:
    """``reward_by_category/<category>``: the mean reward of this rollout's samples of each prompt category
    drawn (world prompts only; ``scores`` is the gathered batch, prompt ``i`` owning rows ``i*G .. i*G+G-1``), so
    the training reward can be read per category beside the evaluation's per-category accuracy."""
    cats = [getattr(m, "category", None) for m in metas]
    if any(c is None for c in cats):
        return {}
    per_sample = [c for c in cats for _ in range(group_size)]
    return {f"reward_by_category/{c}": scores[[i for i, x in enumerate(per_sample) if x == c]].mean().item()
            for c in dict.fromkeys(cats)}


def prepare(run: Run, c: Collected, reward: RewardOutput, scores: Tensor) -> Batch:
    """``algorithm.prepare`` on the *global* batch (every process holds all prompts and, gathered, all
    scores and dense maps, so advantages, per-prompt statistics and algorithm state are the same on every
    process, and ``prepare`` sees the same inputs with one process or many: the gathered scores and maps, not
    the reward's per-process details); this process keeps its own rows. It runs on the CPU (rewards are moved there; the trajectory stays put)."""
    g = run.cfg.group_size
    prompts = [p for p in c.draw.texts for _ in range(g)]
    metadata = [m for m in c.draw.metas for _ in range(g)]
    group_ids = torch.arange(len(c.draw.texts)).repeat_interleave(g)
    dense = None if reward.dense is None else run.dist.gather(reward.dense.detach().contiguous())
    full = run.algorithm.prepare(c.traj, RewardOutput(scores=scores, dense=dense).to("cpu"), group_ids, prompts,
                                 metadata)
    if run.dist.world == 1:
        return full
    rows = torch.arange(c.groups.start * g, c.groups.stop * g)
    pick = (lambda seq: None if seq is None else [seq[i] for i in rows.tolist()])
    return Batch(traj=c.traj, rewards=full.rewards[rows], adv=full.adv[rows], group_ids=full.group_ids[rows],
                 prompts=pick(full.prompts), metadata=pick(full.metadata),
                 weights=None if full.weights is None else full.weights[rows])


def update(run: Run, counters: Counters, batch: Batch) -> dict[str, float]:
    """Inner epochs over the batch: optimiser steps of ``grad_accum`` minibatches each."""
    t = run.cfg.train
    local_mb = t.minibatch_size // run.dist.world
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for _ in range(t.inner_epochs):
        order = torch.randperm(len(batch), generator=run.generators["shuffle"])
        minibatches = list(order.split(local_mb))
        for lo in range(0, len(minibatches), t.grad_accum):
            step_metrics = optimizer_step(run, counters, batch, minibatches[lo: lo + t.grad_accum])
            for k, v in step_metrics.items():  # a skipped step reports only ``skipped``
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
    return {k: v / counts[k] for k, v in sums.items()}


def optimizer_step(run: Run, counters: Counters, batch: Batch, minibatches: list[Tensor]) -> dict[str, float]:
    """Accumulate the mean loss over ``minibatches`` x units, then one guarded optimiser step.

    Under fp16 the loss is scaled before ``backward`` and the averaged gradients unscaled before the
    finiteness check; a step that overflows the loss scale is skipped (the scaler halves its scale) and
    does not count towards ``max_consecutive_skips`` while the scale is above 1."""
    metrics: dict[str, float] = {}
    n_terms, poisoned, bad_grad = 0, False, False
    for rows in minibatches:
        mb = batch.index(rows)
        units = run.algorithm.units(mb)
        for unit in units:
            with run.precision.autocast():
                loss, m = run.algorithm.loss(run.backbone, run.kernel, mb, unit, run.ref)
            if not bool(torch.isfinite(loss)):
                poisoned = True
                break
            run.precision.backward(loss / (len(units) * len(minibatches)))
            n_terms += 1
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + v
            metrics["loss"] = metrics.get("loss", 0.0) + loss.item()
        if poisoned:
            break
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in run.params]
    poisoned = run.dist.any(poisoned)
    if not poisoned:
        run.dist.mean_(grads)
        for p, g in zip(run.params, grads):
            p.grad = g
        run.precision.unscale_(run.optimizer)
        bad_grad = run.dist.any(not all(bool(torch.isfinite(g).all()) for g in grads))
    if poisoned or bad_grad:
        run.optimizer.zero_grad(set_to_none=True)
        counters.skipped_steps += 1
        if bad_grad and run.precision.skipped():  # fp16 loss-scale overflow: the scaler has lowered its scale
            return {"skipped": 1.0, "scale_overflow": 1.0}
        counters.consecutive_skips += 1
        if counters.consecutive_skips >= run.cfg.train.max_consecutive_skips:
            raise TrainingFailed(f"{counters.consecutive_skips} consecutive optimiser steps had a non-finite loss "
                                f"or gradient (iteration {counters.iteration + 1}); lower train.lr, check the "
                                "reward, or raise train.max_consecutive_skips")
        return {"skipped": 1.0}
    norm = torch.nn.utils.clip_grad_norm_(run.params, run.cfg.train.max_grad_norm or math.inf)
    lr = run.cfg.train.lr * run.schedule(counters.optimizer_steps)  # the LR of this step: its one writer
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.precision.step(run.optimizer)
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.step(run.params)
    counters.optimizer_steps += 1
    counters.consecutive_skips = 0
    out = {k: v / max(n_terms, 1) for k, v in metrics.items()}
    out.update(grad_norm=float(norm), lr=lr, skipped=0.0)
    if run.precision.scaler is not None:
        out["loss_scale"] = run.precision.scaler.get_scale()
    return out


def _skip(run: Run, counters: Counters, row: dict, reason: str, prompt_ids: list[int]) -> dict:
    """Record an iteration skipped before its update; stop after too many in a row."""
    counters.skipped_steps += 1
    counters.consecutive_skips += 1
    if counters.consecutive_skips >= run.cfg.train.max_consecutive_skips:
        raise TrainingFailed(f"{counters.consecutive_skips} consecutive steps skipped; last: {reason} for prompts "
                            f"{prompt_ids} at iteration {counters.iteration + 1}")
    row.update(skipped=1.0, skip_reason=reason, skip_prompt_ids=prompt_ids)
    return row


# ------------------------------------------------------------------------------------- evaluate / save


def evaluate(run: Run, counters: Counters, tracker, grid: str | None) -> dict | None:
    """Held-out evaluation on the main process (EMA weights when enabled); logged as an ``eval`` row."""
    if run.evaluator is None:
        return None
    result = None
    if run.dist.main:
        started = time.perf_counter()
        with ema_weights(run.ema, run.params):
            with run.eval_precision.autocast():
                res = run.evaluator.run(progress=run.cfg.log.progress,
                                        keep_images=len(run.evaluator.es.texts) if run.monitor else None)
            watch = _monitor(run, res) if run.monitor else {}
        seconds = time.perf_counter() - started
        counters.eval_seconds += seconds
        result = {**res.as_dict(), **watch, "eval_seconds": seconds}
        tracker.log({"kind": "eval", "iteration": counters.iteration, "images": counters.images,
                     "wall_seconds": counters.wall_seconds, **result})
        if watch.get("hacking_warning"):
            from rich.console import Console

            Console(stderr=True).print(
                f"[bold yellow]warning:[/] possible reward hacking at iteration {counters.iteration}: the training "
                f"reward rose while held-out accuracy fell for {run.monitor.patience} evaluations in a row "
                "(docs/hacking.md)")
        if grid and res.images is not None:
            n = min(len(res.images), run.evaluator.keep_images)
            captions = list(zip(run.evaluator.es.texts[:n], res.passed[:n].tolist()))
            tracker.image(grid, res.images[:n], counters.iteration, layout=run.backbone.layout, captions=captions)
    run.dist.barrier()
    return result


def _monitor(run: Run, res) -> dict[str, float]:
    """The reward-hacking monitor's metrics for evaluation ``res`` (which kept every sample)."""
    from vgrl.evaluation.world_eval import diversity_set

    m, ev = run.cfg.eval.monitor, run.evaluator
    div = diversity_set(ev.es, m.diversity_prompts, m.diversity_seeds)
    with run.eval_precision.autocast():
        div_images = ev.run(progress=False, keep_images=len(div.texts), es=div).images
    groups = torch.arange(len(div.texts)) // m.diversity_seeds
    # gold: the world's headline field where it declares one (a rule-gaming-proof accuracy), else the accuracy
    return run.monitor.observe(res.images, ev.es.texts, ev.es.metas, res.gold, div_images, groups)


def export(run: Run, out: Path, counters: Counters, extra: dict | None = None) -> Path:
    """The trained model as a diffusers pipeline directory (EMA weights when enabled, LoRA merged); ``extra``
    goes into its ``vgrl.json`` beside the training counters (:func:`vgrl.training.export.export_model`)."""
    from vgrl.training.export import export_model

    return export_model(run.cfg, run.backbone, run.params, run.ema, out, counters.iteration, counters.images, extra)


def _apply_schedule(run: Run, counters: Counters) -> None:
    """Advance the LR schedule to the fraction of the run's budget done so far (:mod:`vgrl.training.schedule`); the
    LR of each optimiser step is set from it right before the step, a pure function of the counters, so a resumed
    run sets the same LR."""
    t = run.cfg.train
    run.schedule.progress = budget_fraction(counters.iteration, counters.wall_seconds, t.iterations, t.max_minutes)


def _finished(cfg: RunConfig, counters: Counters) -> bool:
    budget = cfg.train.max_minutes
    return counters.iteration >= cfg.train.iterations or (budget is not None and counters.wall_seconds >= budget * 60)


def _summary(cfg: RunConfig, counters: Counters, before: dict | None, after: dict | None,
             headline: tuple[str, ...] = ()) -> dict:
    """``summary.json``: held-out accuracy before -> after and, for each of the world's ``headline`` fields
    (``World.headline()``), ``heldout_<key>_before`` / ``_after``; budgets and counters."""
    acc = (lambda r: None if r is None else r["overall_accuracy"])
    gain = None if before is None or after is None else after["overall_accuracy"] - before["overall_accuracy"]
    out = {"heldout_accuracy_before": acc(before), "heldout_accuracy_after": acc(after), "gain_points":
           None if gain is None else round(100 * gain, 2)}
    for key in headline:
        out.update({f"heldout_{key}_{when}": None if r is None else r.get(f"overall_{key}")
                    for when, r in (("before", before), ("after", after))})
    return {**out, "images_generated": counters.images,
            "wall_seconds": round(counters.wall_seconds, 2), "eval_seconds": round(counters.eval_seconds, 2),
            "iterations": counters.iteration, "optimizer_steps": counters.optimizer_steps,
            "skipped_steps": counters.skipped_steps, "eval_split": cfg.eval.split if cfg.data.world else None,
            "before": before, "after": after, "algorithm": cfg.algorithm.name, "kernel": cfg.kernel.name}


def _print_summary(summary: dict, run_dir: Path, labels: dict[str, str] | None = None) -> None:
    """The summary in a few lines; ``labels``: human names of the world's headline fields (key -> label)."""
    from rich.console import Console

    before, after = summary["heldout_accuracy_before"], summary["heldout_accuracy_after"]
    console = Console()
    if before is not None and after is not None:
        console.print(f"held-out accuracy {before:.3f} -> {after:.3f} ({summary['gain_points']:+.1f} points)")
        for key, label in (labels or {}).items():
            s0, s1 = summary.get(f"heldout_{key}_before"), summary.get(f"heldout_{key}_after")
            if s0 is not None and s1 is not None:
                console.print(f"{label} {s0:.3f} -> {s1:.3f} ({100 * (s1 - s0):+.1f} points)")
    console.print(f"{summary['images_generated']} images, {summary['wall_seconds'] / 60:.1f} min training "
                  f"(+{summary['eval_seconds'] / 60:.1f} min evaluation) -> {run_dir / 'summary.json'}, "
                  f"{run_dir / 'report.html'}")
