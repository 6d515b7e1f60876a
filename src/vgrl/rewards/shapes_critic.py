"""A learned, differentiable proxy of the shapes-world checker: a small metadata-conditioned CNN.

The checker (:mod:`vgrl.rewards.shapes_checker`) is exact but piecewise constant, so it has no
gradient. This critic ``f_phi(x, m)`` regresses the checker's partial score ``c(x, m)`` in [0, 1] from an
image ``x`` ``(B, 3, 32, 32)`` in [0, 1] and its prompt metadata ``m`` (a :class:`PromptMeta`, encoded as
a 42-d one-hot vector by :func:`encode_meta`). Architecture (:class:`CriticNet`): a convolutional
detector maps ``x`` to ``p[k, cell]``, the probability that a shape of kind ``k = (shape, colour)`` is
centred in each cell of a 16x16 grid; the metadata selects the kinds each prompt object asks for, and
soft counts, centroids and the relation's along/across offsets feed a small MLP that outputs a logit.
Training (:func:`train_critic`), on the training prompts only, minimises::

    E (sigmoid f_phi(x, m) - c(x, m))^2  +  lambda * BCE(p(x), checker's detections in x) / B

over ground-truth renders scored against their own and mismatched metadata, degraded renders, and
samples of the shipped base generator. Reward-gradient algorithms (AlignProp arXiv 2310.03739, DRaFT
arXiv 2309.17400, ReFL arXiv 2304.05977) back-propagate through it, the role a learned preference
model (ImageReward, PickScore) plays for real generators. Being a proxy it can be gamed: optimise it
hard and the checker, the gold metric, tells you when it was.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
from pydantic import Field

from vgrl._lazy import lazy, no_grad
from vgrl.rewards.base import Reward, RewardInputError, RewardOptions
from vgrl.types import RewardOutput
from vgrl.worlds.shapes import (BACKGROUND, CATEGORIES, COLOURS, COUNTS, RELATIONS, SHAPES, ObjectSpec, PromptMeta,
                                ShapesWorld)

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")
F = lazy("torch.nn.functional")
nn = lazy("torch.nn")

SLOT_DIM = 1 + len(SHAPES) + len(COLOURS) + 1 + max(COUNTS)  # present, shape, colour | any, count 1..4
META_DIM = len(CATEGORIES) + 2 * SLOT_DIM + len(RELATIONS)
WEIGHTS, CONFIG = "model.safetensors", "config.json"
BASE_MODELS = ("models/shapes-sd/pipeline", "models/shapes-flow/pipeline")  # shipped generators sampled in training


def encode_meta(metas: list[PromptMeta]) -> Tensor:
    """``(B, META_DIM)`` float32: category one-hot, two object slots (present, shape, colour or "any",
    count one-hot), relation one-hot (zeros when none)."""
    out = torch.zeros(len(metas), META_DIM)
    for i, m in enumerate(metas):
        out[i, CATEGORIES.index(m.category)] = 1
        for j, o in enumerate(m.objects[:2]):
            base = len(CATEGORIES) + j * SLOT_DIM
            colour = len(COLOURS) if o.colour is None else COLOURS.index(o.colour)
            for k in (0, 1 + SHAPES.index(o.shape), 1 + len(SHAPES) + colour, SLOT_DIM - max(COUNTS) + o.count - 1):
                out[i, base + k] = 1
        if m.relation is not None:
            out[i, len(CATEGORIES) + 2 * SLOT_DIM + RELATIONS.index(m.relation)] = 1
    return out


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation), nn.GroupNorm(8, cout), nn.SiLU())


@functools.cache
def critic_net() -> type:
    """:class:`CriticNet`, defined at its first use: it subclasses ``torch.nn.Module``, and importing this module
    (``vgrl validate`` reads the reward's options) must not import torch."""

    class CriticNet(nn.Module):
        """``(x (B, 3, R, R) in [0, 1], meta (B, META_DIM)) -> (B,)`` logits of the checker's partial score.

        A fully convolutional detector gives ``p[k, cell]``, the probability that a shape of kind
        ``k = (shape, colour)`` is centred in each cell of an ``R/2 x R/2`` grid. The metadata selects, per
        object slot ``j``, the kinds it asks for (``w_j = shape_j (x) colour_j``, every colour when "any")::

            n_j = sum_cell w_j . p          (matches)        n_shape_j = sum_cell (shape_j (x) 1) . p
            (u_j, v_j) = centroid of w_j . p                 along / across = (u_1 - u_0, v_1 - v_0) in the relation's frame

        and a small MLP maps these, the required counts, the relation and the category to the logit. The
        head never sees which shape or colour was asked for, so held-out (colour, shape) combinations are
        scored by the same rule as seen ones.
        """

        def __init__(self, width: int = 24, hidden: int = 64, resolution: int = 32) -> None:
            super().__init__()
            w, kinds, self.resolution = width, len(SHAPES) * len(COLOURS), resolution
            self.trunk = nn.Sequential(_conv(3, w), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w),
                                       _conv(2 * w, 2 * w, dilation=2), _conv(2 * w, 2 * w, dilation=2),
                                       _conv(2 * w, 2 * w), nn.Conv2d(2 * w, kinds, 1))
            nn.init.constant_(self.trunk[-1].bias, -6.0)  # prior: a cell rarely holds a shape's centre
            self.head = nn.Sequential(nn.Linear(HEAD_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                      nn.Linear(hidden, 1))
            c = (torch.arange(resolution // 2) + 0.5) / (resolution // 2) * 2 - 1
            self.register_buffer("coords", torch.stack(torch.meshgrid(c, c, indexing="xy")).flatten(1), persistent=False)

        def detect(self, x: Tensor) -> Tensor:
            """``(B, kinds, R/2, R/2)`` logits of a (shape, colour) centred in each cell."""
            return self.trunk(x * 2 - 1)

        def forward(self, x: Tensor, meta: Tensor, det: Tensor | None = None) -> Tensor:
            p = torch.sigmoid(self.detect(x) if det is None else det).flatten(2)  # (B, kinds, cells)
            return self.head(head_features(p, meta, self.coords)).squeeze(1)
    return CriticNet


HEAD_DIM = len(CATEGORIES) + len(RELATIONS) + 2 + 2 * (2 + max(COUNTS) + 5)


def head_features(p: Tensor, meta: Tensor, coords: Tensor) -> Tensor:
    """``(B, HEAD_DIM)`` rule features of detections ``p`` ``(B, kinds, cells)`` for encoded ``meta``."""
    nc, ns, feats, cents = len(COLOURS), len(SHAPES), [meta[:, :len(CATEGORIES)]], []
    for j in range(2):
        v = meta[:, len(CATEGORIES) + j * SLOT_DIM:len(CATEGORIES) + (j + 1) * SLOT_DIM]
        present, shape, colour, anyc, count = v[:, :1], v[:, 1:1 + ns], v[:, 1 + ns:1 + ns + nc], \
            v[:, 1 + ns + nc:2 + ns + nc], v[:, 2 + ns + nc:]
        sel = (shape[:, :, None] * (colour + anyc)[:, None, :]).flatten(1)  # (B, kinds)
        every = (shape[:, :, None] * torch.ones_like(colour)[:, None, :]).flatten(1)
        mass = torch.einsum("bk,bkc->bc", sel, p)
        n, n_shape = mass.sum(1, keepdim=True), torch.einsum("bk,bkc->b", every, p)[:, None]
        need = (count * torch.arange(1, max(COUNTS) + 1, device=p.device)).sum(1, keepdim=True).clamp(min=1)
        cents.append(torch.einsum("bc,dc->bd", mass, coords) / (n + 1e-3))
        feats += [present, 1 - anyc, count, n.clamp(max=6) / 2, n_shape.clamp(max=6) / 2,
                  (n_shape - need).abs().clamp(max=4) / need, n / torch.maximum(n_shape, need).clamp(min=0.5),
                  torch.tanh(2 * (n - 0.5))]
    rel = meta[:, -len(RELATIONS):]
    d = cents[1] - cents[0]  # (B, 2): object 1 minus object 0, x right / y down, in [-2, 2]
    frames = torch.stack([torch.stack([d[:, 0], d[:, 1]], 1), torch.stack([-d[:, 0], d[:, 1]], 1),
                          torch.stack([d[:, 1], d[:, 0]], 1), torch.stack([-d[:, 1], d[:, 0]], 1)], 1)
    along_across = torch.einsum("br,brd->bd", rel, frames)  # RELATIONS order: left_of, right_of, above, below
    feats += [rel, along_across[:, :1], along_across[:, 1:].abs()]
    return torch.cat(feats, dim=1)


class ShapesCriticOptions(RewardOptions):
    path: str = Field("models/shapes-critic", description=f"directory holding {WEIGHTS} and {CONFIG}")


def load_critic(path: str | Path) -> CriticNet:
    """The trained :class:`CriticNet` in ``path`` (float32, eval mode, frozen); a clear error if absent."""
    from safetensors.torch import load_file

    path = Path(path)
    missing = [f for f in (WEIGHTS, CONFIG) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"reward 'shapes_critic': no trained critic at {path} (missing {', '.join(missing)}); "
                                f"train one with `vgrl train-critic --out {path}` or set reward.path")
    cfg = json.loads((path / CONFIG).read_text())
    net = critic_net()(cfg["width"], cfg["hidden"], cfg["resolution"])
    net.load_state_dict({k: v.float() for k, v in load_file(path / WEIGHTS).items()})
    return net.eval().requires_grad_(False)


class ShapesCritic(Reward):
    """Learned checker proxy; ``metadata[i]`` is sample ``i``'s :class:`PromptMeta`; ``details["critic"]``."""

    name = "shapes_critic"
    differentiable = True
    granularity = "pointwise"
    Options: ClassVar[type[RewardOptions]] = ShapesCriticOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.net = load_critic(self.options.path)

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        r = self.net.resolution
        if tuple(images.shape[2:]) != (r, r):
            raise RewardInputError(f"images must be {r}x{r} for reward 'shapes_critic', got {tuple(images.shape[2:])}")
        for i, m in enumerate(metadata):
            if not isinstance(m, PromptMeta):
                raise RewardInputError(f"metadata[{i}] must be a shapes-world PromptMeta, got {type(m).__name__}")
        net = self.net.to(images.device)
        scores = torch.sigmoid(net(images.float(), encode_meta(metadata).to(images.device)))
        return RewardOutput(scores=scores, details={"critic": scores.detach()})


COMPONENT = ShapesCritic


# ---------------------------------------------------------------------------------------------- data
def near_miss(meta: PromptMeta, valid: set, rng: np.random.Generator, tries: int = 20) -> PromptMeta | None:
    """A prompt of ``valid`` that differs from ``meta`` in one fact (a colour, shape, count, the relation,
    or swapped colours / objects); None if none was found in ``tries``."""
    objs = list(meta.objects)
    for _ in range(tries):
        o, j = list(objs), int(rng.integers(len(objs)))
        kind, rel = int(rng.integers(5)), meta.relation
        if kind == 0 and o[j].colour is not None:
            o[j] = ObjectSpec(o[j].shape, str(rng.choice(COLOURS)), o[j].count)
        elif kind == 1:
            o[j] = ObjectSpec(str(rng.choice(SHAPES)), o[j].colour, o[j].count)
        elif kind == 2 and o[j].count > 1:
            o[j] = ObjectSpec(o[j].shape, o[j].colour, int(rng.choice(COUNTS)))
        elif kind == 3 and rel is not None:
            rel = str(rng.choice(RELATIONS))
        elif kind == 4 and len(o) == 2:
            o = [ObjectSpec(o[0].shape, o[1].colour), ObjectSpec(o[1].shape, o[0].colour)] if rng.random() < 0.5 \
                else o[::-1]
        cand = PromptMeta(meta.category, tuple(o), rel)
        if cand != meta and cand in valid:
            return cand
    return None


def degrade(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random corruptions of ``(B, 3, H, W)`` images, each applied with probability 0.35: Gaussian noise,
    3x3 blur, translation, an erased rectangle, channel permutation (a colour swap), colour offset, brightness."""
    b, _, h, w = x.shape
    x = x.clone()
    u = lambda: torch.rand(b, generator=gen) < 0.35  # noqa: E731 - per-sample coin
    rand = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    bg = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    for i in u().nonzero().flatten().tolist():  # translation by up to 4 px, background fill
        dy, dx = (torch.randint(-4, 5, (2,), generator=gen)).tolist()
        moved = bg.expand(1, 3, h, w).clone()[0]
        moved[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[i, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        x[i] = moved
    for i in u().nonzero().flatten().tolist():  # erase a rectangle
        sy, sx = (torch.randint(4, 17, (2,), generator=gen)).tolist()
        y0, x0 = int(rand(()) * (h - sy)), int(rand(()) * (w - sx))
        x[i, :, y0:y0 + sy, x0:x0 + sx] = bg[0]
    for i in u().nonzero().flatten().tolist():  # swap colour channels
        x[i] = x[i, torch.randperm(3, generator=gen)]
    blur = u().view(b, 1, 1, 1)
    x = torch.where(blur, F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1), x)
    x = x + u().view(b, 1, 1, 1) * (rand(b, 3, 1, 1) - 0.5) * 0.5
    x = x * torch.where(u(), 0.6 + 0.6 * rand(b), torch.ones(b)).view(b, 1, 1, 1)
    x = x + u().view(b, 1, 1, 1) * rand(b, 1, 1, 1) * 0.25 * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


@no_grad
def base_samples(metas: list[PromptMeta], texts: list[str], seeds: Tensor, model: str,
                 batch_size: int = 64) -> Tensor:
    """``(B, 3, 32, 32)`` samples of the base pipeline ``model`` at its ``vgrl.json`` eval settings (ODE)."""
    from vgrl import backbones
    from vgrl.backbones.base import read_meta
    from vgrl.rollout import StepPlan, kernel_for, rollout

    info, bb = read_meta(model), backbones.load(model)
    steps, guidance = info.get("eval_steps", 10), info.get("eval_guidance", 1.0)
    kernel, out = kernel_for(bb, "ode"), []
    for lo in range(0, len(texts), batch_size):
        cond = bb.encode(texts[lo:lo + batch_size], guidance=guidance > 1)
        traj = rollout(bb, kernel, cond, steps, StepPlan.ode(steps), seeds=seeds[lo:lo + batch_size],
                       guidance_scale=guidance)
        out.append(bb.decode(traj.x0).float())
    return torch.cat(out)


class CriticData:
    """Seeded stream of ``(images, metas, checker scores)`` training batches from one prompt split."""

    def __init__(self, world: ShapesWorld, split: str, seed: int, base_models: Sequence[str], n_base: int) -> None:
        self.world, self.rng = world, np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.prompts = world.prompts(split)
        self.by_cat = {c: world.prompts(split, c) for c in CATEGORIES if world.prompts(split, c)}
        self.valid = {p.meta for p in self.prompts}
        self.base_meta, self.base = [], None
        images = []
        for model in base_models:  # n_base samples in all, shared evenly between the base models
            chosen = self.draw(n_base // len(base_models))
            self.base_meta += [p.meta for p in chosen]
            seeds = torch.as_tensor(self.rng.integers(0, 2**62, size=len(chosen)), dtype=torch.int64)
            images.append(base_samples([p.meta for p in chosen], [p.text for p in chosen], seeds, model))
        self.base = torch.cat(images) if images else None

    def draw(self, n: int, category: str | None = None) -> list:
        """``n`` prompts: a uniformly drawn category (or ``category``), then a prompt of it."""
        cats, out = list(self.by_cat), []
        for _ in range(n):
            group = self.by_cat[category or cats[int(self.rng.integers(len(cats)))]]
            out.append(group[int(self.rng.integers(len(group)))])
        return out

    def other(self, meta: PromptMeta) -> PromptMeta:
        """A near miss of ``meta`` (half of the time), else a prompt of its category or of any."""
        u = self.rng.random()
        miss = near_miss(meta, self.valid, self.rng) if u < 0.5 else None
        return miss or self.draw(1, meta.category if u < 0.75 else None)[0].meta

    def batch(self, size: int, base_frac: float = 0.35) -> tuple[Tensor, list[PromptMeta], Tensor, Tensor]:
        """``(images, metas, checker scores (B,), detection targets (B, kinds, R/2, R/2))``."""
        n_base = int(size * base_frac) if self.base is not None else 0
        metas = [p.meta for p in self.draw(size - n_base)]
        images = self.world.render(metas, seed=self.rng.integers(0, 2**62, size=len(metas)).tolist())
        if n_base:
            j = self.rng.integers(len(self.base_meta), size=n_base)
            images = torch.cat([images, self.base[torch.as_tensor(j)]])
            metas += [self.base_meta[k] for k in j]
        rough = torch.as_tensor(self.rng.random(size) < 0.4)  # degrade 40% of images
        images = torch.where(rough.view(-1, 1, 1, 1), degrade(images, self.gen), images)
        metas = [self.other(m) if self.rng.random() < 0.4 else m for m in metas]  # score 40% against other prompts
        verdict = self.world.check(images, metas)
        return images, metas, verdict.score, detection_targets(verdict.details, images.shape[-1])


def detection_targets(details: list[dict], resolution: int) -> Tensor:
    """``(B, kinds, R/2, R/2)``: 1 in the cell of each shape the checker detected, channel ``shape * C + colour``."""
    out = torch.zeros(len(details), len(SHAPES) * len(COLOURS), resolution // 2, resolution // 2)
    for i, d in enumerate(details):
        for det in d["detections"]:
            if det["shape"] is not None:
                (cx, cy), k = det["centroid"], SHAPES.index(det["shape"]) * len(COLOURS) + COLOURS.index(det["colour"])
                out[i, k, min(int(cy // 2), resolution // 2 - 1), min(int(cx // 2), resolution // 2 - 1)] = 1
    return out


# ---------------------------------------------------------------------------------------------- training
def train_critic(out_dir: str | Path, steps: int = 1500, seed: int = 0, threads: int = 1, *,
                 base_models: Sequence[str] = BASE_MODELS, n_base: int = 1280, batch_size: int = 128,
                 lr: float = 2e-3, width: int = 24, hidden: int = 64, aux: float = 0.1, evaluate: bool = True) -> dict:
    """Train the critic on the training split (MSE to the checker's partial score), save it, measure it.

    Writes ``model.safetensors`` (float32) and ``config.json`` (architecture, settings, timings) to
    ``out_dir``, then (``evaluate``) ``eval.json`` with :func:`critic_quality` on held-out prompts.
    Returns the config record.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    world, start = ShapesWorld(32), time.perf_counter()
    data = CriticData(world, "train", seed, base_models, n_base)
    base_seconds = time.perf_counter() - start
    net = critic_net()(width, hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    curve = []
    for step in range(1, steps + 1):
        x, metas, y, target = data.batch(batch_size)
        det = net.detect(x)
        mse = F.mse_loss(torch.sigmoid(net(x, encode_meta(metas), det)), y)
        loss = mse + aux * F.binary_cross_entropy_with_logits(det, target, reduction="sum") / len(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curve.append(mse.item())
        if step % 100 == 0 or step == steps:
            print(f"step {step}/{steps}  mse {np.mean(curve[-100:]):.4f}  {time.perf_counter() - start:.0f} s",
                  flush=True)
    record = {"width": width, "hidden": hidden, "resolution": 32, "meta_dim": META_DIM,
              "params": sum(p.numel() for p in net.parameters()),
              "settings": {"steps": steps, "seed": seed, "threads": threads, "base_models": list(base_models),
                           "n_base": n_base, "batch_size": batch_size, "lr": lr, "aux": aux},
              "base_sample_seconds": round(base_seconds, 1),
              "train_seconds": round(time.perf_counter() - start, 1),
              "final_mse": float(np.mean(curve[-100:]))}
    _save(net, record, Path(out_dir))
    if evaluate:  # the saved weights, on held-out prompts
        start = time.perf_counter()
        quality = critic_quality(load_critic(out_dir), world, base_models, seed=seed)
        quality["eval_seconds"] = round(time.perf_counter() - start, 1)
        (Path(out_dir) / "eval.json").write_text(json.dumps(quality, indent=2))
        print(json.dumps(quality, indent=2))
    return record


def _save(net: CriticNet, record: dict, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in net.state_dict().items()}, out / WEIGHTS)
    (out / CONFIG).write_text(json.dumps(record, indent=2))


def _rank(v: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman's rho)."""
    r = np.empty(len(v))
    r[np.argsort(v, kind="stable")] = np.arange(len(v))
    _, inv = np.unique(v, return_inverse=True)
    return (np.bincount(inv, r) / np.bincount(inv))[inv]


def agreement(pred: Tensor, target: Tensor) -> dict[str, float]:
    """Mean absolute error, Pearson's r and Spearman's rho of ``pred`` against ``target`` (both ``(N,)``)."""
    p, t = pred.double().numpy(), target.double().numpy()
    return {"n": len(p), "mae": float(np.abs(p - t).mean()), "pearson": float(np.corrcoef(p, t)[0, 1]),
            "spearman": float(np.corrcoef(_rank(p), _rank(t))[0, 1]),
            "checker_mean": float(t.mean()), "critic_mean": float(p.mean())}


@no_grad
def critic_quality(net: CriticNet, world: ShapesWorld, base_models: Sequence[str], *, seed: int = 0,
                   renders: int = 1024, per_category: int = 64) -> dict:
    """Agreement with the checker on held-out prompts: (a) renders (own / mismatched metadata, 40% degraded),
    (b) ground truth ranked above another prompt's render, (c) each base model's samples (``vgrl eval``'s set)."""
    from vgrl.evaluation.world_eval import eval_set

    score = lambda x, m: torch.cat([torch.sigmoid(net(x[i:i + 256], encode_meta(m[i:i + 256])))  # noqa: E731
                                    for i in range(0, len(m), 256)])
    data = CriticData(world, "heldout", seed + 1, (), 0)
    xs, ms, ys, _ = zip(*[data.batch(256) for _ in range(renders // 256)])
    x, m = torch.cat(xs), [mm for b in ms for mm in b]
    out = {"heldout_renders": agreement(score(x, m), torch.cat(ys))}
    prompts = [p.meta for p in world.prompts("heldout")]
    pick = np.random.default_rng(seed + 2).permutation(len(prompts))[:2 * per_category]
    own, other = [prompts[i] for i in pick[:per_category]], [prompts[i] for i in pick[per_category:]]
    s_own = score(world.render(own, seed=seed), own)
    s_other = score(world.render(other, seed=seed), own)
    out["heldout_rank_accuracy"] = {"n": per_category, "accuracy": float((s_own > s_other).float().mean())}
    es = eval_set(world, "heldout", per_category, seed)
    for model in base_models:
        images = base_samples(es.metas, es.texts, es.seeds, model)
        out[f"heldout_samples:{model}"] = agreement(score(images, es.metas), world.check(images, es.metas).score)
    return out


def __getattr__(name: str) -> Any:
    """``CriticNet`` of this module (PEP 562), defined at its first use by :func:`critic_net`."""
    if name == "CriticNet":
        return critic_net()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
