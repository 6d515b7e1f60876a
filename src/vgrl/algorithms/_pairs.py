"""Preference pairs shared by Diffusion-DPO and Diffusion-NPO: options, pairing, paired batches; not an algorithm.

A private module (the leading underscore keeps it out of the registry). A *paired batch* has one row
per pair ``(winner, loser)`` of the same prompt: its trajectory's ``x0`` is ``(P, 2, *S)`` with
``x0[:, 0]`` the preferred (chosen) sample and ``x0[:, 1]`` the rejected one, ``cond`` is the pair's
prompt, ``seeds`` ``(P,)`` seeds the pair's shared ``(t, eps)`` draws (:mod:`vgrl.algorithms._forward`)
and no denoising step is recorded (``K = 0``). ``rewards`` and ``adv`` hold the pair's reward margin
``r_w - r_l`` (offline: the score margin when the dataset has scores, else NaN / 1). The trainer's
minibatches are then minibatches of pairs (``train.minibatch_size`` counts pairs).

Online pairs (``mode: online``) come from each rollout's prompt groups, ranked by reward::

    best_worst:  per group, w = argmax r, l = argmin r (ties: the earlier sample)
    all:         per group, every (i, j) with r_i > r_j
    keep a pair iff  r_w - r_l > 0  and  r_w - r_l >= margin

Offline pairs (``mode: offline``) come from a preference dataset (:mod:`vgrl.data.preferences`):
the trainer encodes the images with the backbone's autoencoder (:func:`offline_batch`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from vgrl._lazy import lazy
from vgrl.algorithms._credit import check_map, per_sample
from vgrl.algorithms._forward import NoisingOptions, unit_seed
from vgrl.algorithms.base import Algorithm, Needs
from vgrl.types import Batch, Cond, RewardOutput, Trajectory

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")


class PairOptions(NoisingOptions):
    """Options of the pairwise preference algorithms (``diffusion_dpo``, ``npo``)."""

    beta: float = Field(5000.0, gt=0, description="KL strength beta (the paper's beta T; its SD1.5 code: 5000)")
    mode: Literal["online", "offline"] = Field(
        "online", description="online: pairs from each rollout's prompt groups ranked by reward; offline: "
                              "pairs from the preference dataset data.preferences")
    pairing: Literal["best_worst", "all"] = Field(
        "best_worst", description="online: the best and worst sample of each group, or every ordered pair")
    margin: float = Field(0.0, ge=0, description="online: keep a pair only if r_w - r_l >= margin (and > 0)")
    dense_credit: float = Field(0.0, ge=0, description="online: alpha of the per-pixel focus map from the reward's "
                                                      "dense credit (0 = off; docs/dense_credit.md)")


def focus_map(dense_w: Tensor, dense_l: Tensor, r_w: Tensor, r_l: Tensor, alpha: float) -> Tensor:
    """``(P, [N,] H, W)`` per-pixel (per frame / view and pixel) weights of a pair's denoising errors, mean 1
    per pair (dense credit, :mod:`vgrl.algorithms._credit`)::

        m(x) = 1 + alpha (|r_w(x) - r_w| + |r_l(x) - r_l|),   then  m / mean_x m

    The comparison concentrates where either sample has local evidence (a correct or a wrong object);
    winner and loser share the map, so an identical pair still has ``z = 0`` and zero gradient.
    """
    dev = (dense_w - per_sample(r_w, dense_w)).abs() + (dense_l - per_sample(r_l, dense_l)).abs()
    m = 1.0 + alpha * dev.to(torch.float32)
    return m / per_sample(m.flatten(1).mean(dim=1), m)


def select_pairs(rewards: Tensor, group_ids: Tensor, pairing: str, margin: float) -> tuple[Tensor, Tensor]:
    """``(w, l)`` ``(P,)`` int64 sample indices of the kept pairs, groups in order (module docstring).

    Raises ``ValueError`` naming the samples whose reward is not finite.
    """
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"non-finite rewards at samples {bad}")
    winners, losers = [], []
    for group in torch.unique(group_ids, sorted=True):
        idx = (group_ids == group).nonzero().flatten()
        r = rewards[idx].to(torch.float64)
        if pairing == "best_worst":
            desc = torch.sort(r, descending=True, stable=True).indices
            asc = torch.sort(r, stable=True).indices
            cand = [(int(desc[0]), int(asc[0]))]
        elif pairing == "all":
            cand = [(i, j) for i in range(len(idx)) for j in range(len(idx)) if r[i] > r[j]]
        else:
            raise ValueError(f"pairing must be 'best_worst' or 'all', got {pairing!r}")
        for i, j in cand:
            gap = float(r[i] - r[j])
            if gap > 0 and gap >= margin:
                winners.append(int(idx[i]))
                losers.append(int(idx[j]))
    return torch.tensor(winners, dtype=torch.long), torch.tensor(losers, dtype=torch.long)


def pair_seeds(seed_w: Tensor, seed_l: Tensor) -> Tensor:
    """``(P,)`` int64 seed of each pair's shared noise, a hash of its two samples' seeds."""
    return torch.tensor([unit_seed(a, b) >> 2 for a, b in zip(seed_w.tolist(), seed_l.tolist())], dtype=torch.int64)


def paired_trajectory(x0_w: Tensor, x0_l: Tensor, cond: Cond, seeds: Tensor, num_steps: int,
                      guidance_scale: float = 1.0) -> Trajectory:
    """A trajectory of ``P`` pairs: ``x0`` ``(P, 2, *S)`` (winner, loser), no recorded steps."""
    if x0_w.shape != x0_l.shape or len(cond) != len(x0_w) or seeds.shape != (len(x0_w),):
        raise ValueError(f"pairs need equal winner / loser shapes and one prompt and seed per pair, got "
                         f"{tuple(x0_w.shape)}, {tuple(x0_l.shape)}, {len(cond)} prompts, seeds {tuple(seeds.shape)}")
    p, shape = len(x0_w), tuple(x0_w.shape[1:])
    empty = torch.empty((p, 0), dtype=torch.float32)
    return Trajectory(x_t=torch.empty((p, 0, *shape)), x_next=torch.empty((p, 0, *shape)), t=empty, s=empty,
                      log_prob=empty, step_idx=torch.empty(0, dtype=torch.long),
                      x0=torch.stack([x0_w, x0_l], dim=1).to(torch.float32), seeds=seeds.to(torch.int64),
                      cond=cond, guidance_scale=guidance_scale, num_steps=num_steps,
                      sde_steps=torch.zeros(num_steps, dtype=torch.bool))


def online_batch(traj: Trajectory, reward: RewardOutput, group_ids: Tensor, options: PairOptions,
                 prompts: list[str] | None, metadata: list[Any] | None) -> tuple[Batch, dict[str, float]]:
    """A rollout -> its paired batch (rows = kept pairs) and pairing statistics."""
    scores = reward.scores.to(torch.float32)
    w, l = select_pairs(scores, group_ids, options.pairing, options.margin)
    gap = scores[w] - scores[l]
    traj_p = paired_trajectory(traj.x0[w], traj.x0[l], traj.cond.index(w), pair_seeds(traj.seeds[w], traj.seeds[l]),
                               traj.num_steps, traj.guidance_scale)
    pick = (lambda seq: None if seq is None else [seq[i] for i in w.tolist()])
    focus = None
    if options.dense_credit > 0:
        if reward.dense is None:
            raise ValueError("dense_credit > 0 needs a reward that returns a dense map (e.g. "
                             "reward: {name: shapes_checker, dense: true}); this reward returned none")
        check_map(reward.dense, len(scores), "dense_credit")
        focus = focus_map(reward.dense[w], reward.dense[l], scores[w], scores[l], options.dense_credit)
    batch = Batch(traj=traj_p, rewards=gap, adv=gap, group_ids=group_ids[w], prompts=pick(prompts),
                  metadata=pick(metadata), weights=focus)
    n_groups = len(torch.unique(group_ids))
    stats = {"pairs": float(len(w)), "pairs_per_group": len(w) / max(n_groups, 1),
             "pair_margin": gap.mean().item() if len(w) else 0.0}
    if focus is not None:
        stats["focus_max"] = focus.flatten(1).amax(dim=1).mean().item() if len(w) else 1.0
    return batch, stats


def offline_batch(backbone, dataset, idx: list[int], seeds: Tensor, num_steps: int) -> Batch:
    """Pairs ``idx`` of a :class:`~vgrl.data.preferences.PreferenceDataset` as a paired batch.

    Images are encoded to the backbone's working space (``encode_images``, no grad); prompts are encoded
    with the empty prompt too (``uncond_embeds``, used by ``npo``). ``rewards`` is the score margin
    ``chosen_score - rejected_score`` where the dataset has both scores, else NaN; ``adv`` is 1.
    """
    if dataset.layout != backbone.layout:
        raise ValueError(f"data.preferences holds {dataset.layout} samples but backbone {backbone.name!r} generates "
                         f"{backbone.layout} samples")
    chosen, rejected = dataset.images(idx)
    with torch.no_grad():
        x0 = backbone.encode_images(torch.cat([chosen, rejected]))
    records = [dataset.records[i] for i in idx]
    prompts = [r.prompt for r in records]
    cond = backbone.encode(prompts, guidance=True)
    n = len(idx)
    gap = torch.tensor([r.margin for r in records], dtype=torch.float32)
    traj = paired_trajectory(x0[:n], x0[n:], cond, seeds, num_steps)
    return Batch(traj=traj, rewards=gap, adv=torch.ones(n), group_ids=torch.tensor(idx, dtype=torch.long),
                 prompts=prompts, metadata=[r.metadata for r in records])


def unconditional(cond: Cond) -> Cond:
    """The empty-prompt conditioning of ``cond`` (its ``uncond_embeds``) as a conditional ``Cond``."""
    if cond.uncond_embeds is None:
        raise ValueError("the unconditional branch needs the empty-prompt embedding: roll out with "
                         "sampling.guidance_scale > 1 (online), or train offline (always encoded)")
    return Cond(embeds=cond.uncond_embeds, pooled=cond.uncond_pooled)


class PairwiseAlgorithm(Algorithm):
    """Abstract: what every pairwise preference algorithm shares (``diffusion_dpo``, ``npo``) — a frozen
    reference, online pairs from the rollout's prompt groups (:func:`online_batch`) or offline pairs from
    the trainer, and ``num_timesteps`` loss units of shared ``(t, eps)`` per pair. Subclasses write ``loss``."""

    def __init__(self, options: PairOptions, reward=None) -> None:
        super().__init__(options, reward)
        self._stats: dict[str, float] = {}

    @classmethod
    def examples(cls) -> list[PairOptions]:
        """Online pairs from a rollout and offline pairs from a preference dataset."""
        return [cls.Options(), cls.Options(mode="offline")]

    @property
    def needs(self) -> Needs:
        online = self.options.mode == "online"
        return Needs(reference=True, groups=online, pairs=True, dataset=not online)

    def prepare(self, traj: Trajectory, reward: RewardOutput, group_ids: Tensor,
                prompts: list[str] | None = None, metadata: list[Any] | None = None) -> Batch:
        """A rollout -> a paired batch: one row per kept ``(winner, loser)`` pair of a prompt group
        (winner = higher reward; a loss may swap them)."""
        if self.options.mode != "online":
            raise ValueError(f"{self.name} with mode 'offline' trains on data.preferences, not on rollouts")
        batch, self._stats = online_batch(traj, reward, group_ids, self.options, prompts, metadata)
        return batch

    def units(self, batch: Batch) -> list[int]:
        """``num_timesteps`` draws of ``(t, eps)`` per pair."""
        return list(range(self.options.num_timesteps))
