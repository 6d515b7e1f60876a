"""Forward-process algorithms (NFT, RWR, RAFT): hand-computed losses, exact zero gradients, seeded noise
that survives resume and minibatch splits, and two training iterations of each through ``train``."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml

from vgrl import algorithms
from vgrl.algorithms._forward import draw, noise, noised, unit_seed, weighted_denoising_loss
from vgrl.algorithms.nft import adaptive_error, dense_optimality, nft_terms, optimality
from vgrl.algorithms.raft import keep_mask
from vgrl.algorithms.rwr import exp_weights
from vgrl.training.policy import Reference
from vgrl.rollout import StepPlan, kernel_for, rollout
from vgrl.types import Batch, RewardOutput

PROMPTS = ["a red circle", "two blue squares"]
G, STEPS = 2, 2


@pytest.fixture(scope="module")
def trajs(tiny_backbones):
    """Deterministic (ode) rollouts of 4 samples (2 prompts x 2) on the tiny flow and sd-v backbones."""
    out = {}
    for name in ("flow", "sd-v"):
        bb = tiny_backbones[name]
        cond = bb.encode(PROMPTS, guidance=False).repeat_interleave(G)
        out[name] = rollout(bb, kernel_for(bb, "ode"), cond, STEPS, StepPlan.ode(STEPS),
                            seeds=torch.tensor([11, 12, 13, 14]))
    return out


GROUPS = torch.tensor([0, 0, 1, 1])


def grads(module):
    out = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]
    module.zero_grad(set_to_none=True)
    return out


def backward(loss, module):
    module.zero_grad(set_to_none=True)
    loss.backward()
    return grads(module)


# ------------------------------------------------------------------------------------------- noising


def test_noising_conventions_and_x0_identity(tiny_backbones):
    x0, eps = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    flow = noise(tiny_backbones["flow"], x0, torch.tensor([0.0, 0.3, 1.0]), eps)  # the flow backbone's own process
    assert torch.equal(flow.x_t[1], 0.7 * x0[1] + 0.3 * eps[1]) and torch.equal(flow.target, eps - x0)
    assert torch.equal(flow.x_t[0], x0[0]) and torch.allclose(flow.x0_hat(flow.target), x0, atol=1e-5)
    for name in ("sd-eps", "sd-v"):
        bb = tiny_backbones[name]
        t = torch.tensor([0, 500, 999])
        nz = noise(bb, x0, t, eps)
        a = bb.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        assert torch.allclose(nz.x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)
        expected = eps if name == "sd-eps" else a.sqrt() * eps - (1 - a).sqrt() * x0
        assert torch.allclose(nz.target, expected, atol=1e-6)
        assert torch.allclose(nz.x0_hat(nz.target), x0, atol=2e-4)  # the exact target recovers x0


def test_seeded_draws_repeat_split_and_differ_from_the_rollout_stream(tiny_backbones):
    opts = algorithms.get("rwr").options
    seeds = torch.tensor([11, 12, 13, 14])
    for name in ("flow", "sd-eps"):
        bb = tiny_backbones[name]
        t, eps = draw(bb, seeds, 3, opts, STEPS)
        t2, eps2 = draw(bb, seeds, 3, opts, STEPS)
        assert torch.equal(t, t2) and torch.equal(eps, eps2)  # resume redraws the same
        ts, epss = draw(bb, seeds[[2, 0]], 3, opts, STEPS)
        assert torch.equal(ts, t[[2, 0]]) and torch.equal(epss, eps[[2, 0]])  # minibatch-split invariant
        assert not torch.equal(draw(bb, seeds, 4, opts, STEPS)[1], eps)  # another unit, other draws
        assert not torch.allclose(eps, bb.init_noise(seeds))  # not the rollout's initial noise
    assert draw(tiny_backbones["sd-eps"], seeds, 0, opts, STEPS)[0].dtype == torch.long
    assert unit_seed(11, 0) != unit_seed(11, 1) != unit_seed(12, 0)
    grid = tiny_backbones["flow"].timesteps(STEPS)[:STEPS]
    sched = algorithms.get("rwr", time_sampling="schedule").options
    t, _ = draw(tiny_backbones["flow"], torch.arange(20), 0, sched, STEPS)
    assert all(bool((grid == v).any()) for v in t)
    lognorm = algorithms.get("rwr", time_sampling="logit_normal").options
    t, _ = draw(tiny_backbones["flow"], torch.arange(20), 0, lognorm, STEPS)
    assert bool(((t > 0) & (t < 1)).all())


# ---------------------------------------------------------------------------------------------- NFT


def test_nft_terms_by_hand(tiny_backbones):
    # flow, 2 samples of 2 values: x0, eps, t -> x_t and v = eps - x0
    x0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).reshape(2, 1, 1, 2)
    eps = torch.tensor([[0.0, 1.0], [2.0, 0.0]]).reshape(2, 1, 1, 2)
    nz = noise(tiny_backbones["flow"], x0, torch.tensor([0.5, 0.25]), eps)
    pred = torch.tensor([[0.0, 1.0], [1.0, -1.0]]).reshape(2, 1, 1, 2)
    old = torch.tensor([[-1.0, 0.0], [2.0, -2.0]]).reshape(2, 1, 1, 2)
    p = torch.tensor([0.8, 0.3])
    # beta 0.5: pos = 0.5 pred + 0.5 old, neg = 1.5 old - 0.5 pred
    # sample 0: pos - v = (0.5, -0.5) -> 0.25; neg - v = (-0.5, -1.5) -> 1.25; 0.8 * 0.25 + 0.2 * 1.25 = 0.45
    # sample 1: pos - v = (-0.5, 0.5) -> 0.25; neg - v = (0.5, -0.5) -> 0.25
    per, l_pos, l_neg = nft_terms(pred, old, nz, x0, p, 0.5, "none")
    assert per.tolist() == pytest.approx([0.45, 0.25]) and l_neg.tolist() == pytest.approx([1.25, 0.25])
    # adaptive: x0_hat - x0 = -t (q - v); D = mean sq / mean abs
    # sample 0 (t = 0.5): pos diff (-.25, .25) -> .0625 / .25 = .25; neg diff (.25, .75) -> .3125 / .5 = .625
    # sample 1 (t = 0.25): both diffs +-(.125, -.125) -> .015625 / .125 = .125
    per, l_pos, l_neg = nft_terms(pred, old, nz, x0, p, 0.5, "adaptive")
    assert l_pos.tolist() == pytest.approx([0.25, 0.125]) and l_neg.tolist() == pytest.approx([0.625, 0.125])
    assert per.tolist() == pytest.approx([0.8 * 0.25 + 0.2 * 0.625, 0.125])
    assert optimality(torch.tensor([2.5, -1.0, 10.0, -10.0]), 5.0).tolist() == pytest.approx([0.75, 0.4, 1.0, 0.0])


def test_nft_dense_optimality_by_hand():
    # scores (1, 0): std 0.5; A = (2, -2); map deviations r(x) - r_i of +-0.5 -> +-1 std
    adv, scores = torch.tensor([2.0, -2.0]), torch.tensor([1.0, 0.0])
    dense = torch.tensor([[[1.0, 0.5]], [[0.0, 0.5]]])  # (2, 1, 2)
    p = dense_optimality(adv, scores, dense, 1.0, 5.0, 0.0)
    # sample 0: A(x) = (2, 2 - 1) -> p = (0.7, 0.6); sample 1: (-2, -2 + 1) -> (0.3, 0.4)
    assert p.flatten().tolist() == pytest.approx([0.7, 0.6, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        dense_optimality(adv, scores, dense[:, 0], 1.0, 5.0, 0.0)


def test_nft_dense_group_centering_by_hand():
    # group 0 = samples 0, 1; group 1 = sample 2. scores (1, 0, 0.5): std sqrt(1/6); A = 0 for simplicity
    adv, scores = torch.zeros(3), torch.tensor([1.0, 0.0, 0.5])
    dense = torch.tensor([[[0.0, 1.0, 0.5]],    # evidence dev -1 at x0; x1, x2: dev 0 / -0.5
                          [[0.0, 0.5, 0.0]],    # evidence dev +0.5 at x1
                          [[0.5, 0.5, 0.5]]])   # no evidence: unchanged
    sigma = scores.std(unbiased=False).item()
    got = dense_optimality(adv, scores, dense, 1.0, 5.0, 0.0, torch.tensor([0, 0, 1]))
    # group 0 evidence devs (-1, -0.5, +0.5), mean -1/3 -> (-2/3, -1/6, +5/6); sample 0's x1 (dev 0) is background
    want = torch.tensor([[[-2 / 3, 0.0, -1 / 6]], [[0.0, 5 / 6, 0.0]], [[0.0, 0.0, 0.0]]]) / sigma
    assert got.flatten().tolist() == pytest.approx((0.5 + 0.5 * want / 5.0).flatten().tolist(), abs=1e-6)
    evidence = (dense - scores.view(-1, 1, 1)).abs() > 0
    assert ((got - 0.5)[:2][evidence[:2]]).sum().item() == pytest.approx(0.0, abs=1e-6)  # no net push per group
    plain = dense_optimality(adv, scores, dense, 1.0, 5.0, 0.0)
    assert torch.equal(got[2], plain[2]) and (plain[:2][evidence[:2]] - 0.5).sum() < 0  # the bias it removes


def test_nft_dense_map_equal_to_the_score_changes_nothing(tiny_backbones, trajs):
    """A map that is the sample's own score everywhere carries no local credit: same loss as scalar p."""
    bb, traj = tiny_backbones["flow"], trajs["flow"]
    scores = torch.tensor([0.9, 0.1, 0.4, 0.6])
    h, w = 32, 32
    flat = scores.view(-1, 1, 1).expand(-1, h, w).clone()
    plain = algorithms.get("nft", global_std=False)
    dense = algorithms.get("nft", global_std=False, dense_credit=2.0)
    b0 = plain.prepare(traj, RewardOutput(scores=scores), GROUPS)
    b1 = dense.prepare(traj, RewardOutput(scores=scores, dense=flat), GROUPS)
    assert b1.weights.shape == (4, h, w) and torch.allclose(b1.weights, b0.weights.view(-1, 1, 1).expand(-1, h, w))
    module = bb.trainable()
    g0 = backward(plain.loss(bb, None, b0, 0)[0], module)  # (loss values coincide at old = pred: compare gradients)
    l1, m1 = dense.loss(bb, None, b1, 0)
    g1 = backward(l1, module)
    assert max((a - b).abs().max().item() for a, b in zip(g0, g1)) <= 1e-6 * max(a.abs().max().item() for a in g0)
    assert m1["dense_p_spread"] == pytest.approx(0.0, abs=1e-7)
    # a planted local deviation lowers the optimality only where it lies, and changes the gradient
    spot = flat.clone()
    spot[0, :8, :8] = 0.0
    b2 = dense.prepare(traj, RewardOutput(scores=scores, dense=spot), GROUPS)
    assert (b2.weights[0, :8, :8] < b0.weights[0]).all() and torch.equal(b2.weights[1:], b1.weights[1:])
    assert torch.equal(b2.weights[0, 8:], b1.weights[0, 8:])
    g2 = backward(dense.loss(bb, None, b2, 0)[0], module)
    assert max((a - b).abs().max().item() for a, b in zip(g1, g2)) > 1e-4 * max(a.abs().max().item() for a in g1)
    # dense_center: group -- the spot is its group's only evidence, so centring removes it entirely
    centred = algorithms.get("nft", global_std=False, dense_credit=2.0, dense_center="group")
    got = centred.prepare(traj, RewardOutput(scores=scores, dense=spot), GROUPS).weights
    assert torch.allclose(got, b1.weights, rtol=0, atol=1e-6) and not torch.allclose(b2.weights, b1.weights, atol=1e-2)
    with pytest.raises(ValueError, match="dense map"):
        dense.prepare(traj, RewardOutput(scores=scores), GROUPS)


