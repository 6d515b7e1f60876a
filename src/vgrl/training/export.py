"""A training checkpoint as a diffusers pipeline directory (``vgrl export``), for ``vgrl eval`` or any diffusers code.

A run writes ``final/pipeline`` only at its end; its ``checkpoints/step-N`` hold the complete training state of
earlier iterations. :func:`export_checkpoint` rebuilds the model, and only the model (the base backbone, its
adapters and the EMA), from the ``config.yaml`` in the run folder, loads the checkpoint's weights into it, and
exports it the way the trainer exports its final one: LoRA merged, the EMA weights (``weights="ema"``, when the run
keeps an EMA) or the trained weights themselves (``weights="raw"``); ``weights="auto"`` (the default) takes the
EMA when the run kept one, as ``final/pipeline`` does.
:func:`pipeline_dir` gives ``vgrl eval`` a pipeline directory for any model path a user may hold: a pipeline, a
checkpoint, or a run folder (its newest checkpoint, else its ``final/pipeline``).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from vgrl.training import checkpoint
from vgrl.training.checkpoint import CheckpointError

Weights = Literal["auto", "ema", "raw"]
WEIGHTS = ("auto", "ema", "raw")


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a complete checkpoint directory; the newest complete checkpoint if it is a run folder."""
    path = Path(path)
    if checkpoint.is_valid(path):
        return path
    newest = checkpoint.latest(path / "checkpoints")
    if newest is not None:
        return newest
    siblings = [p.name for p in checkpoint.list_checkpoints(path.parent)]
    raise CheckpointError(f"{path}: neither a complete checkpoint directory (RUN_DIR/checkpoints/step-N with "
                          f"{', '.join(checkpoint.FILES)}) nor a run folder holding one"
                          + (f"; complete checkpoints beside it: {', '.join(siblings)}" if siblings else ""))


def export_checkpoint(path: str | Path, out: str | Path, weights: Weights = "auto") -> Path:
    """Export checkpoint ``path`` (or a run folder's newest) to the pipeline directory ``out``; returns ``out``.

    The run's ``config.yaml`` (two levels above the checkpoint) says how to build it; the base model it names
    must be where it was at training time (relative paths are read from the working directory, as in training).
    Which weights were written (``ema`` or ``raw``) is recorded as ``weights`` in ``out/vgrl.json``.

    Raises:
        CheckpointError: no checkpoint, no ``config.yaml`` beside it, or ``weights="ema"`` for a run trained
            without an EMA.
    """
    from vgrl.config import ConfigError, load_config

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    ckpt = resolve_checkpoint(path)
    config = ckpt.parent.parent / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"{ckpt}: the run folder {ckpt.parent.parent} holds no config.yaml, which says how "
                              "to build the model this checkpoint belongs to")
    try:
        cfg = load_config(config, [])
    except ConfigError as e:
        raise CheckpointError(f"{config}: " + "; ".join(e.messages)) from None
    if weights == "auto":
        weights = "raw" if cfg.train.ema_decay is None else "ema"
    elif weights == "ema" and cfg.train.ema_decay is None:
        raise CheckpointError(f"{ckpt}: the run was trained without an EMA (train.ema_decay: null in {config}); "
                              "export its trained weights with --weights raw (or auto)")
    backbone, params, ema, saved = _trained_model(cfg, ckpt, weights)
    counters = saved.state["counters"]
    return export_model(cfg, backbone, params, ema, Path(out), counters["iteration"], counters["images"],
                        extra={"checkpoint": str(ckpt), "weights": weights})


