"""Peer benchmark: TRL's DDPOTrainer against vgrl's ``ddpo`` (and vgrl's ``nft``) on the shapes SD model.

Three trainings of the shipped Stable-Diffusion-compatible shapes model (``models/shapes-sd/pipeline``)
on the shapes world's training prompts, rewarded by the shapes checker's partial credit, one after
the other in one invocation, each on the same number of CPU threads:

1. **TRL DDPO** — ``trl.DDPOTrainer`` 0.23.1 with ``DefaultDDPOStableDiffusionPipeline`` (LoRA rank 4,
   alpha 4 on to_q/to_k/to_v/to_out.0, TRL's hard-coded adapter), run as a subprocess in the separate
   TRL virtualenv by ``benchmarks/_trl_ddpo_run.py``;
2. **vgrl ddpo** — ``vgrl train`` with the same settings: DDIM eta 1 with every step recorded, the same
   steps, guidance, images per epoch, minibatch and accumulation (one optimiser step per rollout),
   learning rate, weight decay 0, gradient clip 1, PPO clip 1e-4, advantage clip 5, per-prompt
   statistics (buffer 32, min count 16), CFG in the training forward, and the same LoRA (rank 4,
   alpha 4, same targets);
3. **vgrl nft** — DiffusionNFT as in ``configs/quickstart.yaml`` (ODE rollouts, 8 samples per prompt,
   LoRA 16, one pass of minibatch 8, EMA 0.995) on the same SD model, images per iteration and iterations.

Reported: images per second of each training (rollout + reward + update; evaluation and checkpoint
saving excluded) by the wall-clock and per CPU-second of the process (with one thread, the CPU time
is the compute itself, which other jobs on a shared machine disturb much less than the wall-clock), and held-out checker accuracy against images generated, every ``--eval-every``
iterations, all with vgrl's evaluator (:mod:`vgrl.evaluation.world_eval`: the same fixed prompts and
seeds, the ODE sampler at the model's ``vgrl.json`` evaluation steps and guidance). TRL's LoRA
checkpoints are loaded into the base pipeline with diffusers' ``load_lora_weights`` for evaluation;
the last one is also exported merged to ``OUT/trl/final/pipeline`` (``vgrl eval --model`` loads it).

    bash benchmarks/setup_trl_venv.sh                  # once: the TRL virtualenv (/work/venvs/trl)
    python benchmarks/vs_trl.py [--iterations 30] [--batch-size 32] [--minibatch-size 8] \\
        [--eval-every 10] [--per-category 64] [--threads 1] [--out runs/vs_trl]     # about 25 minutes
    python benchmarks/vs_trl.py --smoke --out runs/vs_trl_smoke      # about 2 minutes: the plumbing only

Runs can also be made side by side, one per core: invocations with disjoint ``--only`` lists and different
``--out``, merged afterwards by ``--combine OUT1 OUT2 --out OUT`` (which trains nothing and refuses runs whose
training settings differ; the evaluation interval and thread count may differ, and the table says each run's).

Results: ``OUT/table.md`` (what is printed), ``OUT/results.json``; the runs under ``OUT/{trl,ddpo,nft}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE = {"iterations": 2, "batch_size": 8, "minibatch_size": 4, "eval_every": 1, "per_category": 4}


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="models/shapes-sd/pipeline")
    p.add_argument("--venv", type=Path, default=Path("/work/venvs/trl"), help="the TRL virtualenv")
    p.add_argument("--out", type=Path, default=Path("runs/vs_trl"))
    p.add_argument("--iterations", type=int, default=30, help="epochs (TRL) = iterations (vgrl) of each run")
    p.add_argument("--batch-size", type=int, default=32, help="images generated per epoch / iteration")
    p.add_argument("--minibatch-size", type=int, default=8, help="samples per forward/backward (TRL train_batch_size)")
    p.add_argument("--num-steps", type=int, default=10, help="sampling steps in training")
    p.add_argument("--guidance", type=float, default=None, help="training CFG scale; default: the model's "
                                                                 "vgrl.json eval_guidance")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-every", type=int, default=10, help="iterations between held-out evaluations")
    p.add_argument("--per-category", type=int, default=64, help="held-out samples per category (5 categories)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=("trl", "ddpo", "nft"), default=("trl", "ddpo", "nft"))
    p.add_argument("--smoke", action="store_true", help="tiny settings: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items()))
    p.add_argument("--combine", type=Path, nargs="+", metavar="DIR",
                   help="train nothing: merge the results.json of earlier invocations with disjoint --only lists "
                        "(run side by side) into one table in --out")
    a = p.parse_args()
    if a.combine:
        return a
    if a.smoke:
        for k, v in SMOKE.items():
            setattr(a, k, v)
    if a.batch_size % a.minibatch_size:
        p.error(f"--minibatch-size {a.minibatch_size} must divide --batch-size {a.batch_size}")
    if "nft" in a.only and a.batch_size % 8 and a.batch_size % 4:
        p.error(f"--batch-size {a.batch_size}: nft needs whole prompt groups of 8 (or 4); use a multiple of 8")
    return a


# ------------------------------------------------------------------------------------------ the runs


def run_trl(a, meta: dict) -> dict:
    """TRL's DDPOTrainer in the TRL virtualenv; returns its results.json (with the subprocess's seconds)."""
    python = a.venv / "bin" / "python"
    if not python.is_file():
        raise SystemExit(f"no TRL virtualenv at {a.venv} ({python} missing); create it with "
                         f"`bash benchmarks/setup_trl_venv.sh {a.venv}` or pass --venv")
    out = a.out / "trl"
    cmd = [str(python), str(ROOT / "benchmarks" / "_trl_ddpo_run.py"), "--model", a.model, "--out", str(out),
           "--epochs", str(a.iterations), "--batch-size", str(a.batch_size),
           "--minibatch-size", str(a.minibatch_size), "--grad-accum", str(a.batch_size // a.minibatch_size),
           "--num-steps", str(a.num_steps), "--guidance", str(a.guidance), "--lr", str(a.lr),
           "--resolution", str(meta.get("resolution", 32)), "--seed", str(a.seed),
           "--save-every", str(a.eval_every), "--threads", str(a.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if proc.returncode:
        tail = (out / "log.txt").read_text().splitlines()[-15:]
        raise SystemExit(f"TRL run failed (exit {proc.returncode}); {out / 'log.txt'} ends with:\n" + "\n".join(tail))
    result = json.loads((out / "results.json").read_text())
    result["process_seconds"] = time.perf_counter() - started
    return result


def vgrl_config(a, algorithm: str, model: str):
    """The vgrl training config matched to TRL's settings (``ddpo``), or the quickstart's NFT on the SD model."""
    from vgrl.config.io import validate_config

    common = {
        "seed": a.seed,
        "backbone": {"name": "sd", "path": model, "resolution": 32},
        "data": {"world": "shapes", "split": "train"},
        "reward": {"name": "shapes_checker", "score": "partial"},
        "batch_size": a.batch_size,
        "eval": {"every": a.eval_every, "split": "heldout", "per_category": a.per_category, "seed": 0},
        "log": {"tensorboard": False, "grid_every": None, "progress": False},
    }
    train = {"iterations": a.iterations, "lr": a.lr, "weight_decay": 0.0, "max_grad_norm": 1.0,
             "threads": a.threads, "checkpoint_every": a.iterations}
    if algorithm == "ddpo":
        cfg = {**common,
               "kernel": {"name": "ddim", "eta": 1.0},
               "sampling": {"num_steps": a.num_steps, "guidance_scale": a.guidance, "plan": {"kind": "all"}},
               "group_size": 1,
               "algorithm": {"name": "ddpo", "clip_range": 1e-4, "adv_clip": 5.0, "per_prompt_stat_tracking": True,
                             "buffer_size": 32, "min_count": 16},
               "train": {**train, "inner_epochs": 1, "minibatch_size": a.minibatch_size,
                         "grad_accum": a.batch_size // a.minibatch_size,
                         "lora": {"rank": 4, "alpha": 4.0, "targets": ["to_q", "to_k", "to_v", "to_out.0"]}}}
    else:
        group = 8 if a.batch_size % 8 == 0 else 4
        cfg = {**common,
               "kernel": {"name": "ode"},
               "sampling": {"num_steps": a.num_steps, "guidance_scale": a.guidance, "plan": {"kind": "ode"}},
               "group_size": group,
               "algorithm": {"name": "nft", "beta": 1.0, "adv_clip": 5.0, "global_std": True,
                             "old_policy": "rollout", "num_timesteps": 2},
               "train": {**train, "inner_epochs": 1, "minibatch_size": min(8, a.batch_size), "grad_accum": 1,
                         "ema_decay": 0.995, "lora": {"rank": 16, "alpha": 16.0}}}
    return validate_config(cfg)


def run_vgrl(a, algorithm: str) -> dict:
    """``vgrl train`` in this process; returns throughput and the evaluation curve from the run directory."""
    from vgrl.training import loop as trainer

    run_dir = a.out / algorithm
    cpu = [0.0]
    iterate = trainer.iterate

    def timed_iterate(*args, **kwargs):  # the CPU time of exactly what wall_seconds counts
        started = time.process_time()
        try:
            return iterate(*args, **kwargs)
        finally:
            cpu[0] += time.process_time() - started

    trainer.iterate = timed_iterate
    try:
        summary = trainer.train(vgrl_config(a, algorithm, a.model), run_dir)
    finally:
        trainer.iterate = iterate
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "train"]
    curve = [{"images": r["images"], "accuracy": r["overall_accuracy"], "score": r["overall_score"],
              "strict": r.get("overall_strict_accuracy")} for r in rows if r["kind"] == "eval"]
    return {"images": summary["images_generated"], "wall_seconds": summary["wall_seconds"],
            "seconds_rollout": sum(r.get("seconds_rollout", 0.0) for r in steps),
            "seconds_update": sum(r.get("seconds_update", 0.0) for r in steps),
            "images_per_second": summary["images_generated"] / summary["wall_seconds"],
            "cpu_seconds": cpu[0], "images_per_cpu_second": summary["images_generated"] / cpu[0],
            "reward_first": steps[0].get("reward_mean"), "reward_last": steps[-1].get("reward_mean"),
            "curve": curve, "run_dir": str(run_dir)}


def eval_trl(a, trl: dict, meta: dict) -> list[dict]:
    """Held-out accuracy of the base model and of every TRL LoRA checkpoint, with vgrl's evaluator."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    from vgrl import backbones
    from vgrl.evaluation.world_eval import eval_set, evaluate
    from vgrl.training.policy import export_pipeline
    from vgrl.worlds.shapes import ShapesWorld

    world = ShapesWorld(meta.get("resolution", 32))
    es = eval_set(world, "heldout", a.per_category, 0)
    curve = []
    for ck in [{"images": 0, "path": None}, *trl["checkpoints"]]:
        backbone = backbones.load(a.model)
        if ck["path"] is not None:
            backbone.pipe.load_lora_weights(ck["path"], weight_name="pytorch_lora_weights.safetensors")
            if not any(isinstance(m, BaseTunerLayer) for m in backbone.unet.modules()):
                raise RuntimeError(f"{ck['path']}: no LoRA layer was loaded into the UNet")
        with torch.no_grad():
            r = evaluate(backbone, world, es, num_steps=meta["eval_steps"], guidance_scale=meta["eval_guidance"],
                         batch_size=128, progress=False)
        curve.append({"images": ck["images"], "accuracy": r.overall_accuracy, "score": r.overall_score,
                      "strict": r.overall_strict_accuracy})
        if ck is trl["checkpoints"][-1]:
            export_pipeline(backbone, a.out / "trl" / "final" / "pipeline", meta)
    return curve


