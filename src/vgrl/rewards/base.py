"""The reward contract: ``(samples, prompts, metadata) -> RewardOutput``, validated at both ends.

A reward judges a batch of generated samples. It declares, as class attributes:

* ``name``: its registry key (the module name).
* ``differentiable``: whether ``scores`` carry a gradient to ``images`` (reward-gradient algorithms
  such as AlignProp, arXiv 2310.03739, and DRaFT, arXiv 2309.17400, need one). The flag is enforced:
  a non-differentiable reward runs under ``torch.no_grad()`` on detached images, so its scores never
  have a ``grad_fn``; a differentiable one must return scores that require grad whenever the images do.
* ``granularity``: ``"pointwise"`` (sample ``i``'s score depends on sample ``i`` only, so scoring a
  batch in pieces changes nothing), ``"groupwise"`` (scores depend on the rest of the batch, e.g. a
  batch-standardised composition) or ``"dense"`` (pointwise plus a credit map in ``dense``).
* ``layouts``: the sample layouts it accepts (:mod:`vgrl.layouts`; ``("image",)`` by default): image
  ``(B, 3, H, W)``, video ``(B, F, 3, H, W)``, multi-view ``(B, V, 3, H, W)``. A batch of a layout the
  reward does not declare is refused in one line before ``compute`` sees it.
* ``Options``: a pydantic model (``extra="forbid"``) of its options; the constructor validates through it.

A reward never returns zeros (or any placeholder) in place of a failure: it raises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from vgrl._lazy import lazy
from vgrl.layouts import LAYOUTS, describe
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")

Granularity = Literal["pointwise", "groupwise", "dense"]
GRANULARITIES = ("pointwise", "groupwise", "dense")


class RewardOptions(BaseModel):
    """Options every reward takes (none yet); subclasses add theirs. Unknown names are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NonFiniteRewardError(ValueError):
    """A reward produced NaN or inf scores; ``samples`` are the batch rows concerned."""

    def __init__(self, message: str, samples: list[int]) -> None:
        super().__init__(message)
        self.samples = samples


class RewardInputError(ValueError):
    """An input to a reward (``images``, ``prompts`` or ``metadata``) is malformed."""


class Reward(ABC):
    """Scores a batch of samples (images, videos or view sets) against their prompts.

    Call it as ``reward(samples, prompts, metadata, layout=None)``:

    Args:
        samples: floating tensor with values in [0, 1] (decoded pixels) in one of the reward's ``layouts``:
            ``(B, 3, H, W)``, ``(B, F, 3, H, W)`` or ``(B, V, 3, H, W)``.
        prompts: ``B`` prompt strings.
        metadata: ``B`` per-sample metadata objects (entries may be None), or None for "no metadata"
            (same as ``[None] * B``).
        layout: the batch's layout (the backbone's ``layout``); None: the declared layout with the batch's
            number of dimensions (a 4-D batch is an image batch).

    Returns:
        :class:`RewardOutput` with ``scores`` ``(B,)`` float32, finite, on ``samples.device``;
        ``details`` of per-sample values for logging; ``dense`` or None: a credit map with the layout's
        leading axes and a spatial grid, ``(B, h, w)`` for images, ``(B, F, h, w)`` / ``(B, V, h, w)``
        otherwise (``h = w = 1``: one credit per frame or view).

    Subclasses implement :meth:`compute`, which receives validated inputs (``metadata`` as a list).
    """

    name: ClassVar[str]
    differentiable: ClassVar[bool]
    granularity: ClassVar[Granularity]
    layouts: ClassVar[tuple[str, ...]] = ("image",)
    Options: ClassVar[type[RewardOptions]] = RewardOptions

    def __init__(self, **options: Any) -> None:
        self.options = type(self).Options(**options)

    @classmethod
    def from_config(cls, options: dict[str, Any]) -> "Reward":
        """Build from a config section's options (``reward: {name: ..., **options}``); rewards that take
        built objects (``compose``, ``win_rate``) override this to build them from their specs."""
        return cls(**options)

    @classmethod
    def check_config(cls, options: dict[str, Any]) -> bool:
        """Check a config section's options as :meth:`from_config` would, without building the reward (no model
        loaded, no torch imported: ``vgrl validate``); raises pydantic's ``ValidationError`` whose locations
        name the options. Returns whether the reward so configured is differentiable."""
        cls.Options.model_validate(options)
        return cls.differentiable

    @classmethod
    def example(cls, root: Path) -> "Reward":
        """A cheap valid instance for the conformance suite (``tests/conformance/test_reward_conformance.py``):
        the default options. A reward with required options overrides it; one that loads a model writes tiny random-init
        weights of its real classes under ``root`` (an empty directory of its own). One that cannot run in a
        test process (a server) raises ``NotImplementedError`` saying why, and the suite skips it with that."""
        return cls()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({opts})"

    @abstractmethod
    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        """Score validated inputs; see the class docstring for shapes."""

    def __call__(self, images: Tensor, prompts: Sequence[str],
                 metadata: Sequence[Any] | None = None, layout: str | None = None) -> RewardOutput:
        prompts, metadata = check_inputs(images, prompts, metadata, self.layouts, layout, f"reward {self.name!r}")
        if self.differentiable:
            out = self.compute(images, prompts, metadata)
        else:
            with torch.no_grad():
                out = self.compute(images.detach(), prompts, metadata)
        self._check_output(out, images)
        return out

    def monitor_scores(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Any] | None = None) -> Tensor:
        """``(B,)`` scores whose mean is comparable between evaluations: the hacking monitor's proxy.

        The scores themselves for a pointwise reward. A groupwise reward overrides it where its scores are
        relative (a win rate averages 0.5 in every group, a batch-standardised sum averages 0) or need
        groups the monitor's one-sample-per-prompt evaluation set lacks; one with no pointwise counterpart
        raises :class:`RewardInputError` and the monitor omits ``proxy_reward``.
        """
        with torch.no_grad():
            return self(images, prompts, metadata).scores.detach()

    def _check_output(self, out: RewardOutput, images: Tensor) -> None:
        """Raise if ``compute`` broke the contract (a bug in the reward, not in its inputs)."""
        who = f"reward {self.name!r}"
        if not isinstance(out, RewardOutput):
            raise TypeError(f"{who}: compute() must return a RewardOutput, got {type(out).__name__}")
        b, s = images.shape[0], out.scores
        if tuple(s.shape) != (b,) or s.dtype != torch.float32:
            raise TypeError(f"{who}: scores must be float32 of shape ({b},), got {s.dtype} {tuple(s.shape)}")
        if s.device != images.device:
            raise TypeError(f"{who}: scores are on {s.device} but images on {images.device}")
        bad = ~torch.isfinite(s.detach())
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            raise NonFiniteRewardError(f"{who}: non-finite scores for samples {rows}", rows)
        if not isinstance(out.details, dict):
            raise TypeError(f"{who}: details must be a dict, got {type(out.details).__name__}")
        lead = tuple(images.shape[:-3])  # (B,) or (B, N): the dense map's leading axes, then a grid
        if out.dense is not None and (out.dense.ndim != len(lead) + 2 or tuple(out.dense.shape[:len(lead)]) != lead):
            want = ", ".join(map(str, lead))
            raise TypeError(f"{who}: dense must have shape ({want}, h, w), got {tuple(out.dense.shape)}")
        if self.differentiable and images.requires_grad and torch.is_grad_enabled() and not s.requires_grad:
            raise RuntimeError(f"{who} declares differentiable=True but its scores carry no gradient")


