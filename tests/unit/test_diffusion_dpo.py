"""Diffusion-DPO: the loss by hand, exact zero gradient for identical pairs, online pairing and its margin,
offline batches from a preference dataset, image encoding, and the trainer's checks of the combination."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml
from PIL import Image

from vgrl import algorithms
from vgrl.algorithms._forward import draw
from vgrl.algorithms._pairs import focus_map, offline_batch, paired_trajectory, select_pairs
from vgrl.algorithms.diffusion_dpo import dpo_loss, pair_errors, preference_loss
from vgrl.data.preferences import PreferenceDataset, write_index
from vgrl.training.policy import Reference
from vgrl.rollout import StepPlan, kernel_for, rollout
from vgrl.types import Batch, RewardOutput

from tests.unit.test_forward_algorithms import grads

PROMPTS = ["a red circle", "two blue squares"]
GROUPS = torch.tensor([0, 0, 1, 1])


@pytest.fixture(scope="module")
def trajs(tiny_backbones):
    """ODE rollouts (guidance 2) of 4 samples, 2 prompts x 2, on the tiny flow and sd backbones."""
    out = {}
    for name in ("flow", "sd-eps", "sd-v"):
        bb = tiny_backbones[name]
        cond = bb.encode(PROMPTS, guidance=True).repeat_interleave(2)
        out[name] = rollout(bb, kernel_for(bb, "ode"), cond, 2, StepPlan.ode(2), seeds=torch.tensor([11, 12, 13, 14]),
                            guidance_scale=2.0)
    return out


def perturbed_reference(bb):
    """A frozen copy of ``bb`` as the reference, then ``bb``'s weights moved away from it (restore after)."""
    ref = Reference(bb, lora=False)
    saved = copy.deepcopy(bb.trainable().state_dict())
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for q in bb.trainable().parameters():
            q.add_(1e-2 * torch.randn(q.shape, generator=gen))
    return ref, saved


# ------------------------------------------------------------------------------------------- the loss


def test_dpo_loss_by_hand():
    err = torch.tensor([[0.5, 0.8], [1.0, 1.0], [0.2, 0.1]])
    ref_err = torch.tensor([[0.6, 0.6], [1.0, 1.0], [0.2, 0.2]])
    per, z = dpo_loss(err, ref_err, beta=10.0)
    # z = -(10 / 2) [(e_w - ref_w) - (e_l - ref_l)]:  pair 0: -5 (-0.1 - 0.2) = 1.5;  pair 1: 0;  pair 2: -5 (0 + 0.1)
    assert z.tolist() == pytest.approx([1.5, 0.0, -0.5])
    assert per.tolist() == pytest.approx([math.log1p(math.exp(-1.5)), math.log(2.0), math.log1p(math.exp(0.5))])


@pytest.mark.parametrize("name", ["flow", "sd-eps", "sd-v"])
def test_pair_errors_are_the_prediction_targets_errors_with_shared_noise(tiny_backbones, trajs, name):
    bb, traj = tiny_backbones[name], trajs[name]
    algo = algorithms.get("diffusion_dpo", beta=200.0)
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 0.0, 0.2, 0.9])), GROUPS)
    ref, saved = perturbed_reference(bb)
    try:
        with torch.no_grad():
            err, ref_err, _ = pair_errors(bb, ref, batch.traj, 3, algo.options)
            loss, m = algo.loss(bb, None, batch, 3, ref)
            t, eps = draw(bb, batch.traj.seeds, 3, algo.options, 2)  # one (t, eps) per pair
            for k in range(2):  # winner, loser: by the forward process written out here
                x0 = batch.traj.x0[:, k]
                if name == "flow":
                    tt = t.view(-1, 1, 1, 1)
                    x_t, target = (1 - tt) * x0 + tt * eps, eps - x0
                else:
                    a = bb.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
                    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
                    target = eps if name == "sd-eps" else a.sqrt() * eps - (1 - a).sqrt() * x0
                for model, got in ((bb, err), (ref, ref_err)):
                    pred = model.predict(x_t, t, batch.traj.cond, 1.0)
                    want = ((pred - target) ** 2).flatten(1).mean(1)
                    assert torch.allclose(got[:, k], want, rtol=1e-4, atol=1e-6)
            z = -100.0 * ((err[:, 0] - ref_err[:, 0]) - (err[:, 1] - ref_err[:, 1]))
            assert loss.item() == pytest.approx(torch.nn.functional.softplus(-z).mean().item(), rel=1e-5)
            assert m["implicit_acc"] == (z > 0).float().mean().item() and m["pairs"] == 2.0
    finally:
        bb.trainable().load_state_dict(saved)