# ------------------------------------------------------------------------------------------ the table


def first_reaching(curve: list[dict], accuracy: float) -> int | None:
    """Images at the first evaluation (after training started) with at least ``accuracy``."""
    return next((p["images"] for p in curve if p["images"] > 0 and p["accuracy"] >= accuracy - 1e-12), None)


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _each(value, key: str):
    """A setting of run ``key``: one value for every run, or (merged by ``--combine``) one per run."""
    return value[key] if isinstance(value, dict) else value


def table(a, res: dict) -> str:
    names = {"trl": "TRL DDPOTrainer (ddpo)", "ddpo": "vgrl ddpo", "nft": "vgrl nft"}
    per_run = ", ".join(f"{names[k]}: {_each(a.threads, k)} thread(s), an evaluation every "
                        f"{_each(a.eval_every, k)} iterations" for k in ("trl", "ddpo", "nft") if k in res)
    lines = [f"settings: {a.iterations} iterations x {a.batch_size} images, {a.num_steps} steps, guidance "
             f"{a.guidance}, minibatch {a.minibatch_size}, lr {a.lr}; {per_run}; held-out eval "
             f"{a.per_category} per category x 5 ({'SMOKE settings' if a.smoke else 'full'})", "",
             "| run | images | training s | rollout+reward s | update s | images/s | images/CPU-s | held-out "
             "accuracy before -> end | strict accuracy before -> end | partial score before -> end |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for key in [k for k in ("trl", "ddpo", "nft") if k in res]:
        r, c = res[key], res[key]["curve"]
        lines.append(f"| {names[key]} | {r['images']} | {r['wall_seconds']:.1f} | {r['seconds_rollout']:.1f} | "
                     f"{r['seconds_update']:.1f} | {r['images_per_second']:.2f} | {r['images_per_cpu_second']:.2f} | "
                     f"{c[0]['accuracy']:.3f} -> {c[-1]['accuracy']:.3f} | {_num(c[0].get('strict'))} -> "
                     f"{_num(c[-1].get('strict'))} | {c[0]['score']:.3f} -> {c[-1]['score']:.3f} |")
    keys = [k for k in ("trl", "ddpo", "nft") if k in res]
    images = sorted({p["images"] for k in keys for p in res[k]["curve"]})
    lines += ["", "Held-out accuracy (partial score) against images generated:", "",
              "| images | " + " | ".join(names[k] for k in keys) + " |", "|---:|" + "---|" * len(keys)]
    for n in images:
        cells = []
        for k in keys:
            p = next((p for p in res[k]["curve"] if p["images"] == n), None)
            cells.append("" if p is None else f"{p['accuracy']:.3f} ({p['score']:.3f})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    if "trl" in res and "ddpo" in res:
        ratio = res["ddpo"]["images_per_second"] / res["trl"]["images_per_second"]
        cpu_ratio = res["ddpo"]["images_per_cpu_second"] / res["trl"]["images_per_cpu_second"]
        lines += ["", f"Throughput, vgrl ddpo / TRL DDPO at equal settings: {ratio:.2f}x wall-clock, "
                      f"{cpu_ratio:.2f}x per CPU-second (goal >= 1.5x)"]
    if "trl" in res and "nft" in res:
        trl_curve = res["trl"]["curve"]
        final, base = trl_curve[-1]["accuracy"], trl_curve[0]["accuracy"]
        at = first_reaching(res["nft"]["curve"], final)
        trl_at = first_reaching(trl_curve, final)
        if final <= base:
            verdict = f"TRL's final accuracy {final:.3f} is not above the base {base:.3f}: the comparison is vacuous"
        elif at is None:
            verdict = f"vgrl nft did not reach TRL's final accuracy {final:.3f}"
        else:
            verdict = (f"vgrl nft reached TRL's final accuracy {final:.3f} at {at} images; TRL at {trl_at}: "
                       f"{trl_at / at:.1f}x fewer images (goal >= 10x; resolution: one evaluation every "
                       f"{_each(a.eval_every, 'nft') * a.batch_size} images for nft, "
                       f"{_each(a.eval_every, 'trl') * a.batch_size} for TRL)")
        lines += [f"Sample efficiency: {verdict}"]
    return "\n".join(lines)


# Settings two invocations must share for their runs to be compared in one table (evaluation interval and
# threads may differ: they change when accuracy is measured and how fast, not what is trained).
SHARED = ("model", "iterations", "batch_size", "minibatch_size", "num_steps", "guidance", "lr", "per_category",
          "seed", "smoke")


def combine(dirs: list[Path]) -> tuple[argparse.Namespace, dict]:
    """The settings and runs of several finished invocations, checked to be comparable: one table's input."""
    settings, res = None, {}
    for d in dirs:
        path = d / "results.json"
        if not path.is_file():
            raise SystemExit(f"--combine: {path} does not exist (is that invocation finished?)")
        record = json.loads(path.read_text())
        s = record["settings"]
        if settings is None:
            settings = dict(s, eval_every={}, threads={})
        differ = [k for k in SHARED if s.get(k) != settings.get(k)]
        if differ:
            raise SystemExit(f"--combine: {path} differs from {dirs[0] / 'results.json'} in "
                             + ", ".join(f"{k} ({s.get(k)!r} vs {settings.get(k)!r})" for k in differ))
        for key in ("trl", "ddpo", "nft"):
            if key in record:
                if key in res:
                    raise SystemExit(f"--combine: run {key!r} is in more than one of {[str(x) for x in dirs]}")
                res[key] = record[key]
                settings["eval_every"][key], settings["threads"][key] = s["eval_every"], s["threads"]
    return argparse.Namespace(**settings), res


def main() -> None:
    a = _args()
    os.chdir(ROOT)
    if a.out.exists() and any(a.out.iterdir()):
        raise SystemExit(f"{a.out} is not empty; choose another --out (nothing was overwritten)")
    if a.combine:
        settings, res = combine(a.combine)
        text = table(settings, res)
        print(text)
        a.out.mkdir(parents=True)
        (a.out / "table.md").write_text(text + "\n")
        (a.out / "results.json").write_text(json.dumps({"combined": [str(d) for d in a.combine],
                                                        "settings": vars(settings), **res}, indent=2, default=str))
        return
    import torch

    from vgrl.backbones.base import read_meta

    torch.set_num_threads(a.threads)
    meta = read_meta(a.model)
    if a.guidance is None:
        a.guidance = float(meta.get("eval_guidance", 1.0))
    res: dict = {}
    started = time.perf_counter()
    if "trl" in a.only:
        print("TRL DDPOTrainer (subprocess in the TRL virtualenv) ...", flush=True)
        res["trl"] = run_trl(a, meta)
    for algorithm in ("ddpo", "nft"):
        if algorithm in a.only:
            print(f"vgrl {algorithm} ...", flush=True)
            res[algorithm] = run_vgrl(a, algorithm)
    if "trl" in res:
        print("evaluating TRL's checkpoints ...", flush=True)
        t = res["trl"]
        t["curve"] = eval_trl(a, t, meta)
        t["seconds_rollout"] = sum(r.get("seconds_rollout", 0.0) + r.get("seconds_reward", 0.0) for r in t["rows"])
        t["seconds_update"] = sum(r.get("seconds_update", 0.0) for r in t["rows"])
    text = table(a, res)
    print(text)
    (a.out / "table.md").write_text(text + "\n")
    record = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "total_seconds": time.perf_counter() - started, "command": " ".join(sys.argv), **res}
    (a.out / "results.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {a.out / 'table.md'} and {a.out / 'results.json'} ({record['total_seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
