"""Every registered reward, built by its own ``example(root)`` classmethod (tiny random-init weights of the
real classes where it loads a model), on the shapes world's ground truth:

* declarations: ``name`` is the registry key, ``differentiable`` a bool, ``granularity`` valid, ``layouts``
  declared and containing ``"image"``;
* output contract: ``scores`` ``(B,)`` float32, finite, on the images' device; ``details`` a dict; ``dense``
  ``(B, ...)`` or None;
* the ``differentiable`` flag is truthful: a gradient reaches the images iff it is declared;
* deterministic: the same input twice gives bit-equal scores;
* pointwise (and dense) rewards are batch-split invariant: scoring two halves equals scoring the whole.

Parametrised over ``registry.available("rewards")`` (one test per reward and property, so one failure does
not hide the next). Why ``example`` on the reward and not a table here: a new reward declares how to build a
cheap instance of itself in its own file and gets the suite for free; the table would be one more list to keep
in sync. A reward is skipped only where ``example`` says it cannot run in a test process (a server) or an
optional extra is not installed, with that reason.
"""

from __future__ import annotations

import pytest
import torch

from vgrl import registry
from vgrl.rewards.base import GRANULARITIES, Reward
from vgrl.worlds.shapes import ShapesWorld, describe

NAMES = registry.available("rewards")
G = 2  # samples per prompt: groupwise rewards (win rate, diversity) need prompt groups


@pytest.fixture(scope="module")
def inputs():
    """``B = 4`` ground-truth renders of two prompts (two seeds each), their prompts (with a quoted word, so a
    reward that reads target text from the prompt, OCR, has one) and metadata."""
    world = ShapesWorld(32)
    metas = [p.meta for p in (world.prompts("train", "colors")[0], world.prompts("train", "position")[5])]
    metas = [m for m in metas for _ in range(G)]
    images = world.render(metas, seed=[3, 4, 5, 6])
    prompts = [f'{describe(m)} with "ok"' for m in metas]
    return images, prompts, metas


_BUILT: dict[str, Reward] = {}


@pytest.fixture()
def reward(request, tmp_path_factory) -> Reward:
    name = request.param
    if name not in _BUILT:
        cls = registry.resolve("rewards", name)
        try:
            _BUILT[name] = cls.example(tmp_path_factory.mktemp(name))
        except NotImplementedError as e:
            pytest.skip(f"{name}: {e}")
        except ModuleNotFoundError as e:
            if (e.name or "").startswith("vgrl"):
                raise
            pytest.skip(f"{name}: optional extra not installed ({e.name})")
        assert type(_BUILT[name]) is cls, f"{name}.example() must return a {cls.__name__}"
    return _BUILT[name]


def _params():
    return pytest.mark.parametrize("reward", NAMES, indirect=True)


@_params()
def test_declarations(reward, request):
    name = request.node.callspec.params["reward"]
    assert reward.name == name
    assert isinstance(reward.differentiable, bool) and reward.granularity in GRANULARITIES
    assert isinstance(reward.layouts, tuple) and "image" in reward.layouts
    assert type(reward).Options.model_config["extra"] == "forbid"


_SCORED: dict[str, tuple] = {}


def _scored(reward, inputs) -> tuple:
    """The reward's outputs on ``inputs`` twice (no grad; fresh copies the second time), computed once."""
    if reward.name not in _SCORED:
        images, prompts, metas = inputs
        with torch.no_grad():
            _SCORED[reward.name] = (reward(images, prompts, metas),
                                    reward(images.clone(), list(prompts), list(metas)))
    return _SCORED[reward.name]


@_params()
def test_output_contract(reward, inputs):
    images = inputs[0]
    out = _scored(reward, inputs)[0]
    s = out.scores
    assert s.shape == (len(images),) and s.dtype == torch.float32 and s.device == images.device
    assert bool(torch.isfinite(s).all()) and isinstance(out.details, dict)
    assert out.dense is None or (out.dense.ndim >= 2 and out.dense.shape[0] == len(images))


@_params()
def test_differentiable_flag_is_truthful(reward, inputs):
    images, prompts, metas = inputs
    x = images.clone().requires_grad_(True)
    scores = reward(x, prompts, metas).scores
    if reward.differentiable:
        (grad,) = torch.autograd.grad(scores.sum(), x)
        assert bool(torch.isfinite(grad).all()) and grad.abs().sum() > 0, "declared differentiable: no gradient"
    else:
        assert scores.grad_fn is None and not scores.requires_grad, "declared non-differentiable: scores carry grad"


@_params()
def test_deterministic(reward, inputs):
    a, b = _scored(reward, inputs)
    assert torch.equal(a.scores, b.scores)
    assert (a.dense is None) == (b.dense is None) and (a.dense is None or torch.equal(a.dense, b.dense))


@_params()
def test_pointwise_is_batch_split_invariant(reward, inputs):
    if reward.granularity == "groupwise":
        pytest.skip(f"{reward.name} is groupwise: its scores depend on the rest of the batch by declaration")
    images, prompts, metas = inputs
    whole = _scored(reward, inputs)[0]
    with torch.no_grad():
        parts = [reward(images[i:i + G], prompts[i:i + G], metas[i:i + G]) for i in range(0, len(images), G)]
    torch.testing.assert_close(torch.cat([p.scores for p in parts]), whole.scores, rtol=1e-5, atol=1e-5)
    if whole.dense is not None:
        torch.testing.assert_close(torch.cat([p.dense for p in parts]), whole.dense, rtol=1e-5, atol=1e-5)
