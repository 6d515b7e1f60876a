"""``vgrl`` commands for rewards and preference data: ``serve-reward`` (a reward over HTTP), ``pairs``
(a preference dataset from a run's saved rollouts) and ``train-reward`` (a Bradley-Terry reward model).
Like every command but ``validate``, they import their heavy modules lazily."""

from __future__ import annotations

import argparse
import sys

from vgrl.cli import EXIT_CONFIG, EXIT_OK

FEW_HELDOUT_PAIRS = 30  # below this, a pairwise accuracy's 95% interval is wider than +/-0.18


def add_commands(sub) -> None:
    """Register the three subcommands on ``sub`` (the ``vgrl`` parser's subparsers)."""
    _add_serve_reward(sub)
    _add_pairs(sub)
    _add_train_reward(sub)


def cmd_serve_reward(args: argparse.Namespace) -> int:
    """Serve a registered reward over HTTP for ``reward: {name: remote, url: ...}`` clients."""
    import os
    import socket

    from vgrl.registry import RegistryError
    from vgrl.serve import ServeLimits, build_reward, serve

    token = args.token
    if args.token_env is not None:
        token = os.environ.get(args.token_env)
        if not token:
            print(f"error: --token-env: environment variable {args.token_env!r} is not set or empty", file=sys.stderr)
            return EXIT_CONFIG
    try:
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no clash
            probe.bind((args.host, args.port))
    except OSError as e:
        print(f"error: --port {args.port}: cannot listen on {args.host}:{args.port} ({e.strerror or e}); another "
              "server may hold it: choose another --port", file=sys.stderr)
        return EXIT_CONFIG
    try:
        reward = build_reward(args.reward, args.option)
        limits = ServeLimits(max_body_bytes=int(args.max_body_mb * 2**20), max_images=args.max_images,
                             max_side=args.max_side)
    except (ValueError, RegistryError) as e:  # pydantic's ValidationError is a ValueError too
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    serve(reward, args.host, args.port, token, limits)
    return EXIT_OK


def _add_serve_reward(sub) -> None:
    p = sub.add_parser("serve-reward", help="serve a reward over HTTP (client: reward name 'remote')",
                       description="Serve a registered reward with FastAPI + uvicorn: GET /health, POST /score "
                                   "(JSON with base64 PNG or safetensors images; never pickle). Binds 127.0.0.1 "
                                   "unless --host says otherwise. See docs/rewards/remote.md.")
    p.add_argument("--reward", required=True, metavar="NAME", help="reward registry name or package.module:Class")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a reward option, value parsed as YAML (repeatable), e.g. --option score=pass")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token", default=None, help="require this bearer token (visible in ps: prefer --token-env)")
    auth.add_argument("--token-env", default=None, metavar="VAR", help="require the bearer token held in env VAR")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="request body limit in MiB (default: 64)")
    p.add_argument("--max-images", type=int, default=1024, help="images per request (default: 1024)")
    p.add_argument("--max-side", type=int, default=2048, help="largest image side in pixels (default: 2048)")
    p.set_defaults(func=cmd_serve_reward)


def cmd_pairs(args: argparse.Namespace) -> int:
    """Build a preference dataset from a run's saved rollouts (best vs worst sample of each prompt group)."""
    from vgrl.data.preferences import PreferenceDataError, pairs_from_run

    try:
        data = pairs_from_run(args.from_run, args.out, margin=args.margin)
    except (FileNotFoundError, FileExistsError, PreferenceDataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {len(data)} pairs to {data.index}")
    return EXIT_OK


def _add_pairs(sub) -> None:
    p = sub.add_parser("pairs", help="build a preference dataset from a run's saved rollouts",
                       description="Pair the best (chosen) and the worst (rejected) sample of each prompt group of "
                                   "every iteration saved under RUN/rollouts (train with log.save_rollouts=true), "
                                   "keeping groups whose reward margin is > 0 and >= --margin; write OUT/pairs.jsonl "
                                   "and OUT/images/ and validate them (format: docs/preferences.md).")
    p.add_argument("--from-run", required=True, metavar="RUN", help="run folder holding rollouts/iter_*/index.jsonl")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output dataset folder (must not hold a pairs.jsonl or pairs.parquet)")
    p.add_argument("--margin", type=float, default=0.0, help="minimum reward margin best - worst (default: 0)")
    p.set_defaults(func=cmd_pairs)


def cmd_train_reward(args: argparse.Namespace) -> int:
    """Fit a Bradley-Terry reward model to preference pairs; write OUT/model.safetensors, config.json, eval.json."""
    from vgrl.data.preferences import PreferenceDataError
    from vgrl.reward_training import TrainRewardSettings, train_reward

    settings = TrainRewardSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, heldout=args.heldout,
                                   seed=args.seed, resolution=args.resolution, width=args.width,
                                   text=not args.no_text, threads=args.threads)
    try:
        result = train_reward(args.pairs, args.out, settings)
    except (FileNotFoundError, PreferenceDataError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    n = result["heldout_pairs"]
    print(f"held-out pairwise accuracy {result['heldout_accuracy']:.3f} on {n} pairs "
          f"(train {result['train_accuracy']:.3f}); saved {args.out}")
    if n < FEW_HELDOUT_PAIRS:
        print(f"note: {n} held-out pairs are too few for the accuracy to mean much (95% interval about "
              f"+/-{min(0.5, 0.98 / n ** 0.5):.2f}); hold out more with --heldout or build more pairs", file=sys.stderr)
    return EXIT_OK


def _add_train_reward(sub) -> None:
    p = sub.add_parser("train-reward", help="fit a Bradley-Terry reward model to preference pairs (learned_bt)",
                       description="Fit a small prompt-conditioned CNN r(x, p) so that P(chosen > rejected) = "
                                   "sigmoid(r(chosen) - r(rejected)) on a preference dataset (pairs.jsonl or .parquet, "
                                   "docs/preferences.md), holding out a seeded fraction of the pairs; write "
                                   "OUT/model.safetensors, OUT/config.json and the held-out pairwise accuracy to "
                                   "OUT/eval.json. Use it as reward 'learned_bt' with path=OUT.")
    p.add_argument("--pairs", required=True, metavar="PATH",
                   help="pairs.jsonl or pairs.parquet, or a directory holding one")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--steps", type=int, default=600, help="optimiser steps (default: 600)")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step (default: 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    p.add_argument("--heldout", type=float, default=0.1, help="fraction of pairs held out (default: 0.1)")
    p.add_argument("--resolution", type=int, default=32, help="image side the model sees (default: 32)")
    p.add_argument("--width", type=int, default=32, help="CNN width (default: 32)")
    p.add_argument("--no-text", action="store_true", help="ignore the prompt (image-only reward)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, init and batches (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.set_defaults(func=cmd_train_reward)