def test_nft_prepare_group_advantages(trajs):
    algo = algorithms.get("nft", global_std=False)
    batch = algo.prepare(trajs["flow"], RewardOutput(scores=torch.tensor([1.0, 0.0, 3.0, 3.0])), GROUPS)
    assert batch.adv.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0], abs=1e-3)
    assert batch.weights.tolist() == pytest.approx([0.6, 0.4, 0.5, 0.5], abs=1e-3)


def _nft_batch(traj, p):
    return Batch(traj=traj, rewards=torch.zeros(4), adv=torch.zeros(4), group_ids=GROUPS, weights=p)


@pytest.mark.parametrize("name", ["flow", "sd-v"])
def test_nft_gradient_is_the_signed_flow_matching_gradient(tiny_backbones, trajs, name):
    """old = sg(current): grad L = adv_clip grad mean_i (2 p_i - 1) D_i(pred), for any beta; p = 1/2 -> 0."""
    bb, traj = tiny_backbones[name], trajs[name]
    module = bb.trainable()
    p = torch.tensor([0.9, 0.2, 0.5, 0.7])
    algo = algorithms.get("nft", old_policy="current", beta=0.3, adv_clip=2.0)
    got = backward(algo.loss(bb, None, _nft_batch(traj, p), 1)[0], module)
    nz = noised(bb, traj, 1, algo.options)
    pred = bb.predict(nz.x_t, nz.t, traj.cond, 1.0)
    want = backward(2.0 * ((2 * p - 1) * adaptive_error(nz.x0_hat(pred), traj.x0).flatten(1).mean(1)).mean(), module)
    scale = max(w.abs().max().item() for w in want)
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) <= 1e-5 * scale
    assert any(g.abs().max() > 0 for g in got)
    algo = algorithms.get("nft", old_policy="current", beta=1.0)  # pos = neg = pred exactly
    flat = backward(algo.loss(bb, None, _nft_batch(traj, torch.full((4,), 0.5)), 1)[0], module)
    assert all(g.abs().max() == 0 for g in flat)


