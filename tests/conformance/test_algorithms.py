"""Every registered algorithm, in every option set it declares (``Algorithm.examples()``), on the tiny flow
backbone and a short real rollout, driven as the trainer drives it (sampling policy, prepare, before_update,
units, loss):

* the loss of every unit is finite and its gradient reaches the trainable parameters (and is finite);
* zero advantages give a zero gradient where the algorithm declares ``advantage_weighted``;
* minibatch-split invariance: the mean of two halves' gradients equals the whole batch's (the trainer's
  contract: it averages ``loss / (units x minibatches)``, so a loss must be a mean over its rows);
* state round trip: ``state_dict`` through ``torch.save`` / ``torch.load(weights_only=True)`` (as a
  checkpoint stores it) into a fresh instance gives the same state and the same next ``prepare``.

Parametrised over ``registry.available("algorithms")`` x ``examples()``, so a new algorithm gets the suite
by being registered, and one failure does not hide the next. Offline algorithms train on a small preference
dataset written from the rollout's own decoded samples.
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from vgrl import registry
from vgrl.algorithms._pairs import offline_batch
from vgrl.data.preferences import PreferenceDataset, write_index
from vgrl.rewards.base import Reward
from vgrl.rollout import StepPlan, kernel_for, rollout
from vgrl.training.policy import Reference
from vgrl.types import RewardOutput

PROMPTS = ["a red circle", "two blue squares"]
G, STEPS, GUIDANCE = 2, 3, 2.0
GROUPS = torch.arange(len(PROMPTS)).repeat_interleave(G)
SCORES = torch.tensor([0.9, 0.1, 0.3, 0.8])  # distinct within each group: every group yields a pair
FLAT = torch.full((len(SCORES),), 0.5)


class Contrast(Reward):
    """Test reward: differentiable, pointwise — each sample's pixel variance (what reward gradients need)."""

    name = "contrast"
    differentiable = True
    granularity = "pointwise"

    def compute(self, images, prompts, metadata):
        return RewardOutput(images.float().flatten(1).var(dim=1))


def _cases() -> list:
    out = []
    for name in registry.available("algorithms"):
        for i, options in enumerate(registry.resolve("algorithms", name).examples()):
            out.append(pytest.param(name, options, id=f"{name}-{i}"))
    return out


CASES = _cases()


@pytest.fixture(scope="module")
def bb(tiny_backbones):
    return tiny_backbones["flow"]


@pytest.fixture(scope="module")
def ref(bb):
    return Reference(bb, lora=False)


@pytest.fixture(scope="module")
def pairs(bb, tmp_path_factory):
    """A preference dataset of one pair per prompt, written as PNGs from a rollout's decoded samples."""
    root = tmp_path_factory.mktemp("pairs")
    cond = bb.encode(PROMPTS, guidance=True).repeat_interleave(G)
    traj = rollout(bb, kernel_for(bb, "ode"), cond, STEPS, StepPlan.ode(STEPS), seeds=torch.arange(4) + 50,
                   guidance_scale=GUIDANCE)
    with torch.no_grad():
        images = bb.decode(traj.x0)
    rows = []
    for i, prompt in enumerate(PROMPTS):
        for k, role in enumerate(("chosen", "rejected")):
            pixels = (images[G * i + k].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"{i}_{role}.png")
        rows.append({"id": f"p{i}", "prompt": prompt, "chosen": f"{i}_chosen.png", "rejected": f"{i}_rejected.png",
                     "chosen_score": 1.0, "rejected_score": 0.0})
    return PreferenceDataset.load(write_index(root / "pairs.jsonl", rows))


def _build(name, options):
    return registry.resolve("algorithms", name)(options, reward=Contrast())


def _kernel(bb, algo):
    return kernel_for(bb, "flow_sde" if algo.needs.step_log_probs or algo.needs.stochastic_kernel else "ode")


def _iteration(algo, bb, pairs, scores, seeds=(11, 12, 13, 14)):
    """One iteration's batch as the trainer builds it: roll out under the algorithm's sampling policy,
    prepare (on CPU), before_update (no grad). Offline: the dataset's pairs instead of a rollout."""
    if algo.needs.dataset:
        return offline_batch(bb, pairs, [0, 1], torch.tensor(seeds[:2]), STEPS)
    kernel = _kernel(bb, algo)
    cond = bb.encode(PROMPTS, guidance=True).repeat_interleave(G)
    plan = StepPlan.all(STEPS) if kernel.stochastic else StepPlan.ode(STEPS)
    with algo.sampling_policy(bb):
        traj = rollout(bb, kernel, cond, STEPS, plan, seeds=torch.tensor(seeds), guidance_scale=GUIDANCE)
    batch = algo.prepare(traj, RewardOutput(scores=scores.clone()), GROUPS.clone(),
                         [p for p in PROMPTS for _ in range(G)], [None] * len(GROUPS))
    with torch.no_grad():
        return algo.before_update(bb, batch)


