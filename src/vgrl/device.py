"""Where a run's networks live (``backbone.device``) and its mixed precision (``train.mixed_precision``).

Placement. ``auto`` is the launcher's device: accelerate's ``PartialState`` gives ``cuda:LOCAL_RANK`` when
CUDA is available (one GPU per process under ``torchrun`` / ``accelerate launch``), else ``cpu``. ``cuda``
asks for that GPU and fails when there is none; ``cuda:N`` pins a single process to GPU ``N``. Random draws
never move: every noise tensor is drawn from its sample's seeded CPU generator and then copied to the
device, so a run's samples are the same on CPU and GPU up to kernel numerics.

Mixed precision (``bf16`` / ``fp16``): the network forwards of rollout, loss and evaluation run under
``torch.autocast(device_type, dtype)``; the trained parameters (the optimiser's master weights) and the
optimiser state stay float32, and the kernels' maths and log-probabilities stay float32 (they cast
explicitly). ``fp16`` adds a loss scaler (``torch.amp.GradScaler``): the loss is multiplied by ``S`` before
``backward``, gradients are divided by ``S`` before clipping, and a step whose gradients overflow is
skipped while ``S`` is halved (Micikevicius et al., arXiv 1710.03740). The trainer counts such a step as
skipped but, while ``S > 1``, not towards ``train.max_consecutive_skips``: overflow is how the scaler
finds its scale. Its state is saved in every checkpoint. ``sampling.mixed_precision`` and
``eval.mixed_precision`` give the rollouts and the evaluation an autocast of their own (no scaler). On a CPU
without native bf16 (oneDNN's check, ``avx512_bf16`` / AMX) bf16 is emulated and slower than fp32: it is
allowed, with a warning.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's check: ``avx512_bf16`` or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


class DeviceError(ValueError):
    """A device or precision the config asks for cannot be had here; the message names the field."""


def resolve_device(spec: str, launcher: torch.device | str | None = None, world: int = 1) -> torch.device:
    """The ``torch.device`` of ``backbone.device`` ``spec`` (``auto | cpu | cuda | cuda:N``).

    Args:
        launcher: the launcher's device (``Dist.device``, from accelerate's ``PartialState``); None: a
            single process, whose ``auto`` is the current CUDA device when there is one, else the CPU.
        world: the number of processes (``cuda:N`` pins one process only).
    Raises:
        DeviceError: CUDA asked for but not available, a GPU index out of range, ``cuda:N`` with several
            processes.
    """
    if not DEVICE_PATTERN.match(spec):
        raise DeviceError(f"backbone.device: {spec!r} is not a device; valid: auto, cpu, cuda, cuda:N")
    if spec == "cpu":
        return torch.device("cpu")
    cuda = torch.cuda.is_available()
    if spec == "auto":
        if launcher is not None:
            return _indexed(torch.device(launcher))
        return _indexed(torch.device("cuda")) if cuda else torch.device("cpu")
    if not cuda:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise DeviceError(f"backbone.device: {spec!r} but CUDA is not available here (torch {torch.__version__}, "
                          f"{build}); valid here: auto, cpu")
    if spec == "cuda":
        found = torch.device(launcher) if launcher is not None else torch.device("cuda")
        return _indexed(found if found.type == "cuda" else torch.device("cuda"))
    index, count = int(spec.split(":")[1]), torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"backbone.device: {spec!r} but this machine has {count} GPU(s); valid: "
                          f"{', '.join(f'cuda:{i}' for i in range(count))}, cuda, auto, cpu")
    if world > 1:
        raise DeviceError(f"backbone.device: {spec!r} would put all {world} processes on one GPU; valid with "
                          "several processes: cuda or auto (one GPU per process, cuda:LOCAL_RANK)")
    return torch.device("cuda", index)


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:<current>`` and ``cpu:0`` -> ``cpu``, so that equal devices compare equal."""
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def set_deterministic(deterministic: bool, device: torch.device) -> None:
    """``torch.use_deterministic_algorithms`` for a run on ``device``.

    On the CPU exactly ``deterministic``. On CUDA, ``true`` also sets ``CUBLAS_WORKSPACE_CONFIG`` (cuBLAS
    needs it for reproducible matmuls) and warns, rather than fails, at an op without a deterministic
    CUDA kernel: bitwise reproducibility is promised (and tested) on the CPU only.
    """
    if device.type == "cuda" and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(deterministic)
    if device.type == "cuda":
        torch.cuda.set_device(device)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside nested dicts / lists / tuples copied to the CPU (checkpoints)."""
    if isinstance(obj, Tensor):
        return obj if obj.device.type == "cpu" else obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


@dataclass
class Precision:
    """A run's mixed precision on ``device``: ``mode`` ``no`` (fp32), ``bf16`` or ``fp16`` (with a loss scaler).

    ``autocast()`` wraps network forwards; ``backward`` / ``unscale_`` / ``step`` / ``skipped`` drive the
    optimiser step (plain ``loss.backward()`` and ``optimizer.step()`` when there is no scaler).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mode: str = "no"
    scaler: Any = None

    @classmethod
    def build(cls, mode: str, device: torch.device, field: str = "train.mixed_precision",
              training: bool = True) -> Precision:
        """Check ``mode`` (of config ``field``) against ``device`` (fp16 needs CUDA); make the loss scaler of
        ``fp16`` when the precision is the ``training`` one (rollouts and evaluation only autocast)."""
        if mode not in PRECISIONS:
            raise DeviceError(f"{field}: {mode!r}; valid: {', '.join(PRECISIONS)}")
        if mode == "fp16" and device.type != "cuda":
            raise DeviceError(f"{field}: 'fp16' needs a CUDA device, but the run is on {device} "
                              f"(CPU autocast computes in bfloat16); valid on {device.type}: 'no', 'bf16'")
        if mode == "bf16" and device.type == "cpu" and not cpu_has_bf16():
            warnings.warn(f"{field}: 'bf16' on a CPU without native bfloat16 (no avx512_bf16 / AMX): autocast "
                          "is emulated and likely slower than fp32 here; 'no' is the fast choice", stacklevel=2)
        scaler = torch.amp.GradScaler(device.type) if mode == "fp16" and training else None
        return cls(device, mode, scaler)

    @property
    def enabled(self) -> bool:
        return self.mode != "no"

    def autocast(self):
        """``torch.autocast(device type, dtype)`` under mixed precision, else a context that does nothing."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.mode])

    def master_weights(self, params: list[torch.nn.Parameter]) -> None:
        """Under mixed precision, store the trained parameters in float32 (a half-precision ``backbone.dtype``
        keeps its frozen weights in half precision; LoRA adapters and fully trained weights become fp32)."""
        if not self.enabled:
            return
        for p in params:
            if p.dtype != torch.float32:
                p.data = p.data.to(torch.float32)

    def backward(self, loss: Tensor) -> None:
        """``loss.backward()``, of the scaled loss under fp16."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the (process-averaged) gradients by the loss scale (fp16); nothing otherwise."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser step (through the scaler under fp16, which then updates its scale)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def skipped(self) -> bool:
        """After a step skipped for non-finite gradients: True when it was a loss-scale overflow (fp16 with a
        scale above 1, which the scaler now halves), False for a genuinely non-finite gradient."""
        if self.scaler is None:
            return False
        scale = self.scaler.get_scale()
        self.scaler.update()
        return scale > 1.0

    def state_dict(self) -> dict | None:
        """The scaler's state (plain numbers), or None without one."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict | None, where: str) -> None:
        """Restore the scaler; ``where`` (the checkpoint) names the problem when the runs' precisions differ."""
        if (state is None) != (self.scaler is None):
            raise DeviceError(f"{where}: train.mixed_precision differs from the run that wrote this checkpoint "
                              "(one has an fp16 loss scaler, the other none); resume with the same setting")
        if state is not None:
            self.scaler.load_state_dict(state)