def test_nft_guided_trains_the_rollouts_guided_velocity(tiny_backbones, trajs):
    """guided: true -> every prediction at the rollout's guidance w: grad L = adv_clip grad mean (2p - 1)
    D(v_u + w (v_c - v_u)); refused for an unguided rollout."""
    from dataclasses import replace

    bb, module = tiny_backbones["flow"], tiny_backbones["flow"].trainable()
    traj = replace(trajs["flow"], cond=bb.encode(PROMPTS, guidance=True).repeat_interleave(G), guidance_scale=2.5)
    p = torch.tensor([0.9, 0.2, 0.5, 0.7])
    algo = algorithms.get("nft", old_policy="current", guided=True, adv_clip=2.0)
    got = backward(algo.loss(bb, None, _nft_batch(traj, p), 0)[0], module)
    nz = noised(bb, traj, 0, algo.options)

    def signed(w):
        pred = bb.predict(nz.x_t, nz.t, traj.cond, w)
        return backward(2.0 * ((2 * p - 1) * adaptive_error(nz.x0_hat(pred), traj.x0).flatten(1).mean(1)).mean(),
                        module)

    want, conditional = signed(2.5), signed(1.0)
    scale = max(w.abs().max().item() for w in want)
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) <= 1e-5 * scale
    assert max((c - w).abs().max().item() for c, w in zip(conditional, want)) > 1e-2 * scale  # not the cond branch
    with pytest.raises(ValueError, match="rollout was unguided"):
        algo.loss(bb, None, _nft_batch(trajs["flow"], p), 0)


