"""The World contract: a procedural task with prompts, ground truth and a verifiable checker.

A world is what ``vgrl train`` trains on and ``vgrl eval`` measures: prompts with typed metadata in
named splits, a renderer of ground-truth samples and a programmatic checker. It declares, as class
attributes readable without importing torch (``vgrl validate`` checks a config against them):

* ``name``: its registry key (the module name; ``package.module:Class`` for an out-of-tree world).
* ``layout``: the sample layout it renders and checks (:mod:`vgrl.layouts`: image, video, multiview).
* ``splits``: its prompt splits (e.g. ``train``, ``heldout``); ``categories``: its prompt categories.
* ``Meta``: the type of its prompts' metadata; every meta has a ``category`` (one of ``categories``).
* ``fields``: its own per-sample evaluation fields (:class:`SummaryField`), beside the accuracy and
  score every world reports. The evaluator averages each per category and overall (JSON keys ``<key>``
  and ``overall_<key>``), the trainer reports the ``headline`` ones before and after training
  (``heldout_<key>_before`` / ``_after``), and the ``flag`` ones are per-sample defects that the
  ``world_checker`` reward logs and can penalise.

A world is built as ``World(resolution=side)`` (the sample side in pixels) and implements
:meth:`World.prompts`, :meth:`World.render` and :meth:`World.check`. Keep a world module's top level
torch-free (import the renderer and checker lazily or from a private module), so that validating a
config stays fast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from vgrl import layouts

if TYPE_CHECKING:
    from torch import Tensor


class WorldError(ValueError):
    """A split, category or input a world does not have or accept."""


@dataclass(frozen=True)
class Prompt:
    """A prompt text and the metadata its checker reads (``meta.category`` is one of the world's categories)."""

    text: str
    meta: Any


@dataclass(frozen=True)
class SummaryField:
    """One per-sample evaluation field of a world (its values are in [0, 1]; averaged per category).

    Attributes:
        label: the human name shown in tables and reports.
        flag: a per-sample defect (bool) the checker reports; ``world_checker`` logs it in its details and
            can subtract a penalty from flagged samples.
        headline: reported before -> after in ``summary.json`` (``heldout_<key>_before`` / ``_after``) and
            the hacking monitor's gold metric (the first headline field; else the accuracy).
    """

    label: str
    flag: bool = False
    headline: bool = False


@dataclass
class CheckResult:
    """A world checker's verdict on a batch of ``B`` samples.

    Attributes:
        passed: ``(B,)`` bool, every fact the prompt asks for holds (the accuracy counts these).
        score: ``(B,)`` float32 partial credit in [0, 1].
        details: per sample, a dict of what the checker found (the world documents its keys).
        values: the world's own per-sample fields, one ``(B,)`` bool or float tensor per key of
            ``World.fields``.
        dense: ``check(..., dense=True)`` only: the credit map, the samples' shape without the channel axis
            (``(B, H, W)`` for images, ``(B, F, H, W)`` for videos), values in [0, 1].
    """

    passed: Tensor
    score: Tensor
    details: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, Tensor] = field(default_factory=dict)
    dense: Tensor | None = None

    def __len__(self) -> int:
        return self.passed.shape[0]


class World(ABC):
    """Prompts with typed metadata, ground-truth renders and a checker; see the module docstring."""

    name: ClassVar[str]
    layout: ClassVar[str] = "image"
    splits: ClassVar[tuple[str, ...]]
    categories: ClassVar[tuple[str, ...]]
    Meta: ClassVar[type]
    fields: ClassVar[dict[str, SummaryField]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        layouts.check_name(cls.layout, f"world {cls.__name__}.layout")
        bad = [k for k, f in cls.fields.items() if not isinstance(f, SummaryField)]
        if bad:
            raise TypeError(f"world {cls.__name__}.fields: {bad} must map to SummaryField")

    # ------------------------------------------------------------------ declared facts (torch-free)
    @classmethod
    def flags(cls) -> tuple[str, ...]:
        """Keys of the per-sample defect fields (``SummaryField.flag``), in declaration order."""
        return tuple(k for k, f in cls.fields.items() if f.flag)

    @classmethod
    def headline(cls) -> tuple[str, ...]:
        """Keys of the fields reported before -> after training (``SummaryField.headline``)."""
        return tuple(k for k, f in cls.fields.items() if f.headline)

    @classmethod
    def split_problem(cls, split: str) -> str | None:
        """A one-line message when ``split`` is not one of :attr:`splits`, else None."""
        if split in cls.splits:
            return None
        return f"unknown split {split!r} of world {cls.name!r}; valid: {', '.join(cls.splits)}"

    @classmethod
    def categories_of(cls, split: str) -> tuple[str, ...]:
        """The categories that have prompts in ``split`` (all of :attr:`categories` unless a world says
        otherwise; override it torch-free where a split lacks some)."""
        return cls.categories

    @classmethod
    def category_problem(cls, categories: Sequence[str], split: str | None = None) -> str | None:
        """A one-line message naming the entries of ``categories`` that are not the world's (or, given a
        ``split``, that have no prompt in it), else None."""
        valid = cls.categories if split is None else cls.categories_of(split)
        unknown = [c for c in categories if c not in valid]
        if not unknown:
            return None
        names, tail = ", ".join(map(repr, unknown)), "" if split is None else f" in split {split!r}"
        if any(c not in cls.categories for c in unknown):
            return f"{names}: not a category of world {cls.name!r}; valid{tail}: {', '.join(valid)}"
        return f"{names}: no prompt of split {split!r} of world {cls.name!r}; valid{tail}: {', '.join(valid)}"

    def check_split(self, split: str) -> None:
        """Raise :class:`WorldError` unless ``split`` is one of :attr:`splits`."""
        problem = self.split_problem(split)
        if problem:
            raise WorldError(problem)

    # ------------------------------------------------------------------ the contract
    @abstractmethod
    def prompts(self, split: str = "train", category: str | None = None) -> list[Prompt]:
        """The prompts of ``split`` in a fixed order, optionally of one category (raise :class:`WorldError`
        on an unknown split or category)."""

    @abstractmethod
    def render(self, metas: Sequence[Any], seed: int | Sequence[int] = 0) -> Tensor:
        """Ground-truth samples for prompt metas (or prompts), in :attr:`layout`, values in [0, 1];
        deterministic in ``seed`` (an int for the batch, or one per sample)."""

    @abstractmethod
    def mismatched(self, meta: Any) -> Any:
        """A meta of the same category that a ground-truth render of ``meta`` cannot satisfy (the fact the category
        tests, negated): the conformance suite's negatives, since only the world knows them."""

    @abstractmethod
    def check(self, samples: Tensor, metas: Sequence[Any], *, dense: bool = False) -> CheckResult:
        """Judge ``samples`` (in :attr:`layout`) against their prompts' metas: ``passed``, ``score``, the
        world's ``values`` (every key of :attr:`fields`) and, with ``dense=True``, the credit map."""