@pytest.mark.parametrize("name", ["flow", "sd-v"])
def test_identical_winner_and_loser_give_zero_gradient(tiny_backbones, trajs, name):
    bb, traj = tiny_backbones[name], trajs[name]
    module = bb.trainable()
    algo = algorithms.get("diffusion_dpo", beta=1.0)  # unsaturated: the distinct pairs' gradient is the scale
    ref, saved = perturbed_reference(bb)
    try:
        distinct = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 0.0, 0.0, 1.0])), GROUPS)
        same = Batch(traj=paired_trajectory(traj.x0[[0, 3]], traj.x0[[0, 3]], traj.cond.index([0, 3]),
                                            distinct.traj.seeds, 2), rewards=torch.zeros(2), adv=torch.zeros(2),
                     group_ids=torch.tensor([0, 1]))
        module.zero_grad(set_to_none=True)
        algo.loss(bb, None, distinct, 0, ref)[0].backward()
        scale = max(g.abs().max().item() for g in grads(module))
        loss, m = algo.loss(bb, None, same, 0, ref)
        loss.backward()
        flat = grads(module)
        assert scale > 0 and m["z_mean"] == 0.0 and loss.item() == pytest.approx(math.log(2.0))
        assert max(g.abs().max().item() for g in flat) <= 1e-6 * scale
    finally:
        module.load_state_dict(saved)


def test_a_few_steps_raise_the_implicit_accuracy(tiny_backbones, trajs):
    """Gradient descent on the DPO loss makes the policy prefer the winners over the reference."""
    bb, traj = tiny_backbones["flow"], trajs["flow"]
    module = bb.trainable()
    saved = copy.deepcopy(module.state_dict())
    ref = Reference(bb, lora=False)
    algo = algorithms.get("diffusion_dpo", beta=1000.0)
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 0.0, 0.0, 1.0])), GROUPS)
    opt = torch.optim.SGD(module.parameters(), lr=1e-3)
    try:
        first = algo.loss(bb, None, batch, 0, ref)[0].item()
        for _ in range(5):
            opt.zero_grad()
            algo.loss(bb, None, batch, 0, ref)[0].backward()
            opt.step()
        loss, m = algo.loss(bb, None, batch, 0, ref)
        assert first == pytest.approx(math.log(2.0)) and loss.item() < first and m["implicit_acc"] == 1.0
    finally:
        module.load_state_dict(saved)
        module.zero_grad(set_to_none=True)


def test_loss_needs_a_reference_and_a_paired_batch(tiny_backbones, trajs):
    bb, traj = tiny_backbones["flow"], trajs["flow"]
    algo = algorithms.get("diffusion_dpo")
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([1.0, 0.0, 0.0, 1.0])), GROUPS)
    with pytest.raises(ValueError, match="needs the frozen reference"):
        algo.loss(bb, None, batch, 0)
    flat = Batch(traj=traj, rewards=torch.zeros(4), adv=torch.zeros(4), group_ids=GROUPS)
    with pytest.raises(ValueError, match=r"a paired batch has x0 \(P, 2"):
        preference_loss(bb, Reference(bb, lora=False), flat, 0, algo.options)
    assert algo.needs.reference and algo.needs.groups
    offline = algorithms.get("diffusion_dpo", mode="offline")
    assert offline.needs.reference and not offline.needs.groups
    with pytest.raises(ValueError, match="offline.*data.preferences"):
        offline.prepare(traj, RewardOutput(scores=torch.zeros(4)), GROUPS)