def test_nft_rollout_policy_is_the_snapshot_and_reference_is_the_base(tiny_backbones, trajs):
    bb, traj = tiny_backbones["flow"], trajs["flow"]
    module = bb.trainable()
    rewards = RewardOutput(scores=torch.tensor([1.0, 0.0, 2.0, 3.0]))
    current, rolled = algorithms.get("nft", old_policy="current"), algorithms.get("nft")
    b_cur, b_roll = current.prepare(traj, rewards, GROUPS), rolled.prepare(traj, rewards, GROUPS)
    loss_c, loss_r = current.loss(bb, None, b_cur, 0)[0], rolled.loss(bb, None, b_roll, 0)[0]
    assert torch.equal(loss_c, loss_r)  # before any optimiser step the rollout weights are the current ones
    assert all(torch.equal(g, h) for g, h in zip(backward(loss_c, module), backward(loss_r, module)))
    nz = noised(bb, traj, 0, rolled.options)
    with torch.no_grad():
        before = bb.predict(nz.x_t, nz.t, traj.cond, 1.0)
    saved = copy.deepcopy(module.state_dict())
    try:
        with torch.no_grad():
            for q in module.parameters():
                q.add_(1e-3 * torch.sign(q))  # an "optimiser step"
        moved = [q.detach().clone() for q in module.parameters()]
        with torch.no_grad():
            after = bb.predict(nz.x_t, nz.t, traj.cond, 1.0)
        _, m = rolled.loss(bb, None, b_roll, 0)
        assert m["old_deviation"] == pytest.approx(((after - before) ** 2).mean().item(), rel=1e-5)
        assert m["old_deviation"] > 0
        assert all(torch.equal(q, v) for q, v in zip(module.parameters(), moved))  # the swap is undone
        # reference = a frozen copy of the base weights: same weights -> beta 1, p 1/2 gives zero gradient
        ref = Reference(bb, lora=False)
        algo = algorithms.get("nft", old_policy="reference")
        flat = backward(algo.loss(bb, None, _nft_batch(traj, torch.full((4,), 0.5)), 0, ref)[0], module)
        assert all(g.abs().max() == 0 for g in flat)
        assert all(q.grad is None for q in ref.backbone.trainable().parameters())
        with pytest.raises(ValueError, match="needs a reference model"):
            algo.loss(bb, None, _nft_batch(traj, torch.full((4,), 0.5)), 0)
    finally:
        module.load_state_dict(saved)
        module.zero_grad(set_to_none=True)