def resolve_layout(samples: Tensor, layouts: Sequence[str], layout: str | None = None,
                   who: str = "the reward") -> str:
    """The layout of ``samples`` among ``layouts`` (given as ``layout``, else the one whose number of
    dimensions ``samples`` has); :class:`RewardInputError` in one line when it is not accepted."""
    accepts = " or ".join(describe(name) for name in layouts)
    if layout is not None:
        if layout not in LAYOUTS:
            raise RewardInputError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if layout not in layouts:
            raise RewardInputError(f"{who} accepts {accepts} samples only, got {'an' if layout == 'image' else 'a'} "
                                   f"{layout} batch of shape "
                                   f"{tuple(samples.shape)}")
        if samples.ndim != len(LAYOUTS[layout]):
            raise RewardInputError(f"a {describe(layout)} batch has {len(LAYOUTS[layout])} dimensions, got shape "
                                   f"{tuple(samples.shape)}")
        return layout
    fits = [name for name in layouts if len(LAYOUTS[name]) == samples.ndim]
    if not fits:
        kinds = [name for name in LAYOUTS if len(LAYOUTS[name]) == samples.ndim]
        if not kinds:
            shapes = " or ".join("(" + ", ".join("3" if d == "C" else d for d in LAYOUTS[n]) + ")" for n in layouts)
            raise RewardInputError(f"images must have shape {shapes}, got {tuple(samples.shape)}")
        raise RewardInputError(f"{who} accepts {accepts} samples only, got a {samples.ndim}-D "
                               f"({' or '.join(kinds)}) batch of shape {tuple(samples.shape)}")
    return fits[0]


def check_inputs(images: Any, prompts: Any, metadata: Any, layouts: Sequence[str] = ("image",),
                 layout: str | None = None, who: str = "the reward") -> tuple[list[str], list[Any]]:
    """Validate a reward's inputs; return ``prompts`` and ``metadata`` as lists (``None`` -> ``[None] * B``).

    ``images`` (the samples) must be a batch of 3-channel pixels in one of ``layouts``
    (:func:`resolve_layout`: ``layout`` names it, else its number of dimensions picks it).
    Raises :class:`RewardInputError` (a ``ValueError``) or ``TypeError`` naming the argument.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor with values in [0, 1], got {images.dtype}")
    layout = resolve_layout(images, layouts, layout, who)
    if images.shape[-3] != 3:
        dims = ", ".join("3" if d == "C" else d for d in LAYOUTS[layout])
        raise RewardInputError(f"images must have shape ({dims}), got {tuple(images.shape)}")
    b = images.shape[0]
    if b == 0:
        raise RewardInputError("images is an empty batch (B = 0)")
    x = images.detach()
    if not bool(torch.isfinite(x).all()):
        raise RewardInputError("images contain non-finite values (NaN or inf)")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise RewardInputError(f"images must lie in [0, 1], got min {lo:.4g} and max {hi:.4g}")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of {b} strings, got {type(prompts).__name__}")
    if len(prompts) != b:
        raise RewardInputError(f"prompts has {len(prompts)} entries but images has batch size {b}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__}")
    if metadata is None:
        return list(prompts), [None] * b
    if isinstance(metadata, str) or not isinstance(metadata, Sequence):
        raise TypeError(f"metadata must be a list of {b} entries (or None), got {type(metadata).__name__}")
    if len(metadata) != b:
        raise RewardInputError(f"metadata has {len(metadata)} entries but images has batch size {b}")
    return list(prompts), list(metadata)