# ------------------------------------------------------------------------------------------- pairing


def test_online_pairing_respects_the_margin():
    r = torch.tensor([0.125, 0.875, 0.5, 0.5, 0.5, 0.625, 0.25, 0.25])  # exact in float32
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    pairs = (lambda p, m: [list(map(int, x)) for x in zip(*select_pairs(r, g, p, m))])
    assert pairs("best_worst", 0.0) == [[1, 0], [5, 3]]           # group 2 is a tie: no pair
    assert pairs("best_worst", 0.5) == [[1, 0]]                   # group 1's margin 0.125 < 0.5
    assert pairs("all", 0.0) == [[1, 0], [1, 2], [2, 0], [5, 3], [5, 4]]
    assert pairs("all", 0.375) == [[1, 0], [1, 2], [2, 0]]        # margins 0.75, 0.375, 0.375 kept; 0.125 not
    assert pairs("all", 0.376) == [[1, 0]]
    with pytest.raises(ValueError, match=r"non-finite rewards at samples \[2\]"):
        select_pairs(torch.tensor([0.0, 1.0, float("nan")]), torch.zeros(3), "all", 0.0)


def test_prepare_builds_pairs_of_the_rollout(trajs):
    traj = trajs["flow"]
    algo = algorithms.get("diffusion_dpo", margin=0.3)
    batch = algo.prepare(traj, RewardOutput(scores=torch.tensor([0.2, 0.9, 0.5, 0.6])), GROUPS,
                         prompts=["a", "a", "b", "b"], metadata=[0, 1, 2, 3])
    assert len(batch) == 1 and batch.prompts == ["a"] and batch.metadata == [1]  # group 1's margin 0.1 < 0.3
    assert torch.equal(batch.traj.x0[0, 0], traj.x0[1]) and torch.equal(batch.traj.x0[0, 1], traj.x0[0])
    assert torch.equal(batch.traj.cond.embeds[0], traj.cond.embeds[1])
    assert batch.rewards.tolist() == pytest.approx([0.7]) and batch.traj.x_t.shape[1] == 0
    assert algo._stats == {"pairs": 1.0, "pairs_per_group": 0.5, "pair_margin": pytest.approx(0.7)}
    empty = algo.prepare(traj, RewardOutput(scores=torch.zeros(4)), GROUPS)
    assert len(empty) == 0


# ------------------------------------------------------------------------------------------- dense credit


def test_focus_map_by_hand():
    # pair 0: winner map deviates by +0.5 at one of 4 pixels, loser by -0.25 at another
    dense_w = torch.tensor([[[1.0, 0.5], [0.5, 0.5]]])
    dense_l = torch.tensor([[[0.25, 0.25], [0.0, 0.25]]])
    m = focus_map(dense_w, dense_l, torch.tensor([0.5]), torch.tensor([0.25]), 2.0)
    raw = torch.tensor([[2.0, 1.0], [1.5, 1.0]])        # 1 + 2 (|dw| + |dl|)
    assert torch.allclose(m[0], raw / raw.mean())
    flat = focus_map(torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 0.25), torch.tensor([0.5]),
                     torch.tensor([0.25]), 2.0)
    assert torch.equal(flat, torch.ones(1, 2, 2))