def test_nft_lagging_sampling_policy_is_the_soft_updated_copy(tiny_backbones, trajs):
    """old_decay_rate > 0: the rollout runs with theta_old <- eta theta_old + (1 - eta) theta, the loss's
    v_old is theta_old's prediction, the current weights come back after the rollout, and the state
    round-trips through state_dict."""
    bb, traj = tiny_backbones["flow"], trajs["flow"]
    module = bb.trainable()
    params = [q for q in module.parameters() if q.requires_grad]
    algo = algorithms.get("nft", old_decay_rate=0.25, old_decay_max=0.6, old_decay_flat=1)
    assert [algo.old.eta(i) for i in range(5)] == [0.0, 0.0, 0.25, 0.5, 0.6]
    rewards = RewardOutput(scores=torch.tensor([1.0, 0.0, 2.0, 3.0]))
    saved = copy.deepcopy(module.state_dict())

    def step(scale):
        with torch.no_grad():
            for q in params:
                q.add_(scale * torch.sign(q))

    try:
        theta0 = [q.detach().clone() for q in params]
        with algo.sampling_policy(bb):  # rollout 0: theta_old = theta
            assert all(torch.equal(q, t) for q, t in zip(params, theta0))
        algo.prepare(traj, rewards, GROUPS)
        step(1e-3)
        for i in (1, 2, 3):  # eta 0, 0.25, 0.5
            current = [q.detach().clone() for q in params]
            want = [algo.old.eta(i) * o + (1 - algo.old.eta(i)) * c for o, c in zip(algo.state_dict()["old"], current)]
            with algo.sampling_policy(bb):
                inside = [q.detach().clone() for q in params]
            assert all(torch.allclose(a, w, rtol=0, atol=1e-7) for a, w in zip(inside, want))
            assert all(torch.equal(q, c) for q, c in zip(params, current))  # restored after the rollout
            batch = algo.prepare(traj, rewards, GROUPS)
            nz = noised(bb, traj, 0, algo.options)
            with torch.no_grad():
                pred = bb.predict(nz.x_t, nz.t, traj.cond, 1.0)
                for q, w in zip(params, inside):
                    q.data, w.data = w.data.clone(), q.data.clone()
                old = bb.predict(nz.x_t, nz.t, traj.cond, 1.0)
                for q, w in zip(params, inside):
                    q.data = w.data
            _, m = algo.loss(bb, None, batch, 0)
            assert m["old_deviation"] == pytest.approx(((pred - old) ** 2).mean().item(), rel=1e-5)
            assert (m["old_deviation"] > 0) == (i > 1)  # eta 0 at i = 1: theta_old = theta
            assert m["old_decay"] == algo.old.eta(i)
            step(1e-3)
        state = algo.state_dict()
        again = algorithms.get("nft", old_decay_rate=0.25, old_decay_max=0.6, old_decay_flat=1)
        again.load_state_dict(state)
        assert again.old.rollouts == 4 and all(torch.equal(a, b) for a, b in zip(again.old.lagging, algo.old.lagging))
        with pytest.raises(ValueError, match="no state"):
            algorithms.get("nft").load_state_dict(state)
        with pytest.raises(ValueError, match="written with old_decay_rate 0"):
            again.load_state_dict({})
    finally:
        module.load_state_dict(saved)
        module.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="needs old_policy: rollout"):
        algorithms.get("nft", old_decay_rate=0.1, old_policy="current")
    assert algorithms.get("nft").state_dict() == {}