def _trained_model(cfg, ckpt: Path, weights: str):
    """The checkpoint's model and nothing else of its run (no process group, reward, optimiser or evaluator): the
    base backbone of ``cfg``, its LoRA adapters when the run trained some, the saved trainable weights and, for
    ``weights="ema"``, the EMA of them. Returns ``(backbone, trained params, EMA or None, checkpoint)``."""
    import torch

    from vgrl import backbones
    from vgrl.training.policy import add_lora, load_trainable_state

    torch.manual_seed(cfg.seed)  # as training builds it: a tiny random-init base model is a function of the seed
    backbone = backbones.build(cfg.backbone)
    module = backbone.trainable()
    module.eval()
    lora = cfg.train.lora
    if lora is not None:
        add_lora(module, lora.rank, lora.alpha, lora.targets, lora.init_seed)
    params = [p for p in module.parameters() if p.requires_grad]
    if cfg.precisions()["train"] != "no":  # mixed precision trains float32 master weights (vgrl.device.Precision)
        for p in params:
            p.data = p.data.to(torch.float32)
    saved = checkpoint.load(ckpt)
    load_trainable_state(module, saved.trainable)
    ema = None
    if weights == "ema":
        from diffusers.training_utils import EMAModel

        ema = EMAModel(params, decay=cfg.train.ema_decay, use_ema_warmup=False)
        ema.load_state_dict(saved.state["ema"])
    return backbone, params, ema, saved


def export_model(cfg, backbone, params, ema, out: Path, iterations: int, images: int, extra: dict | None = None) -> Path:
    """The trained model as a diffusers pipeline directory (the EMA weights when ``ema`` is given, LoRA merged), with
    its ``vgrl.json``: the base model's sampling settings, the backbone's, the training counters and ``extra``. The
    trainer's final export and :func:`export_checkpoint` both write through it."""
    from vgrl.backbones.base import read_meta
    from vgrl.training.policy import ema_weights, export_pipeline

    meta = read_meta(cfg.backbone.path) if cfg.backbone.path else {}
    meta.update(backbone.meta())
    meta.update(trained_by="vgrl train", algorithm=cfg.algorithm.name, iterations=iterations, images=images,
                **(extra or {}))
    with ema_weights(ema, params):
        return export_pipeline(backbone, out, meta)


def exported_weights(pipeline: str | Path) -> str:
    """``ema`` or ``raw``: the weights :func:`export_checkpoint` wrote to ``pipeline`` (its ``vgrl.json``)."""
    return json.loads((Path(pipeline) / "vgrl.json").read_text())["weights"]


def is_pipeline(path: str | Path) -> bool:
    """Whether ``path`` is a diffusers pipeline directory (holds ``model_index.json``)."""
    return (Path(path) / "model_index.json").is_file()


def resolve_model(model: str | Path) -> tuple[Path, str]:
    """What ``vgrl eval --model`` names: ``(path, kind)`` with kind ``pipeline`` or ``checkpoint``.

    A pipeline directory or a complete checkpoint is itself; a run folder gives its newest complete checkpoint,
    else its ``final/pipeline``. Anything else raises :class:`CheckpointError` saying what would do."""
    path = Path(model)
    if is_pipeline(path):
        return path, "pipeline"
    if checkpoint.is_valid(path):
        return path, "checkpoint"
    newest = checkpoint.latest(path / "checkpoints")
    if newest is not None:
        return newest, "checkpoint"
    if is_pipeline(path / "final" / "pipeline"):
        return path / "final" / "pipeline", "pipeline"
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory (expected a diffusers pipeline directory, a "
                              "checkpoint RUN/checkpoints/step-N or a run folder)")
    raise CheckpointError(f"{path}: neither a diffusers pipeline directory (model_index.json), nor a complete "
                          "checkpoint (RUN/checkpoints/step-N), nor a run folder holding one or a final/pipeline")


@contextlib.contextmanager
def pipeline_dir(model: str, weights: Weights = "auto", note: Callable[[str], None] | None = None) -> Iterator[str]:
    """A pipeline directory for ``model`` (:func:`resolve_model`): a pipeline itself, or a training checkpoint
    exported to a temporary pipeline directory (:func:`export_checkpoint`), removed when the block ends.

    ``note`` (e.g. ``print``) is told what was resolved when it is not ``model`` itself, and which weights a
    checkpoint gave."""
    path, kind = resolve_model(model)
    if kind == "pipeline":
        if note is not None and path != Path(model):
            note(f"{model}: evaluating the run's {path}")
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="vgrl-eval-") as tmp:
        out = export_checkpoint(path, Path(tmp) / "pipeline", weights)
        if note is not None:
            note(f"{model}: evaluating checkpoint {path} ({exported_weights(out)} weights)")
        yield str(out)
