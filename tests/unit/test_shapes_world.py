"""The procedural ``shapes`` world: renderer, prompt splits and the programmatic checker."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from vgrl import registry
from vgrl.worlds import shapes as S
from vgrl.worlds._shapes_checker import ShapesChecker
from vgrl.worlds.shapes import CATEGORIES, ObjectSpec, PromptMeta, ShapesWorld, canonical


@pytest.fixture(scope="module")
def world() -> ShapesWorld:
    return ShapesWorld(32)


def _metas(world: ShapesWorld, category: str, n: int, seed: int) -> list[PromptMeta]:
    pool = [p.meta for p in world.prompts("train", category) + world.prompts("heldout", category)]
    return [pool[i] for i in np.random.default_rng(seed).integers(len(pool), size=n)]


def test_registered():
    assert "shapes" in registry.available("worlds")
    assert registry.resolve("worlds", "shapes") is ShapesWorld


# ---------------------------------------------------------------------- renderer
def test_render_deterministic_and_seeded(world):
    metas = _metas(world, "counting", 16, 0) + _metas(world, "position", 16, 0)
    a = world.render(metas, seed=3)
    assert a.shape == (32, 3, 32, 32) and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, world.render(metas, seed=3))
    b = world.render(metas, seed=4)
    differ = (a != b).flatten(1).any(1)
    assert differ.float().mean() >= 0.9  # a different seed moves (almost) every layout
    seeds = list(range(100, 132))  # one seed per sample: a sample renders the same alone
    c = world.render(metas, seed=seeds)
    assert torch.equal(c[5:6], world.render(metas[5:6], seed=seeds[5:6]))


def test_render_objects_never_touch(world):
    metas = [PromptMeta("counting", (ObjectSpec("square", "red", 4),))] * 64
    for i, m in enumerate(metas):
        boxes = [b[2:] for b in world.layout_scene(m, np.random.default_rng(i))]
        for j, (x, y, s) in enumerate(boxes):
            assert 1 <= x and x + s <= 31 and 1 <= y and y + s <= 31
            for (x2, y2, s2) in boxes[j + 1:]:
                assert x + s + S.GAP <= x2 or x2 + s2 + S.GAP <= x or y + s + S.GAP <= y2 or y2 + s2 + S.GAP <= y


# ---------------------------------------------------------------------- checker
@pytest.mark.parametrize("category", CATEGORIES)
def test_checker_accepts_ground_truth(world, category):
    metas = _metas(world, category, 200, seed=11)
    images = torch.cat([world.render(metas[:100], seed=1), world.render(metas[100:], seed=2)])
    res = world.check(images, metas)
    assert res.passed.float().mean() >= 0.99  # measured: 1.000 in every category
    assert res.score.mean() >= 0.99


def test_checker_accepts_ground_truth_at_64():
    world = ShapesWorld(64)
    metas = [m for c in CATEGORIES for m in _metas(world, c, 20, seed=5)]
    res = world.check(world.render(metas, seed=9), metas)
    assert res.passed.float().mean() >= 0.99


@pytest.mark.parametrize("category", CATEGORIES)
def test_checker_rejects_mismatch_noise_and_blank(world, category):
    metas = _metas(world, category, 200, seed=21)
    pool = [p.meta for p in world.prompts("train", category) + world.prompts("heldout", category)]
    rng = np.random.default_rng(22)
    others = []
    for m in metas:  # another prompt of the category asking different facts
        while canonical(o := pool[rng.integers(len(pool))]) == canonical(m):
            pass
        others.append(o)
    mismatch = world.check(world.render(metas, seed=1), others)
    assert mismatch.passed.float().mean() <= 0.02  # measured: 0.000 (ground truth: 1.000)
    assert mismatch.score.mean() <= 0.5            # measured 0.00-0.29 (two_object's 0.5 is one of two)
    noise = torch.rand(200, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blank = torch.full((200, 3, 32, 32), 0.1)
    for images in (noise, blank, torch.zeros(200, 3, 32, 32)):
        res = world.check(images, metas)
        assert not res.passed.any() and res.score.max() == 0.0  # measured: 0 and 0


def test_equivalent_prompts_pass_and_partial_credit(world):
    left = PromptMeta("position", (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")), "left_of")
    right = PromptMeta("position", (ObjectSpec("square", "blue"), ObjectSpec("circle", "red")), "right_of")
    above = PromptMeta("position", left.objects, "above")
    img = world.render([left], seed=0)
    res = world.check(img.expand(3, -1, -1, -1), [left, right, above])
    assert res.passed.tolist() == [True, True, False]
    assert res.score[2].item() == pytest.approx(2 / 3)  # both objects found, relation wrong
    three = PromptMeta("counting", (ObjectSpec("triangle", "green", 3),))
    res = world.check(world.render([three], seed=0).expand(3, -1, -1, -1), [
        three, PromptMeta("counting", (ObjectSpec("triangle", "green", 4),)),
        PromptMeta("counting", (ObjectSpec("triangle", "red", 3),))])
    assert res.passed.tolist() == [True, False, False]
    assert 0.5 < res.score[1] < 1 and res.score[2] == 0.5  # count off by one; right count, wrong colour
    red = PromptMeta("colors", (ObjectSpec("circle", "red"),))
    res = world.check(world.render([red], seed=0), [PromptMeta("colors", (ObjectSpec("circle", "cyan"),))])
    assert not res.passed[0] and res.score[0] == 0.5  # the circle is there, in the wrong colour


def test_extra_objects_pass_genevals_rule_but_are_counted(world):
    """'a green triangle' passes on an image of three green triangles (GenEval: at least one), and the
    checker reports the two extras; ground truth has none."""
    three = PromptMeta("counting", (ObjectSpec("triangle", "green", 3),))
    one = PromptMeta("colors", (ObjectSpec("triangle", "green"),))
    pair = PromptMeta("two_object", (ObjectSpec("triangle", None), ObjectSpec("square", None)))
    res = world.check(world.render([three], seed=0).expand(2, -1, -1, -1), [three, one])
    assert res.passed.tolist() == [True, True] and res.extra.tolist() == [0, 2]
    res = world.check(world.render([one, pair], seed=0), [one, pair])
    assert res.passed.tolist() == [True, True] and res.extra.tolist() == [0, 0]


def test_per_object_details(world):
    metas = [_metas(world, c, 1, seed=3)[0] for c in CATEGORIES]
    res = world.check(world.render(metas, seed=0), metas)
    assert len(res) == len(res.details) == len(metas)
    for meta, d in zip(metas, res.details):
        assert d["category"] == meta.category
        assert len(d["objects"]) == len(meta.objects)
        for spec, o in zip(meta.objects, d["objects"]):
            assert (o["shape"], o["colour"], o["count"]) == (spec.shape, spec.colour, spec.count)
            assert o["ok"] and o["score"] == 1.0 and o["found"] == spec.count and o["centroid"] is not None
        assert (d["relation"] is None) == (meta.relation is None)
        if meta.relation:
            assert d["relation"]["ok"] and d["relation"]["name"] == meta.relation
        assert len(d["detections"]) == sum(o.count for o in meta.objects)
        assert {"shape", "colour", "area", "centroid", "box"} <= set(d["detections"][0])
    assert res.extra.tolist() == [0] * len(metas)


def _bfs_components(cls: np.ndarray) -> int:
    seen, n = np.zeros(cls.shape, bool), 0
    for start in zip(*np.nonzero(cls)):
        if seen[start]:
            continue
        n += 1
        seen[start] = True
        todo = deque([start])
        while todo:
            b, y, x = todo.popleft()
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if (0 <= yy < cls.shape[1] and 0 <= xx < cls.shape[2] and not seen[b, yy, xx]
                        and cls[b, yy, xx] == cls[b, y, x]):
                    seen[b, yy, xx] = True
                    todo.append((b, yy, xx))
    return n


def test_labelling_matches_bfs():
    rng = np.random.default_rng(0)
    cls = rng.integers(0, 3, size=(3, 20, 20)) * (rng.random((3, 20, 20)) < 0.7)
    lab = ShapesChecker.label(cls)
    fg = cls > 0
    assert len(np.unique(lab[fg])) == _bfs_components(cls)
    # same label => same class and same image; each label is one of its component's pixels
    flat = lab.reshape(-1)
    assert np.array_equal(cls.reshape(-1)[flat[fg.reshape(-1)] - 1], cls[fg])


def test_check_rejects_bad_input(world):
    m = _metas(world, "colors", 2, seed=0)
    with pytest.raises(ValueError, match="2 prompt metas"):
        world.check(torch.zeros(3, 3, 32, 32), m)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        world.check(torch.zeros(2, 32, 32, 3), m)


# ---------------------------------------------------------------------- splits
def test_split_sizes_and_disjoint(world):
    train, held = world.prompts("train"), world.prompts("heldout")
    assert (len(train), len(held), len(world.prompts("paraphrase"))) == (1294, 906, 1294)
    assert {p.meta for p in train} | {p.meta for p in held} == set(S.all_metas())
    # disjoint even up to equivalent wordings (object order, converse relations)
    assert not {canonical(p.meta) for p in train} & {canonical(p.meta) for p in held}
    assert len({p.text for p in train + held}) == len(train) + len(held)
    for c in CATEGORIES:
        assert world.prompts("train", c)
    assert {p.meta.category for p in held} == set(CATEGORIES) - {"single_object"}


def test_heldout_combinations_unseen_in_training(world):
    def combos(meta):
        objs = meta.objects
        out = {("colour-shape", o.colour, o.shape) for o in objs if o.colour} | \
              {("shape-count", o.shape, o.count) for o in objs if o.count > 1}
        if len(objs) == 2:
            out.add(("shape-pair", frozenset((objs[0].shape, objs[1].shape))))
        return out

    seen = set().union(*(combos(p.meta) for p in world.prompts("train")))
    words = " ".join(p.text for p in world.prompts("train")).split()
    for p in world.prompts("heldout"):
        assert combos(p.meta) - seen, p.text  # every held-out prompt has an unseen combination
    for w in (*S.SHAPES, *S.COLOURS, "two", "three", "four", "left", "right", "above", "below"):
        assert w in words or w + "s" in words or w + "es" in words  # the words themselves are all seen


def test_paraphrases_map_to_training_metadata(world):
    train = world.prompts("train")
    para = world.prompts("paraphrase")
    assert [p.meta for p in para] == [p.meta for p in train]
    known = {p.text for p in train + world.prompts("heldout")}
    assert not {p.text for p in para} & known
    train_words = set(" ".join(p.text for p in train).split())
    for syn in ("crimson", "emerald", "azure", "golden", "fuchsia", "turquoise", "disc", "tile",
                "pair", "beneath", "over", "together"):
        assert syn not in train_words
        assert any(syn in p.text.split() for p in para)


def test_splits_deterministic(world):
    for split in S.SPLITS:
        fresh = S._split.__wrapped__(split)  # recomputed, not the cached tuple
        assert [(p.text, p.meta) for p in fresh] == [(p.text, p.meta) for p in world.prompts(split)]
    assert world.prompts("train", "counting")[0].text == "a photo of two red circles"
    with pytest.raises(ValueError, match="unknown split"):
        world.prompts("test")