def test_dense_focus_weights_the_errors_and_keeps_identical_pairs_at_zero(tiny_backbones, trajs):
    bb, traj = tiny_backbones["flow"], trajs["flow"]
    module = bb.trainable()
    ref, saved = perturbed_reference(bb)
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    try:
        plain = algorithms.get("diffusion_dpo", beta=1.0)
        dense = algorithms.get("diffusion_dpo", beta=1.0, dense_credit=3.0)
        b0 = plain.prepare(traj, RewardOutput(scores=scores), GROUPS)
        flat_map = scores.view(-1, 1, 1).expand(-1, 32, 32).clone()
        b1 = dense.prepare(traj, RewardOutput(scores=scores, dense=flat_map), GROUPS)
        assert b1.weights.shape == (2, 32, 32) and torch.equal(b1.weights, torch.ones(2, 32, 32))
        assert dense.loss(bb, None, b1, 0, ref)[0].item() == pytest.approx(plain.loss(bb, None, b0, 0, ref)[0].item(),
                                                                           rel=1e-6)
        spot = flat_map.clone()
        spot[1, :8, :8] = 1.0                           # the loser of pair 0 has a locally "good" patch
        b2 = dense.prepare(traj, RewardOutput(scores=scores, dense=spot), GROUPS)
        assert b2.weights[0, :8, :8].min() > 1.0 > b2.weights[0, 8:, 8:].max()
        assert torch.allclose(b2.weights.flatten(1).mean(1), torch.ones(2))
        assert dense.loss(bb, None, b2, 0, ref)[0].item() != pytest.approx(plain.loss(bb, None, b0, 0, ref)[0].item(),
                                                                           rel=1e-6)
        same = Batch(traj=paired_trajectory(traj.x0[[0, 3]], traj.x0[[0, 3]], traj.cond.index([0, 3]),
                                            b2.traj.seeds, 2), rewards=torch.zeros(2), adv=torch.zeros(2),
                     group_ids=torch.tensor([0, 1]), weights=b2.weights)
        module.zero_grad(set_to_none=True)
        dense.loss(bb, None, b2, 0, ref)[0].backward()
        scale = max(g.abs().max().item() for g in grads(module))
        loss, m = dense.loss(bb, None, same, 0, ref)
        loss.backward()
        assert m["z_mean"] == 0.0 and max(g.abs().max().item() for g in grads(module)) <= 1e-6 * scale
        with pytest.raises(ValueError, match="dense map"):
            dense.prepare(traj, RewardOutput(scores=scores), GROUPS)
    finally:
        module.load_state_dict(saved)
        module.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------- offline