@pytest.mark.parametrize("name", ["flow", "sd-v"])
def test_nft_batched_old_predictions_match_the_per_minibatch_ones(tiny_backbones, trajs, name):
    """With the lag, before_update predicts theta_old once for the whole batch at every unit; each
    minibatch's slice is the prediction the loss would otherwise make itself, so the loss, its gradient
    and its metrics are the same (fp32; batch 4 vs 2 forwards agree to float rounding). Without the lag
    the batch is untouched and the loss predicts lazily."""
    bb, traj = tiny_backbones[name], trajs[name]
    module = bb.trainable()
    params = [q for q in module.parameters() if q.requires_grad]
    saved = copy.deepcopy(module.state_dict())
    rewards = RewardOutput(scores=torch.tensor([1.0, 0.0, 2.0, 3.0]))
    try:
        algo = algorithms.get("nft", old_decay_rate=0.5, old_decay_max=0.5, num_timesteps=2)
        for _ in range(3):  # theta_old lags theta after the second rollout
            with algo.sampling_policy(bb):
                pass
            batch = algo.prepare(traj, rewards, GROUPS)
            with torch.no_grad():
                for q in params:
                    q.add_(1e-2 * torch.sign(q))
        current = [q.detach().clone() for q in params]
        full = algo.before_update(bb, batch)
        assert set(full.precomputed) == {"old"} and full.precomputed["old"].shape == (4, 2, *traj.x0.shape[1:])
        assert all(torch.equal(q, c) for q, c in zip(params, current))  # the trained weights are back
        for rows in ([0, 2], [3, 1]):
            for unit in (0, 1):
                lazy_loss, lazy_m = algo.loss(bb, None, batch.index(rows), unit)
                lazy_g = backward(lazy_loss, module)
                pre_loss, pre_m = algo.loss(bb, None, full.index(rows), unit)
                pre_g = backward(pre_loss, module)
                assert lazy_m["old_deviation"] > 0
                assert pre_loss.item() == pytest.approx(lazy_loss.item(), rel=1e-5)
                assert pre_m["old_deviation"] == pytest.approx(lazy_m["old_deviation"], rel=1e-4)
                assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(pre_g, lazy_g))
        plain = algorithms.get("nft", num_timesteps=2)
        plain_batch = plain.prepare(traj, rewards, GROUPS)
        assert plain.before_update(bb, plain_batch) is plain_batch and plain_batch.precomputed == {}
    finally:
        module.load_state_dict(saved)
        module.zero_grad(set_to_none=True)


def test_nft_loss_is_minibatch_split_invariant(tiny_backbones, trajs):
    bb, traj = tiny_backbones["flow"], trajs["flow"]
    algo = algorithms.get("nft", old_policy="current", num_timesteps=2)
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 0.0, 2.0, 3.0])), GROUPS)
    assert algo.units(batch) == [0, 1]
    with torch.no_grad():
        full = algo.loss(bb, None, batch, 1)[0]
        halves = [algo.loss(bb, None, batch.index(rows), 1)[0] for rows in ([3, 0], [1, 2])]
    assert full.item() == pytest.approx(sum(h.item() for h in halves) / 2, rel=1e-5)


# ---------------------------------------------------------------------------------------- RWR / RAFT


