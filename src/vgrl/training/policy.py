"""The trained policy's weights: LoRA adapters (peft) or full fine-tuning, the reference model for KL
terms, and the prompt sampler. Small pieces the trainer composes; no loops here.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from vgrl.backbones.base import META_FILE, Backbone
from vgrl.types import Cond


def add_lora(module: nn.Module, rank: int, alpha: float, targets: list[str], seed: int) -> None:
    """Attach LoRA adapters (``W + (alpha / r) B A``, ``B = 0`` at init, so the model is unchanged) to the
    modules of ``module`` whose names end with one of ``targets``; only the adapters stay trainable."""
    from peft import LoraConfig

    names = [n for n, _ in module.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]
    if not names:
        raise ValueError(f"train.lora.targets {targets} match no module of {type(module).__name__}; "
                         f"linear layers it has, e.g.: {_linear_names(module)[:8]}")
    module.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True))


def _linear_names(module: nn.Module) -> list[str]:
    return sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear)})


def trainable_state(module: nn.Module) -> dict[str, Tensor]:
    """The parameters that train (adapters, or all), by name, detached."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy saved trainable parameters back in place; the names must match exactly."""
    params = dict(module.named_parameters())
    own = {n for n, p in params.items() if p.requires_grad}
    if set(state) != own:
        missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
        raise ValueError(f"checkpoint weights do not match the model being trained: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]} (was it made with other train.lora settings?)")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def merged_state(module: nn.Module) -> dict[str, Tensor]:
    """The module's weights with LoRA merged in (``W + (alpha / r) B A``), under the base model's names."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    work = copy.deepcopy(module)
    for layer in work.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
    return {k.replace(".base_layer.", "."): v for k, v in work.state_dict().items() if ".lora_" not in k}


def export_pipeline(backbone: Backbone, out: str | Path, meta: dict | None = None) -> Path:
    """Save the trained model as a plain diffusers pipeline directory (LoRA merged, float32 weights), so
    ``vgrl eval``, ``vgrl train`` and ``diffusers.*Pipeline.from_pretrained`` load it like the base model."""
    module = backbone.trainable()
    pipe = backbone.pipe
    name = next(k for k, v in pipe.components.items() if v is module)
    fresh = type(module).from_config(module.config)
    fresh.load_state_dict(merged_state(module))
    out = Path(out)
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # absent components (no T5) are saved as null: not worth a warning
    try:
        type(pipe)(**{**pipe.components, name: fresh}).save_pretrained(out, safe_serialization=True)
    finally:
        diffusers_logging.set_verbosity(level)
    if meta is not None:
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return out


@contextlib.contextmanager
def ema_weights(ema, params: list[nn.Parameter]) -> Iterator[None]:
    """The EMA weights in place of the trained ``params`` inside the block, the trained ones back after it (also on
    an exception); nothing is swapped when ``ema`` is None (a run without ``train.ema_decay``)."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


class Reference:
    """The frozen reference policy a KL term compares with: the base weights.

    Under LoRA the reference is the same network with its adapters switched off for the call (no
    copy); under full fine-tuning it is a frozen deep copy of the backbone made before training.
    ``predict`` has the backbone's signature, so :func:`vgrl.rollout.recompute_log_prob` takes it.
    """

    def __init__(self, backbone: Backbone, lora: bool) -> None:
        self.lora = lora
        self.backbone = backbone if lora else copy.deepcopy(backbone)
        if not lora:
            self.backbone.trainable().requires_grad_(False)
        self.prediction = backbone.prediction

    @torch.no_grad()
    def predict(self, x_t: Tensor, t: Tensor, cond: Cond, guidance_scale: float) -> Tensor:
        module = self.backbone.trainable()
        if not self.lora:
            return self.backbone.predict(x_t, t, cond, guidance_scale)
        module.disable_adapters()
        try:
            return self.backbone.predict(x_t, t, cond, guidance_scale)
        finally:
            module.enable_adapters()


@dataclass
class PromptDraw:
    """Prompts of one iteration: texts, checker metadata and their indices in the prompt list."""

    texts: list[str]
    metas: list
    ids: list[int]


class PromptSampler:
    """Draws each iteration's prompts: a category uniformly, then a prompt of it uniformly.

    Balancing categories matters because splits are dominated by one category (shapes' train split is
    77% ``position``) while accuracy is reported as the mean over categories (GenEval). With plain
    ``prompts`` (no world) every prompt is its own category. The only state is a ``torch.Generator``,
    so ``state_dict`` makes resume exact.
    """

    def __init__(self, texts: list[str], metas: list, categories: list[str], seed: int) -> None:
        self.texts, self.metas = texts, metas
        order = list(dict.fromkeys(categories))
        self.by_category = [[i for i, c in enumerate(categories) if c == cat] for cat in order]
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, n: int) -> PromptDraw:
        cats = torch.randint(len(self.by_category), (n,), generator=self.generator).tolist()
        ids = [self.by_category[c][int(torch.randint(len(self.by_category[c]), (1,), generator=self.generator))]
               for c in cats]
        return PromptDraw([self.texts[i] for i in ids], [self.metas[i] for i in ids], ids)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