def _grads(algo, bb, ref, batch) -> list[torch.Tensor]:
    """Gradient of the mean loss over the minibatch's units (what the trainer back-propagates)."""
    module = bb.trainable()
    module.zero_grad(set_to_none=True)
    units = algo.units(batch)
    assert units, "a minibatch must have at least one loss unit"
    kernel = _kernel(bb, algo)
    for unit in units:
        loss, metrics = algo.loss(bb, kernel, batch, unit, ref if algo.needs.reference else None)
        assert loss.ndim == 0 and loss.dtype == torch.float32 and bool(torch.isfinite(loss)), (unit, loss)
        assert all(isinstance(v, float) for v in metrics.values()), metrics
        (loss / len(units)).backward()
    out = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    return out


def _norm(grads: list[torch.Tensor]) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def test_every_algorithm_has_a_case():
    assert {c.values[0] for c in CASES} == set(registry.available("algorithms"))


@pytest.mark.parametrize("name,options", CASES)
def test_loss_is_finite_and_differentiable(name, options, bb, ref, pairs):
    algo = _build(name, options)
    batch = _iteration(algo, bb, pairs, SCORES)
    assert len(batch) > 0
    grads = _grads(algo, bb, ref, batch)
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert _norm(grads) > 0, f"{name}: no gradient reaches the trainable parameters"


@pytest.mark.parametrize("name,options", CASES)
def test_zero_advantages_give_zero_gradient(name, options, bb, ref, pairs):
    algo = _build(name, options)
    if not algo.advantage_weighted:
        pytest.skip(f"{name} does not declare advantage_weighted (its loss is not scaled by the advantage)")
    signal = _norm(_grads(algo, bb, ref, _iteration(algo, bb, pairs, SCORES)))
    flat = _iteration(_build(name, options), bb, pairs, FLAT)
    assert torch.equal(flat.adv, torch.zeros_like(flat.adv)), "equal rewards must give zero advantages"
    assert _norm(_grads(algo, bb, ref, flat)) <= 1e-6 * signal


@pytest.mark.parametrize("name,options", CASES)
def test_minibatch_split_invariance(name, options, bb, ref, pairs):
    algo = _build(name, options)
    batch = _iteration(algo, bb, pairs, SCORES)
    n = len(batch)
    assert n % 2 == 0, f"{name}: the conformance batch has {n} rows; the suite needs an even number"
    whole = _grads(algo, bb, ref, batch)
    halves = [_grads(algo, bb, ref, batch.index(torch.arange(lo, lo + n // 2))) for lo in (0, n // 2)]
    gap = _norm([(a + b) / 2 - w for w, a, b in zip(whole, *halves)])
    # measured: 2e-7 to 3e-6 of the norm (batched matmul rounding, x beta = 5000 for the pairwise losses);
    # a loss that sums instead of averaging, or couples rows, is off by O(1)
    assert gap <= 1e-4 * _norm(whole), f"{name}: halves' mean gradient differs from the whole batch's by {gap:.3g}"


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _assert_same(a, b, where="state"):
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("name,options", CASES)
def test_state_round_trip(name, options, bb, pairs):
    algo = _build(name, options)
    _iteration(algo, bb, pairs, SCORES)  # state an iteration leaves behind (per-prompt statistics, ...)
    resumed = _build(name, options)
    resumed.load_state_dict(_roundtrip(algo.state_dict()))
    _assert_same(resumed.state_dict(), algo.state_dict())
    if algo.needs.dataset:
        return  # offline batches come from the dataset, not from prepare
    a = _iteration(algo, bb, pairs, SCORES.flip(0), seeds=(21, 22, 23, 24))
    b = _iteration(resumed, bb, pairs, SCORES.flip(0), seeds=(21, 22, 23, 24))
    for field in ("rewards", "adv", "group_ids", "weights"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), field
    _assert_same(resumed.state_dict(), algo.state_dict())
