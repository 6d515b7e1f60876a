"""A weighted sum of rewards, with optional per-batch standardisation.

With terms ``k = 1..K`` (reward ``R_k``, weight ``w_k``), raw scores ``r_k = R_k(x)`` ``(B,)`` and the
batch standardisation

    z(r)_i = (r_i - mean(r)) / sqrt(var(r) + eps),    var the population variance over the batch,

the composed score is, by ``normalise``:

* ``"none"``:   ``s = sum_k w_k r_k``;
* ``"before"``: ``s = sum_k w_k z(r_k)`` — every term is put on a unit scale first, so one reward's
  scale (JPEG sizes in kB vs. a [0, 1] checker score) cannot drown the others and ``w_k`` are
  relative importances;
* ``"after"``:  ``s = z(sum_k w_k r_k)``.

A constant term (``var = 0``) standardises to exactly 0 with a finite gradient: ``eps`` keeps the
denominator away from 0, and the mean is taken after shifting by the first sample, which makes the
centred values exact zeros. Standardising across the batch makes a sample's score depend on the
others, so a normalising composition is ``granularity = "groupwise"``: the batch it sees is the
population it is standardised over (per-prompt-group advantages, as in Flow-GRPO, arXiv 2505.05470,
are the algorithm's business, not the reward's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, NoReturn

from pydantic import Field, ValidationError
from pydantic_core import PydanticCustomError

from vgrl._lazy import lazy
from vgrl import registry
from vgrl.rewards.base import Reward, RewardOptions
from vgrl.types import RewardOutput

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")

_SPEC_KEYS = ("name", "weight", "options", "label")
_RESERVED = ("total",)


class ComposeOptions(RewardOptions):
    normalise: Literal["none", "before", "after"] = Field(
        "none", description="standardise each term across the batch ('before'), the weighted sum ('after'), or not")
    eps: float = Field(1e-8, gt=0.0, description="added to the batch variance in the standardisation")


class Term(NamedTuple):
    """One term of a composition: ``weight * reward``, logged under ``name``."""

    reward: Reward
    weight: float
    name: str


def standardise(r: Tensor, eps: float) -> Tensor:
    """``(r - mean(r)) / sqrt(var(r) + eps)`` over the batch ``(B,)``; a constant ``r`` gives exact zeros.

    Differentiable with a finite gradient everywhere (also for a constant ``r``).
    """
    d = r - r[0].detach()  # shift-invariant; makes a constant batch exactly zero
    c = d - d.mean()
    return c / torch.sqrt(c.pow(2).mean() + eps)


def _check_terms(terms: Any) -> list[Term]:
    if isinstance(terms, (str, Mapping)) or not isinstance(terms, Sequence) or len(terms) == 0:
        raise TypeError("terms must be a non-empty list of (reward, weight, name) tuples")
    out: list[Term] = []
    for i, item in enumerate(terms):
        where = f"terms[{i}]"
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise TypeError(f"{where} must be a (reward, weight, name) tuple, got {item!r}")
        reward, weight, name = item
        if not isinstance(reward, Reward):
            raise TypeError(f"{where}.reward must be a vgrl Reward (e.g. vgrl.rewards.get('jpeg')), "
                            f"got {type(reward).__name__}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"{where}.weight must be a finite number, got {weight!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.name must be a non-empty string, got {name!r}")
        if name in _RESERVED:
            raise ValueError(f"{where}.name {name!r} is reserved (details key); choose another")
        if any(t.name == name for t in out):
            raise ValueError(f"{where}.name {name!r} repeats an earlier term's; term names must be unique")
        out.append(Term(reward, float(weight), name))
    return out


def reward_from_spec(item: Any, where: str, keys: Sequence[str] = ("name", "options")) -> Reward:
    """Build one reward from config data ``{"name": NAME, "options": {...}}``, errors naming ``where``.

    ``name`` (required): a reward registry key or ``"pkg.mod:Class"``; ``options`` (default ``{}``):
    validated by that reward's ``Options``. ``keys`` are the mapping's valid keys (a caller may allow
    more, e.g. a composition term's ``weight`` and ``label``, and reads those itself). ``compose`` cannot
    be built this way (it needs built terms). Errors read ``terms[1].options.quality: ...``.
    """
    if not isinstance(item, Mapping):
        raise TypeError(f"{where} must be a mapping with keys {', '.join(keys)}, got {type(item).__name__}")
    unknown = sorted(set(item) - set(keys), key=str)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; valid: {', '.join(keys)}")
    if "name" not in item:
        raise ValueError(f"{where}.name is required; valid: {', '.join(registry.available('rewards'))}")
    name = item["name"]
    if not isinstance(name, str):
        raise TypeError(f"{where}.name must be a string, got {type(name).__name__}")
    if name == Compose.name:
        raise ValueError(f"{where}.name: 'compose' cannot be nested through a spec; "
                         "build the inner Compose and pass it in terms=")
    try:
        reward_cls = registry.resolve("rewards", name)
    except registry.RegistryError as e:
        raise registry.RegistryError(f"{where}.name: {e}") from None
    opts = item.get("options", {})
    if not isinstance(opts, Mapping):
        raise TypeError(f"{where}.options must be a mapping, got {type(opts).__name__}")
    try:
        return reward_cls(**opts)
    except ValidationError as e:
        problems = "; ".join(f"{where}.options.{'.'.join(map(str, err['loc']))}: {err['msg']}"
                             for err in e.errors())
        raise ValueError(f"invalid options for reward {name!r}: {problems}") from e


def _invalid(loc: tuple, message: str, value: Any) -> NoReturn:
    raise ValidationError.from_exception_data("reward options", [
        {"type": PydanticCustomError("reward_spec", "{message}", {"message": message}), "loc": loc, "input": value}])


def check_spec(item: Any, loc: tuple, keys: Sequence[str] = ("name", "options")) -> bool:
    """Check one reward spec ``{"name": NAME, "options": {...}}`` as :func:`reward_from_spec` reads it, without
    building the reward; raises a ``ValidationError`` located under ``loc``. Returns whether it is differentiable.

    An out-of-tree ``"pkg.mod:Class"`` reward is not imported here (only when the run is built)."""
    if item is None:
        _invalid(loc, f"missing; give a mapping with keys {', '.join(keys)}", item)
    if not isinstance(item, Mapping):
        _invalid(loc, f"expected a mapping with keys {', '.join(keys)}, got {type(item).__name__}", item)
    for key in sorted(set(item) - set(keys), key=str):
        _invalid(loc + (key,), f"unknown field {key!r}; valid: {', '.join(keys)}", item[key])
    name = item.get("name")
    if not isinstance(name, str):
        _invalid(loc + ("name",), f"a reward name is required; valid: {', '.join(registry.available('rewards'))}",
                 name)
    if name == Compose.name:
        _invalid(loc + ("name",), "'compose' cannot be nested through a spec", name)
    opts = item.get("options", {})
    if not isinstance(opts, Mapping):
        _invalid(loc + ("options",), f"expected a mapping of options, got {type(opts).__name__}", opts)
    try:
        registry.check_name("rewards", name)
    except registry.RegistryError as e:
        _invalid(loc + ("name",), str(e), name)
    if registry.is_external(name):
        return False  # not imported before the run is built (it may import torch at its top)
    reward_cls = registry.resolve("rewards", name)
    try:
        return reward_cls.check_config(dict(opts))
    except ValidationError as e:
        raise ValidationError.from_exception_data(e.title, [
            {"type": err["type"], "loc": loc + ("options",) + tuple(err["loc"]), "input": err["input"],
             **({"ctx": err["ctx"]} if "ctx" in err else {})} for err in e.errors()]) from None


class Compose(Reward):
    """``sum_k w_k r_k`` (optionally standardised; see the module docstring for the maths).

    Args:
        terms: ``[(reward, weight, name), ...]``: built rewards, finite weights (negative: a penalty;
            zero: logged only) and unique names for the logs.
        normalise: ``"none" | "before" | "after"``.
        eps: added to the batch variance when standardising.

    ``differentiable`` is True only when every term is; ``granularity`` is ``"groupwise"`` when
    normalising or when any term is groupwise, else ``"pointwise"`` (terms' ``dense`` maps are not
    combined). ``details``: each term's raw scores under ``"<name>"``, its own details under
    ``"<name>/<key>"``, its standardised scores under ``"<name>/norm"`` (``normalise="before"``), and
    the weighted sum before any ``"after"`` standardisation under ``"total"``.
    """

    name = "compose"
    differentiable = False  # per instance: every term differentiable
    granularity = "groupwise"  # per instance: see the class docstring
    # layouts, per instance: those every term accepts
    Options: ClassVar[type[RewardOptions]] = ComposeOptions

    @classmethod
    def example(cls, root: Path) -> Compose:
        """Two JPEG terms, unnormalised (a pointwise composition; the conformance suite's instance)."""
        from vgrl.rewards.jpeg import JpegCompressibility

        return cls([(JpegCompressibility(), 1.0, "jpeg95"), (JpegCompressibility(quality=50), 0.5, "jpeg50")])

    def __init__(self, terms: Sequence[tuple[Reward, float, str]], **options: Any) -> None:
        super().__init__(**options)
        self.terms = _check_terms(terms)
        self.differentiable = all(t.reward.differentiable for t in self.terms)
        batchwise = self.options.normalise != "none" or any(t.reward.granularity == "groupwise"
                                                              for t in self.terms)
        self.granularity = "groupwise" if batchwise else "pointwise"
        self.layouts = tuple(x for x in self.terms[0].reward.layouts if all(x in t.reward.layouts for t in self.terms))
        if not self.layouts:
            raise ValueError("compose: the terms accept no common sample layout (" + ", ".join(
                f"{t.name}: {'/'.join(t.reward.layouts)}" for t in self.terms) + ")")

    def __repr__(self) -> str:
        terms = ", ".join(f"({t.reward!r}, {t.weight}, {t.name!r})" for t in self.terms)
        return f"Compose([{terms}], normalise={self.options.normalise!r})"

    @classmethod
    def from_config(cls, options: dict[str, Any]) -> Compose:
        """``reward: {name: compose, terms: [{name, weight, options, label}, ...], normalise: ..., eps: ...}``."""
        options = dict(options)
        if "terms" not in options:
            raise ValueError("compose needs 'terms': a list of {name, weight, options, label} (docs/rewards/compose.md)")
        return cls.from_spec(options.pop("terms"), **options)

    @classmethod
    def check_config(cls, options: dict[str, Any]) -> bool:
        """:meth:`from_config`'s checks without building the terms; differentiable when every term is."""
        options = dict(options)
        spec = options.pop("terms", None)
        if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence) or len(spec) == 0:
            _invalid(("terms",), f"a non-empty list of mappings with keys {', '.join(_SPEC_KEYS)} is required "
                                 "(docs/rewards/compose.md)", spec)
        cls.Options.model_validate(options)
        return all([check_spec(item, ("terms", i), _SPEC_KEYS) for i, item in enumerate(spec)])

    @classmethod
    def from_spec(cls, spec: Sequence[Mapping[str, Any]], **options: Any) -> Compose:
        """Build from config-like data: ``[{"name": "jpeg", "weight": 0.5, "options": {...}}, ...]``.

        Per term: ``name`` (required) a reward registry key or ``"pkg.mod:Class"``; ``weight``
        (default 1.0); ``options`` (default ``{}``) validated by that reward's ``Options``; ``label``
        (default ``name``) the term's name in the logs. ``options`` here are the composition's own
        (``normalise``, ``eps``). Errors name the term index and field (``terms[1].options: ...``).
        """
        if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence) or len(spec) == 0:
            raise TypeError(f"terms must be a non-empty list of mappings with keys {', '.join(_SPEC_KEYS)}")
        terms = []
        for i, item in enumerate(spec):
            reward = reward_from_spec(item, f"terms[{i}]", _SPEC_KEYS)
            terms.append((reward, item.get("weight", 1.0), item.get("label", item["name"])))
        return cls(terms, **options)

    def monitor_scores(self, images: Tensor, prompts: Sequence[str], metadata: Sequence[Any] | None = None) -> Tensor:
        """The weighted sum of the terms' monitor scores, never standardised (a standardised batch averages
        0 whatever the samples' quality)."""
        return sum(t.weight * t.reward.monitor_scores(images, prompts, metadata) for t in self.terms)

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        details: dict[str, Any] = {}

        def put(key: str, value: Any) -> None:
            if key in details:
                raise RuntimeError(f"compose: two details share the key {key!r}; rename a term")
            details[key] = value

        mode, eps = self.options.normalise, self.options.eps
        weighted = []
        for t in self.terms:
            out = t.reward(images, prompts, metadata)
            r = out.scores
            put(t.name, r.detach())
            for k, v in out.details.items():
                put(f"{t.name}/{k}", v)
            if mode == "before":
                r = standardise(r, eps)
                put(f"{t.name}/norm", r.detach())
            weighted.append(t.weight * r)
        total = torch.stack(weighted).sum(0)
        put("total", total.detach())
        scores = standardise(total, eps) if mode == "after" else total
        return RewardOutput(scores=scores, details=details)


COMPONENT = Compose
