"""The ``shapes`` world: GenEval as a small procedural world of coloured shapes.

Scenes are ``resolution x resolution`` RGB images (default 32) of flat-coloured shapes on a plain
dark-grey background, rendered deterministically from a seed. Objects never overlap (bounding boxes
at least ``GAP`` pixels apart, one pixel from the border) so a programmatic checker can segment them.

Vocabulary: shapes ``circle, square, triangle, cross`` (triangle apex up, cross = plus sign, every
shape in a square bounding box of an odd side >= 9 px); colours ``red, green, blue, yellow,
magenta, cyan`` (:data:`PALETTE`).

Categories (GenEval's six; which facts each checks — see ``_shapes_checker.py`` for the rules):

* ``single_object`` "a photo of a circle": at least one circle, any colour.
* ``two_object`` "a photo of a circle and a square": one of each of two distinct shapes, any colour.
* ``counting`` "a photo of three green triangles": exactly N (2-4) triangles, all green.
* ``colors`` "a photo of a red circle": a circle, and it is red (single_object plus colour).
* ``position`` "a photo of a red circle to the left of a blue square": both coloured objects, and
  the first is left of / right of / above / below the second (distinct shapes; colours may repeat).
* ``color_attr`` "a photo of a red circle and a blue square": attribute binding — two distinct
  shapes, two distinct colours, each shape in its own colour.

Splits (disjoint by construction, deterministic; :func:`is_heldout` is the rule):

* ``heldout``: every prompt using a held-out (colour, shape) pair (:data:`HELDOUT_PAIRS`), pairing the
  two shapes of :data:`HELDOUT_SHAPE_PAIR` in one prompt, or a held-out (shape, count)
  (:data:`HELDOUT_COUNTS`). Every word still occurs in training; only the combinations are new.
* ``train``: every other prompt.
* ``paraphrase``: one rewording of each training prompt with an unseen prefix and synonyms
  ("crimson" for red, "a pair of" for two, "beneath" for below ...); its metadata equal that
  training prompt's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Union

from vgrl.worlds.base import CheckResult, Prompt, SummaryField, World, WorldError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

SHAPES = ("circle", "square", "triangle", "cross")
PALETTE = {
    "red": (0.90, 0.10, 0.10), "green": (0.10, 0.80, 0.10), "blue": (0.10, 0.20, 0.95),
    "yellow": (0.95, 0.90, 0.10), "magenta": (0.85, 0.10, 0.85), "cyan": (0.10, 0.90, 0.90),
}
COLOURS = tuple(PALETTE)
BACKGROUND = (0.1, 0.1, 0.1)
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left_of", "right_of", "above", "below")
COUNTS = (2, 3, 4)
SPLITS = ("train", "heldout", "paraphrase")
GAP = 2  # minimum pixels between two objects' bounding boxes

HELDOUT_PAIRS = frozenset({("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square")})
HELDOUT_SHAPE_PAIR = frozenset({"square", "triangle"})
HELDOUT_COUNTS = frozenset({("circle", 4), ("cross", 2)})

# Training wording and the paraphrase split's (never used in training prompts).
_BASE = {"prefix": ("a photo of",), "and": "and", **{c: c for c in COLOURS}, **{s: s for s in SHAPES},
         2: "two", 3: "three", 4: "four", "left_of": "to the left of", "right_of": "to the right of",
         "above": "above", "below": "below"}
_PARA = {**_BASE, "prefix": ("an image of", "a picture showing"), "and": "together with",
         "red": "crimson", "green": "emerald", "blue": "azure", "yellow": "golden", "magenta": "fuchsia",
         "cyan": "turquoise", "circle": "disc", "square": "tile", "cross": "plus sign",
         2: "a pair of", 3: "3", 4: "4", "left_of": "on the left side of",
         "right_of": "on the right side of", "above": "over", "below": "beneath"}


@dataclass(frozen=True)
class ObjectSpec:
    """One object of a prompt: ``count`` shapes of one kind, of ``colour`` (None: any colour)."""

    shape: str
    colour: str | None = None
    count: int = 1


@dataclass(frozen=True)
class PromptMeta:
    """What a prompt asks for. ``relation`` (position only) reads ``objects[0] relation objects[1]``."""

    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None


MetaLike = Union[Prompt, PromptMeta]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(phrase: str) -> str:
    return phrase + ("es" if phrase.endswith(("s", "x", "sh", "ch")) else "s")


def describe(meta: PromptMeta, vocab: dict = _BASE, prefix: str | None = None) -> str:
    """The prompt text of ``meta`` in ``vocab`` (training wording by default)."""
    def noun(o: ObjectSpec) -> str:
        return " ".join(vocab[w] for w in (o.colour, o.shape) if w is not None)

    o = meta.objects
    if meta.category == "counting":
        body = f"{vocab[o[0].count]} {_plural(noun(o[0]))}"
    elif len(o) == 1:
        body = _article(noun(o[0]))
    else:
        link = vocab[meta.relation] if meta.relation else vocab["and"]
        body = f"{_article(noun(o[0]))} {link} {_article(noun(o[1]))}"
    return f"{prefix or vocab['prefix'][0]} {body}"


def all_metas() -> list[PromptMeta]:
    """Every prompt of the world, in a fixed order (category, then nested vocabulary loops)."""
    pm, ob = PromptMeta, ObjectSpec
    out = [pm("single_object", (ob(s),)) for s in SHAPES]
    out += [pm("two_object", (ob(a), ob(b))) for a in SHAPES for b in SHAPES if a != b]
    out += [pm("counting", (ob(s, c, n),)) for n in COUNTS for c in COLOURS for s in SHAPES]
    out += [pm("colors", (ob(s, c),)) for c in COLOURS for s in SHAPES]
    out += [pm("position", (ob(sa, ca), ob(sb, cb)), r) for sa in SHAPES for sb in SHAPES if sa != sb
            for ca in COLOURS for cb in COLOURS for r in RELATIONS]
    out += [pm("color_attr", (ob(sa, ca), ob(sb, cb))) for sa in SHAPES for sb in SHAPES if sa != sb
            for ca in COLOURS for cb in COLOURS if ca != cb]
    return out


def is_heldout(meta: PromptMeta) -> bool:
    """The held-out rule: an unseen (colour, shape), shape pairing or (shape, count) combination."""
    objs = meta.objects
    return (any((o.colour, o.shape) in HELDOUT_PAIRS for o in objs)
            or (len(objs) == 2 and {objs[0].shape, objs[1].shape} == HELDOUT_SHAPE_PAIR)
            or any((o.shape, o.count) in HELDOUT_COUNTS for o in objs))


_CONVERSE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}


def canonical(meta: PromptMeta) -> PromptMeta:
    """A normal form: equal for prompts asking the same facts ("a circle and a square" and "a square
    and a circle"; "A left of B" and "B right of A")."""
    objs = meta.objects
    if meta.relation in ("right_of", "below"):
        return PromptMeta(meta.category, objs[::-1], _CONVERSE[meta.relation])
    if meta.relation is None and len(objs) == 2:
        return PromptMeta(meta.category, tuple(sorted(objs, key=lambda o: (o.shape, o.colour or ""))))
    return meta


@functools.lru_cache(maxsize=None)
def _split(split: str) -> tuple[Prompt, ...]:
    if split not in SPLITS:
        raise WorldError(ShapesWorld.split_problem(split))
    if split == "paraphrase":
        return tuple(Prompt(describe(p.meta, _PARA, _PARA["prefix"][i % 2]), p.meta)
                     for i, p in enumerate(_split("train")))
    want = split == "heldout"
    return tuple(Prompt(describe(m), m) for m in all_metas() if is_heldout(m) == want)


def _meta(m: MetaLike) -> PromptMeta:
    return m.meta if isinstance(m, Prompt) else m


class ShapesWorld(World):
    """Prompts, ground-truth renders and a programmatic checker for the ``shapes`` world.

    Besides accuracy and score, its evaluation reports how often a sample draws more objects than its
    prompt names (``extra_objects``: GenEval's rules let "a X" pass with any number of other objects drawn)
    and the accuracy that counts such samples as failures (``strict_accuracy``, the headline field).

    Args:
        resolution: image side in pixels (>= 32). Object sides are odd, from
            ``max(9, ~0.26 * resolution)`` to ``~0.35 * resolution`` (9-11 px at 32, 17-21 at 64).
        **checker_options: forwarded to :class:`~vgrl.worlds._shapes_checker.ShapesChecker` (thresholds).
    """

    name = "shapes"
    layout = "image"
    categories = CATEGORIES
    splits = SPLITS
    Meta = PromptMeta
    fields: ClassVar[dict[str, SummaryField]] = {
        "extra_objects": SummaryField("extra objects", flag=True),
        "strict_accuracy": SummaryField("strict accuracy (nothing extra drawn)", headline=True),
    }
    shapes = SHAPES
    colours = COLOURS
    relations = RELATIONS

    def __init__(self, resolution: int = 32, **checker_options):
        if resolution < 32:
            raise ValueError(f"resolution must be >= 32, got {resolution}")
        from vgrl.worlds._shapes_checker import ShapesChecker, occupancy_grid
        from vgrl.worlds._shapes_render import Renderer, shape_mask

        self.resolution = resolution
        self.renderer = Renderer(PALETTE, BACKGROUND, resolution, GAP)
        self.sizes = self.renderer.sizes
        templates = {s: occupancy_grid(shape_mask(s, 61)) for s in SHAPES}
        self.checker = ShapesChecker(PALETTE, BACKGROUND, templates, resolution, **checker_options)

    # ------------------------------------------------------------------ prompts
    @classmethod
    def categories_of(cls, split: str) -> tuple[str, ...]:
        """The categories with prompts in ``split`` (``heldout`` has no ``single_object`` prompt)."""
        present = {p.meta.category for p in _split(split)}
        return tuple(c for c in CATEGORIES if c in present)

    def prompts(self, split: str = "train", category: str | None = None) -> list[Prompt]:
        """The prompts of ``split`` (``train``, ``heldout``, ``paraphrase``), optionally one category."""
        if category is not None and category not in CATEGORIES:
            raise WorldError(f"unknown category {category!r}; valid: {', '.join(CATEGORIES)}")
        return [p for p in _split(split) if category is None or p.meta.category == category]

    # ------------------------------------------------------------------ rendering
    def render(self, metas: Sequence[MetaLike], seed: int | Sequence[int] = 0) -> Tensor:
        """Ground-truth images ``(B, 3, H, W)`` float32 in [0, 1] for prompts (or their metas).

        ``seed``: an int (sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``) or one
        int per sample (sample ``i`` from ``default_rng(seed[i])``, so it renders the same alone).
        """
        return self.renderer.render([_meta(m) for m in metas], seed)

    def layout_scene(self, meta: PromptMeta, rng: np.random.Generator) -> list[tuple[str, str, int, int, int]]:
        """A scene for ``meta``: ``(shape, colour, x0, y0, size)`` per object, boxes non-overlapping."""
        return self.renderer.layout(meta, rng)

    # ------------------------------------------------------------------ checking
    def check(self, images: Tensor, metas: Sequence[MetaLike], *, dense: bool = False) -> CheckResult:
        """Judge ``(B, 3, H, W)`` images in [0, 1] against their prompts.

        Returns a :class:`~vgrl.worlds._shapes_checker.ShapesCheckResult` (``extra``: components beyond the
        objects the prompt names); ``values``: ``extra_objects`` (``extra > 0``) and ``strict_accuracy``
        (passed with nothing extra); ``dense``: the ``(B, H, W)`` per-pixel credit map
        (``ShapesChecker.credit_map``) when asked for.
        """
        metas = [_meta(m) for m in metas]
        if not dense:
            return self.checker.check(images, metas)
        if len(metas) != len(images):
            raise ValueError(f"{len(images)} images but {len(metas)} prompt metas")
        det = self.checker.detect(images)
        result = self.checker.judge(det, metas)
        result.dense = self.checker.credit_map(det, result)
        return result

    def mismatched(self, meta: MetaLike) -> PromptMeta:
        """A prompt of the same category that ``meta``'s ground truth can never satisfy: the fact the
        category tests, negated (another shape; another count; another colour; swapped colours; the converse
        relation). The conformance suite's negatives: :meth:`check` must fail every render of ``meta`` on it."""
        m = _meta(meta)
        o = m.objects
        used = {x.shape for x in o}
        other = [s for s in SHAPES if s not in used]
        if m.category in ("single_object", "two_object"):
            objs = tuple(ObjectSpec(s, x.colour, x.count) for x, s in zip(o, other))
        elif m.category == "counting":
            objs = (ObjectSpec(o[0].shape, o[0].colour, COUNTS[(COUNTS.index(o[0].count) + 1) % len(COUNTS)]),)
        elif m.category == "colors":
            objs = (ObjectSpec(o[0].shape, COLOURS[(COLOURS.index(o[0].colour) + 1) % len(COLOURS)]),)
        elif m.category == "color_attr":
            objs = (ObjectSpec(o[0].shape, o[1].colour), ObjectSpec(o[1].shape, o[0].colour))
        else:  # position
            return PromptMeta(m.category, o, _CONVERSE[m.relation])
        return PromptMeta(m.category, objs, m.relation)


COMPONENT = ShapesWorld