def test_rwr_weights_by_hand():
    w = exp_weights(torch.tensor([0.0, math.log(2.0)]), torch.zeros(2, dtype=torch.long), 1.0)
    assert w.tolist() == pytest.approx([2 / 3, 4 / 3])  # exp: (1/2, 1) / mean 3/4
    w = exp_weights(torch.tensor([0.0, 2.0, 5.0, 5.0]), GROUPS, 2.0)
    assert w.tolist() == pytest.approx([2 / (1 + math.e), 2 * math.e / (1 + math.e), 1.0, 1.0])
    assert exp_weights(torch.full((3,), 7.0), torch.zeros(3, dtype=torch.long), 0.1).tolist() == [1.0, 1.0, 1.0]
    algo = algorithms.get("rwr", normalize="none", temperature=0.1, max_weight=1.5)
    batch = algo.prepare(None, RewardOutput(scores=torch.tensor([0.0, 1.0, 0.0, 0.0])), GROUPS)
    assert batch.weights.max().item() == 1.5 and batch.weights[0] < 1e-3


def test_rwr_equal_rewards_is_the_plain_denoising_loss(tiny_backbones, trajs):
    for name in ("flow", "sd-v"):
        bb, traj = tiny_backbones[name], trajs[name]
        algo = algorithms.get("rwr", weights="group")
        batch = algo.prepare(traj, RewardOutput(scores=torch.full((4,), 0.3)), GROUPS)
        assert torch.equal(batch.weights, torch.ones(4))
        with torch.no_grad():
            loss, m = algo.loss(bb, None, batch, 2)
            nz = noised(bb, traj, 2, algo.options)
            plain = ((bb.predict(nz.x_t, nz.t, traj.cond, 1.0) - nz.target) ** 2).mean()
        assert loss.item() == pytest.approx(plain.item(), rel=1e-6) and m["ess"] == 1.0


def test_rwr_loss_is_minibatch_split_invariant(tiny_backbones, trajs):
    bb, traj = tiny_backbones["flow"], trajs["flow"]
    algo = algorithms.get("rwr")
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 0.0, 2.0, 3.0])), GROUPS)
    with torch.no_grad():
        full = algo.loss(bb, None, batch, 0)[0].item()
        rows = [algo.loss(bb, None, batch.index([i]), 0)[0].item() for i in range(4)]
    assert full == pytest.approx(sum(rows) / 4, rel=1e-5)


def test_raft_keep_mask_by_hand():
    r = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.3, 0.7])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    assert keep_mask(r, groups, 1, None).tolist() == [False, True, False, False, False, True]
    # ceil(0.5 * 3) = 2 per group; ties keep the earlier sample
    assert keep_mask(r, groups, None, 0.5).tolist() == [False, True, True, True, False, True]
    assert keep_mask(r, groups, None, 0.5, min_reward=0.6).tolist() == [False, True, False, False, False, True]
    assert keep_mask(r, torch.zeros(6), 2, None).tolist() == [False, True, False, False, False, True]
    assert keep_mask(torch.ones(3), torch.zeros(3), None, 0.5).tolist() == [True, True, False]
    assert keep_mask(r, groups, 5, None).all()
    with pytest.raises(ValueError, match="not both"):
        algorithms.get("raft", top_k=1, top_fraction=0.5)


def test_raft_dropped_rows_have_exactly_zero_gradient(tiny_backbones, trajs):
    for name in ("flow", "sd-v"):
        bb, traj = tiny_backbones[name], trajs[name]
        module = bb.trainable()
        algo = algorithms.get("raft", top_k=1)
        batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([0.2, 0.8, 0.9, 0.1])), GROUPS)
        assert batch.weights.tolist() == [0.0, 1.0, 1.0, 0.0]
        full = backward(algo.loss(bb, None, batch, 0)[0], module)
        kept = backward(algo.loss(bb, None, batch.index([1, 2]), 0)[0], module)
        # (1/4) sum_kept L == (2/4) * mean over a minibatch of only the kept rows
        assert all(torch.allclose(f, 0.5 * k, atol=1e-7, rtol=1e-5) for f, k in zip(full, kept))
        dropped = backward(algo.loss(bb, None, batch.index([0, 3]), 0)[0], module)
        assert all(g.abs().max() == 0 for g in dropped)
        module.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["rwr", "raft"])