def make_dataset(root, images, prompts):
    """A dataset of pairs (images[2i], images[2i + 1]) with PNG files; returns its index path."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, prompt in enumerate(prompts):
        for k, role in enumerate(("chosen", "rejected")):
            pixels = (images[2 * i + k].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / "img" / f"{i}_{role}.png")
        rows.append({"id": f"p{i}", "prompt": prompt, "chosen": f"img/{i}_chosen.png",
                     "rejected": f"img/{i}_rejected.png", "chosen_score": 1.0, "rejected_score": 0.25})
    return write_index(root / "pairs.jsonl", rows)


def test_offline_batch_encodes_the_dataset_images(tiny_backbones, trajs, tmp_path):
    bb = tiny_backbones["flow"]
    with torch.no_grad():
        images = bb.decode(trajs["flow"].x0)
    data = PreferenceDataset.load(make_dataset(tmp_path, images, PROMPTS))
    chosen, rejected = data.images([1, 0])
    assert chosen.shape == (2, 3, 32, 32) and (chosen[1] - images[0]).abs().max() <= 0.5 / 255 + 1e-6
    batch = offline_batch(bb, data, [1, 0], torch.tensor([5, 6]), 2)
    assert batch.traj.x0.shape == (2, 2, *bb.sample_shape) and batch.prompts == [PROMPTS[1], PROMPTS[0]]
    with torch.no_grad():
        assert torch.allclose(batch.traj.x0[:, 1], bb.encode_images(rejected), atol=1e-6)
    assert batch.traj.cond.uncond_embeds is not None and batch.rewards.tolist() == [0.75, 0.75]
    loss, m = algorithms.get("diffusion_dpo", mode="offline").loss(bb, None, batch, 0, Reference(bb, lora=False))
    assert loss.item() == pytest.approx(math.log(2.0)) and "pairs" not in m  # policy == reference
    # epochs of permutations: every record once per epoch, the same for the same iteration
    assert sorted(data.order(0, 2, seed=3)) == [0, 1] and data.order(5, 1, 3) == data.order(5, 1, 3)
    assert sorted(data.order(1, 3, seed=0)[:1] + data.order(0, 3, seed=0)[2:]) == [0, 1]


@pytest.mark.parametrize("name", ["flow", "sd-eps", "flow-pixel", "sd-pixel"])
def test_encode_images_inverts_decode(tiny_backbones, name):
    bb = tiny_backbones[name]
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        x0 = bb.encode_images(images)
        assert x0.shape == (2, *bb.sample_shape)
        if bb.vae is None:  # pixels: exactly 2x - 1 and back
            assert torch.equal(x0, images * 2 - 1) and torch.allclose(bb.decode(x0), images, atol=1e-6)
        else:  # the autoencoder's posterior mean, scaled as decode un-scales it
            mean = bb.vae.encode(images * 2 - 1).latent_dist.mode()
            shift = bb.vae.config.shift_factor if name == "flow" else 0.0
            assert torch.allclose(x0, (mean - shift) * bb.vae.config.scaling_factor, atol=1e-6)
    with pytest.raises(ValueError, match=r"RGB images \(B, 3, 32, 32\)"):
        bb.encode_images(torch.rand(2, 3, 16, 16))


# ------------------------------------------------------------------------------- trainer combination


def _config(tmp_path, algorithm, **data):
    from vgrl.config import load_config

    cfg = {"seed": 0, "backbone": {"name": "flow", "tiny": True, "resolution": 32}, "kernel": {"name": "ode"},
           "sampling": {"num_steps": 2, "plan": {"kind": "ode"}}, "data": {"world": "shapes", **data},
           "batch_size": 2, "group_size": 1, "reward": {"name": "jpeg"}, "algorithm": algorithm,
           "train": {"iterations": 2, "lr": 1e-3, "checkpoint_every": 2},
           "eval": {"before": False, "every": None, "per_category": 1, "batch_size": 8},
           "log": {"grid_every": None, "progress": False, "tensorboard": False}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path, [])


def test_trainer_checks_mode_against_the_dataset(tiny_backbones, trajs, tmp_path):
    from vgrl.config import ConfigError
    from vgrl.training.loop import TrainingError, build

    with pytest.raises(TrainingError, match="mode: 'offline' trains 'diffusion_dpo' on a preference dataset: "
                                            "set data.preferences"):
        build(_config(tmp_path, {"name": "diffusion_dpo", "mode": "offline"}))
    with torch.no_grad():
        index = make_dataset(tmp_path / "ds", tiny_backbones["flow"].decode(trajs["flow"].x0), PROMPTS)
    with pytest.raises(TrainingError, match="data.preferences is read only by a pairwise algorithm with mode: "
                                            "offline"):
        build(_config(tmp_path, {"name": "diffusion_dpo"}, preferences=str(index)))
    with pytest.raises(ConfigError, match="data.preferences: 'nope' is neither a pairs.jsonl index"):
        _config(tmp_path, {"name": "diffusion_dpo"}, preferences="nope")
    small = tmp_path / "small"
    make_dataset(small, torch.rand(2, 3, 16, 16), ["a red circle"])
    with pytest.raises(TrainingError, match=r"line 1 \(id 'p0'\) has 16x16 images but backbone.resolution is 32"):
        build(_config(tmp_path, {"name": "diffusion_dpo", "mode": "offline"}, preferences=str(small)))
    with pytest.raises(TrainingError, match="group_size must be >= 2"):
        build(_config(tmp_path, {"name": "diffusion_dpo"}))


def test_offline_training_reads_pairs_not_rollouts(tiny_backbones, trajs, tmp_path):
    from vgrl.training.loop import train

    with torch.no_grad():
        index = make_dataset(tmp_path / "ds", tiny_backbones["flow"].decode(trajs["flow"].x0), PROMPTS)
    cfg = _config(tmp_path, {"name": "diffusion_dpo", "mode": "offline", "beta": 1000.0}, preferences=str(index))
    summary = train(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert summary["images_generated"] == 0 and summary["optimizer_steps"] == 2
    assert [r["pairs"] for r in train_rows] == [2, 2] and "reward_mean" not in train_rows[0]
    assert train_rows[0]["dpo_loss"] == pytest.approx(math.log(2.0)) and train_rows[1]["implicit_acc"] == 1.0
