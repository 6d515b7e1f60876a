"""Every registered world: its checker passes 100% of its own ground truth and 0% of mismatched prompts.

Parametrised over ``registry.available("worlds")`` x the world's splits x its categories, so a new world
gets the suite by being registered, and one failing category does not hide the next. The negatives come
from the world itself (``world.mismatched(meta)``: the same category with the fact it tests negated), since
only the world knows which prompts a ground truth cannot satisfy; the suite checks that each negative is a
real prompt (its own ground truth passes) and that the checker refuses the original render on it.
"""

from __future__ import annotations

import functools

import pytest
import torch

from vgrl import registry

PER_CASE = 6  # prompts sampled per (split, category), spread over the split's list
SEEDS = (0, 1)  # two renders of each prompt (layouts, sizes and "any colour" colours differ)


@functools.lru_cache(maxsize=None)
def _world(name: str):
    return registry.resolve("worlds", name)()


def _cases() -> list[tuple[str, str, str]]:
    out = []
    for name in registry.available("worlds"):
        cls = registry.resolve("worlds", name)
        out += [(name, split, cat) for split in cls.splits for cat in cls.categories]
    return out


CASES = _cases()


def _sample(world, split: str, category: str) -> list:
    prompts = world.prompts(split, category)
    if not prompts:
        pytest.skip(f"split {split!r} has no {category!r} prompts")
    step = max(1, len(prompts) // PER_CASE)
    return [p.meta for p in prompts[::step][:PER_CASE]]


def _ground_truth(world, metas: list) -> tuple[list, torch.Tensor]:
    metas = [m for m in metas for _ in SEEDS]
    seeds = [1000 * j + s for j in range(len(metas) // len(SEEDS)) for s in SEEDS]
    return metas, world.render(metas, seed=seeds)


def test_every_world_has_cases():
    names = registry.available("worlds")
    assert names and {c[0] for c in CASES} == set(names)


@pytest.mark.parametrize("name,split,category", CASES)
def test_checker_passes_its_own_ground_truth(name, split, category):
    world = _world(name)
    metas, images = _ground_truth(world, _sample(world, split, category))
    assert images.ndim >= 4 and images.shape[0] == len(metas) and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    result = world.check(images, metas)
    assert len(result) == len(metas)
    failed = [metas[i] for i in (~result.passed).nonzero().flatten().tolist()]
    assert not failed, f"{name}: checker fails its own ground truth for {failed}"
    assert torch.equal(result.score, torch.ones(len(metas))), "a passing sample has full partial credit"


@pytest.mark.parametrize("name,split,category", CASES)
def test_checker_fails_mismatched_prompts(name, split, category):
    world = _world(name)
    metas, images = _ground_truth(world, _sample(world, split, category))
    wrong = [world.mismatched(m) for m in metas]
    assert all(w != m and w.category == m.category for w, m in zip(wrong, metas))
    own = world.check(world.render(wrong, seed=list(range(len(wrong)))), wrong)
    assert bool(own.passed.all()), "a mismatched prompt must be a satisfiable prompt (its own ground truth passes)"
    result = world.check(images, wrong)
    passed = [(m, w) for m, w, ok in zip(metas, wrong, result.passed.tolist()) if ok]
    assert not passed, f"{name}: ground truth of the first prompt passes the second: {passed}"
    assert bool((result.score < 1).all())