def test_regression_anchor_to_the_base_model_by_hand(tiny_backbones, trajs, name):
    bb, traj = tiny_backbones["flow"], trajs["flow"]
    module = bb.trainable()
    ref = Reference(bb, lora=False)  # a frozen copy of the weights as they are now: the "base"
    kw = {"top_k": 2} if name == "raft" else {}
    plain, anchored = algorithms.get(name, **kw), algorithms.get(name, kl=0.5, **kw)
    assert anchored.needs.reference and not plain.needs.reference
    batch = plain.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 0.0, 2.0, 3.0])), GROUPS)
    w = batch.weights
    # at the base weights the anchor is zero with zero gradient: the same loss and gradient as kl = 0
    loss_p, _ = plain.loss(bb, None, batch, 1)
    loss_a, m = anchored.loss(bb, None, batch, 1, ref)
    assert m["kl"] == 0.0 and loss_a.item() == pytest.approx(loss_p.item(), rel=1e-6)
    assert all(torch.allclose(g, h, atol=1e-8) for g, h in
               zip(backward(loss_p, module), backward(anchored.loss(bb, None, batch, 1, ref)[0], module)))
    saved = copy.deepcopy(module.state_dict())
    try:
        with torch.no_grad():
            for q in module.parameters():
                q.add_(1e-2 * torch.sign(q))  # the policy has moved away from the base
            loss, m = anchored.loss(bb, None, batch, 1, ref)
            nz = noised(bb, traj, 1, anchored.options)
            pred = bb.predict(nz.x_t, nz.t, traj.cond, 1.0)
            base = ref.predict(nz.x_t, nz.t, traj.cond, 1.0)
            err = ((pred - nz.target) ** 2).flatten(1).mean(1)
            k = ((pred - base) ** 2).flatten(1).mean(1)
        kept = w > 0
        assert loss.item() == pytest.approx(((w * (err + 0.5 * k))[kept]).sum().item() / 4, rel=1e-5)
        assert m["kl"] == pytest.approx(k[kept].mean().item(), rel=1e-5) and m["kl"] > 0
        with pytest.raises(ValueError, match="needs the reference model"):
            anchored.loss(bb, None, batch, 1)
    finally:
        module.load_state_dict(saved)
        module.zero_grad(set_to_none=True)


def test_weighted_loss_rejects_bad_weights(tiny_backbones, trajs):
    batch = Batch(traj=trajs["flow"], rewards=torch.zeros(4), adv=torch.zeros(4), group_ids=GROUPS)
    with pytest.raises(ValueError, match="non-negative"):
        weighted_denoising_loss(tiny_backbones["flow"], batch, 0, algorithms.get("rwr").options,
                                torch.tensor([1.0, -1.0, 0.0, 0.0]))


# --------------------------------------------------------------------------------------------- train


def _config(tmp_path, backbone, algorithm):
    from vgrl.config import load_config

    data = {
        "seed": 0, "backbone": {"name": backbone, "tiny": True, "resolution": 32},
        "kernel": {"name": "ode"}, "sampling": {"num_steps": 2, "plan": {"kind": "ode"}},
        "data": {"world": "shapes", "split": "train"}, "batch_size": 4, "group_size": 2,
        "reward": {"name": "jpeg"}, "algorithm": algorithm,
        "train": {"iterations": 2, "lr": 1e-3, "minibatch_size": 2, "grad_accum": 1, "checkpoint_every": 2},
        "eval": {"before": False, "every": None, "per_category": 1, "batch_size": 8},
        "log": {"grid_every": None, "progress": False, "tensorboard": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path, [])


@pytest.mark.parametrize("backbone", ["flow", "sd"])
@pytest.mark.parametrize("algorithm", [{"name": "nft", "num_timesteps": 2}, {"name": "rwr"},
                                       {"name": "raft", "top_k": 1}, {"name": "rwr", "kl": 0.5}])
def test_train_two_iterations_with_the_ode_kernel(tmp_path, backbone, algorithm):
    from vgrl.training.loop import train

    summary = train(_config(tmp_path, backbone, algorithm), tmp_path / "run")
    assert summary["optimizer_steps"] == 4 and summary["skipped_steps"] == 0 and summary["kernel"] == "ode"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 2 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in train_rows)
    key = {"nft": "policy_loss", "rwr": "ess", "raft": "kept_fraction"}[algorithm["name"]]
    assert all(key in r for r in train_rows)
