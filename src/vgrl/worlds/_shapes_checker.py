"""Programmatic detector and GenEval-style rules for the ``shapes`` world (private; see ``shapes.py``).

Pipeline, vectorised over the whole batch (numpy):

1. **colour segmentation**: every pixel takes its nearest reference colour (the palette plus the
   background); it is foreground of palette colour ``k`` when ``k`` is nearest and closer than
   ``colour_threshold`` (Euclidean RGB), else background.
2. **connected components** of same-colour foreground pixels (4-connectivity) by min-label
   propagation with pointer jumping; components smaller than ``min_area`` pixels are dropped.
3. **shape classification** from geometry: the component's bounding box is cut into a 3x3 grid and
   the fill fraction of each cell is compared with each shape's template (mean absolute difference);
   the nearest template wins unless it is farther than ``max_template_dist``, the box is not roughly
   square, or the box is too large/small — then the component is an ``unknown`` shape and never
   counts as an object.
4. **rules** per prompt category (:meth:`ShapesChecker.judge`): every prompt is a list of *facts*
   (one per object, plus the relation for ``position``); a sample passes when all facts hold and its
   partial score is the mean of the facts' scores, in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vgrl._lazy import lazy
from vgrl.worlds.base import CheckResult

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")

GRID = 3  # occupancy grid is GRID x GRID cells of the bounding box


def occupancy_grid(mask: np.ndarray, k: int = GRID) -> np.ndarray:
    """``(k, k)`` fill fraction of each cell of a boolean ``(h, w)`` mask cut into a k x k grid."""
    h, w = mask.shape
    by = _bins(np.arange(h), h, k)
    bx = _bins(np.arange(w), w, k)
    cell = by[:, None] * k + bx[None, :]
    num = np.bincount(cell.ravel(), weights=mask.ravel().astype(np.float64), minlength=k * k)
    den = np.bincount(cell.ravel(), minlength=k * k)
    return (num / np.maximum(den, 1)).reshape(k, k)


def _bins(offset: np.ndarray, extent: np.ndarray | int, k: int) -> np.ndarray:
    """Grid cell of pixel ``offset`` (from the box's first pixel) in a box ``extent`` pixels long."""
    return np.minimum(((offset + 0.5) * k / extent).astype(np.int64), k - 1)


@dataclass
class Detections:
    """Flat arrays, one entry per kept component, sorted by image index."""

    image: np.ndarray   # (n,) int64 image index in the batch
    colour: np.ndarray  # (n,) int64 palette index
    shape: np.ndarray   # (n,) int64 shape index, -1 for unknown
    area: np.ndarray    # (n,) int64 pixels
    cx: np.ndarray      # (n,) float64 centroid x (column), pixels
    cy: np.ndarray      # (n,) float64 centroid y (row), pixels
    box: np.ndarray     # (n, 4) int64 x0, y0, x1, y1 (inclusive)
    dist: np.ndarray    # (n,) float64 distance to the nearest shape template
    pixels: np.ndarray | None = None  # (B, H, W) int64 kept-component index of each pixel, -1 elsewhere


@dataclass
class ShapesCheckResult(CheckResult):
    """The shapes checker's verdict on a batch (:class:`~vgrl.worlds.base.CheckResult` plus ``extra``).

    Attributes:
        passed: ``(B,)`` bool, every fact of the prompt holds (GenEval's binary score).
        score: ``(B,)`` float32 partial credit in [0, 1]: mean of the prompt's fact scores.
        details: per sample, a dict with ``category``, ``objects`` (one dict per prompt object:
            ``shape``, ``colour``, ``count`` (required), ``found`` (matching components),
            ``shape_found`` (components of that shape, any colour), ``ok``, ``score``, ``centroid``
            of the largest match or None), ``relation`` (for ``position``: ``name``, ``ok``, ``dx``,
            ``dy``; else None) and ``detections`` (every kept component: ``shape`` (None when
            unknown), ``colour``, ``area``, ``centroid``, ``box``).
        values: ``extra_objects`` ``(B,)`` bool (``extra > 0``) and ``strict_accuracy`` ``(B,)`` bool (passed
            with nothing extra drawn): the world's fields (``ShapesWorld.fields``).
        extra: ``(B,)`` int64, kept components beyond the objects the prompt names (``max(0, detections -
            sum of counts)``; unknown shapes count). GenEval's rules let "a X" pass with more objects drawn,
            so a rising share of samples with extras is a sign of the checker's rules being gamed
            (docs/hacking.md).
    """

    extra: Tensor | None = None


class ShapesChecker:
    """Detects coloured shapes in ``(B, 3, H, W)`` images and judges them against prompt metadata.

    Metadata is duck-typed: ``meta.category``, ``meta.relation`` and ``meta.objects``, each object
    with ``shape``, ``colour`` (a palette name or None for "any colour") and ``count``.
    """

    def __init__(self, palette: dict[str, Sequence[float]], background: Sequence[float],
                 templates: dict[str, np.ndarray], resolution: int, *,
                 colour_threshold: float = 0.3, min_area: int | None = None,
                 max_template_dist: float = 0.2, max_aspect: float = 1.4,
                 max_side_frac: float = 0.6, relation_margin_frac: float = 0.1):
        self.colours = list(palette)
        self.shapes = list(templates)
        self.ref = np.asarray([*palette.values(), background], dtype=np.float32)  # (C+1, 3)
        self.templates = np.stack([templates[s] for s in self.shapes]).reshape(len(self.shapes), -1)
        self.resolution = resolution
        self.colour_threshold = colour_threshold
        self.min_area = min_area if min_area is not None else max(4, round(0.01 * resolution ** 2))
        self.max_template_dist = max_template_dist
        self.max_aspect = max_aspect
        self.max_side = max_side_frac * resolution
        self.relation_margin = relation_margin_frac * resolution

    # ------------------------------------------------------------------ segmentation
    def segment(self, images: np.ndarray) -> np.ndarray:
        """``(B, H, W)`` int64: 0 background, ``k + 1`` palette colour ``k``. ``images`` is (B, H, W, 3)."""
        d2 = ((images[..., None, :] - self.ref) ** 2).sum(-1)  # (B, H, W, C+1)
        nearest = d2.argmin(-1)
        dmin = np.take_along_axis(d2, nearest[..., None], -1)[..., 0]
        fg = (nearest < len(self.colours)) & (dmin < self.colour_threshold ** 2)
        return np.where(fg, nearest + 1, 0)

    @staticmethod
    def label(cls: np.ndarray) -> np.ndarray:
        """Connected components (4-connectivity) of equal nonzero values of ``cls`` (B, H, W).

        Returns ``(B, H, W)`` int64 labels: each component's smallest flat pixel index + 1, and
        ``B*H*W + 1`` on background. Labels never cross images (the batch index is in the flat index).
        """
        fg = cls > 0
        big = cls.size + 1
        lab = np.where(fg, np.arange(1, cls.size + 1).reshape(cls.shape), big)
        link_x = fg[:, :, 1:] & (cls[:, :, 1:] == cls[:, :, :-1])  # (y, x) ~ (y, x+1)
        link_y = fg[:, 1:, :] & (cls[:, 1:, :] == cls[:, :-1, :])  # (y, x) ~ (y+1, x)
        fg_flat = np.flatnonzero(fg)
        while True:
            new = lab.copy()
            np.minimum(new[:, :, :-1], np.where(link_x, lab[:, :, 1:], big), out=new[:, :, :-1])
            np.minimum(new[:, :, 1:], np.where(link_x, lab[:, :, :-1], big), out=new[:, :, 1:])
            np.minimum(new[:, :-1, :], np.where(link_y, lab[:, 1:, :], big), out=new[:, :-1, :])
            np.minimum(new[:, 1:, :], np.where(link_y, lab[:, :-1, :], big), out=new[:, 1:, :])
            flat = new.reshape(-1)
            for _ in range(2):  # pointer jumping: a label is a pixel of the same component
                flat[fg_flat] = flat[flat[fg_flat] - 1]
            if np.array_equal(new, lab):
                return lab
            lab = new

    # ------------------------------------------------------------------ detection
    def detect(self, images: Tensor | np.ndarray) -> Detections:
        """Segment, label, measure and classify every component of a batch."""
        x = images.detach().to("cpu", torch.float32).numpy() if isinstance(images, torch.Tensor) else images
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(x.shape)}")
        x = np.clip(x, 0.0, 1.0).transpose(0, 2, 3, 1)
        b_, h_, w_ = x.shape[:3]
        cls = self.segment(x)
        lab = self.label(cls).reshape(-1)
        pix = np.flatnonzero(cls.reshape(-1))
        roots, inv = np.unique(lab[pix], return_inverse=True)
        area = np.bincount(inv, minlength=len(roots))
        keep = area >= self.min_area
        sel = keep[inv]
        pix, roots, area = pix[sel], roots[keep], area[keep]
        inv = (np.cumsum(keep) - 1)[inv[sel]]  # renumber kept components 0..n-1
        n = len(roots)
        y, xx = (pix // w_) % h_, pix % w_
        pixels = np.full(b_ * h_ * w_, -1, np.int64)
        pixels[pix] = inv
        pixels = pixels.reshape(b_, h_, w_)
        if n == 0:
            e = np.zeros(0, np.int64)
            return Detections(e, e, e, e, e.astype(float), e.astype(float), np.zeros((0, 4), np.int64),
                              e.astype(float), pixels)
        order = np.argsort(inv, kind="stable")
        starts = np.concatenate([[0], np.cumsum(area)[:-1]])
        x0 = np.minimum.reduceat(xx[order], starts)
        x1 = np.maximum.reduceat(xx[order], starts)
        y0 = np.minimum.reduceat(y[order], starts)
        y1 = np.maximum.reduceat(y[order], starts)
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        cx = np.bincount(inv, weights=xx + 0.5, minlength=n) / area
        cy = np.bincount(inv, weights=y + 0.5, minlength=n) / area
        # occupancy grid of each component's bounding box
        k = GRID
        cell = _bins(y - y0[inv], bh[inv], k) * k + _bins(xx - x0[inv], bw[inv], k)
        num = np.bincount(inv * k * k + cell, minlength=n * k * k).reshape(n, k * k)
        side = np.arange(max(h_, w_) + 1)
        per_bin = np.stack([np.bincount(_bins(np.arange(s), max(s, 1), k), minlength=k) if s else
                            np.zeros(k, np.int64) for s in side])  # (side, k) pixels per cell row/col
        den = (per_bin[bh][:, :, None] * per_bin[bw][:, None, :]).reshape(n, k * k)
        occ = num / np.maximum(den, 1)
        dists = np.abs(occ[:, None, :] - self.templates[None]).mean(-1)  # (n, shapes)
        shape = dists.argmin(-1)
        dist = dists.min(-1)
        aspect = np.maximum(bw, bh) / np.minimum(bw, bh)
        unknown = ((dist > self.max_template_dist) | (aspect > self.max_aspect)
                   | (np.maximum(bw, bh) > self.max_side) | (np.minimum(bw, bh) < k))
        shape = np.where(unknown, -1, shape)
        colour = cls.reshape(-1)[roots - 1] - 1
        return Detections((roots - 1) // (h_ * w_), colour, shape, area, cx, cy,
                          np.stack([x0, y0, x1, y1], 1), dist, pixels)

    # ------------------------------------------------------------------ rules
    def check(self, images: Tensor | np.ndarray, metas: Sequence[Any]) -> ShapesCheckResult:
        """Detect and judge; ``metas[i]`` describes ``images[i]``."""
        if len(metas) != len(images):
            raise ValueError(f"{len(images)} images but {len(metas)} prompt metas")
        return self.judge(self.detect(images), metas)

    def judge(self, det: Detections, metas: Sequence[Any]) -> ShapesCheckResult:
        b_ = len(metas)
        ns, nc = len(self.shapes), len(self.colours)
        known = det.shape >= 0
        counts = np.zeros((b_, ns, nc), np.int64)  # counts[b, shape, colour]
        np.add.at(counts, (det.image[known], det.shape[known], det.colour[known]), 1)
        bounds = np.searchsorted(det.image, np.arange(b_ + 1))
        passed, scores, details, extra = [], [], [], []
        for i, meta in enumerate(metas):
            lo, hi = bounds[i], bounds[i + 1]
            dets = [self._det_dict(det, j) for j in range(lo, hi)]
            objs = [self._judge_object(o, counts[i], dets) for o in meta.objects]
            facts = [(o["ok"], o["score"]) for o in objs]
            rel = None
            if meta.relation is not None:
                rel = self._judge_relation(meta.relation, objs[0], objs[1])
                facts.append((rel["ok"], float(rel["ok"])))
            passed.append(all(ok for ok, _ in facts))
            scores.append(sum(s for _, s in facts) / len(facts))
            details.append({"category": meta.category, "objects": objs, "relation": rel,
                            "detections": dets})
            extra.append(max(0, len(dets) - sum(o.count for o in meta.objects)))
        passed_t, extra_t = torch.tensor(passed, dtype=torch.bool), torch.tensor(extra, dtype=torch.int64)
        values = {"extra_objects": extra_t > 0, "strict_accuracy": passed_t & (extra_t == 0)}
        return ShapesCheckResult(passed_t, torch.tensor(scores, dtype=torch.float32), details, values, extra=extra_t)

    def credit_map(self, det: Detections, result: CheckResult) -> Tensor:
        """``(B, H, W)`` float32 per-pixel credit in [0, 1] (dense reward, HALO / PatchDPO style).

        A pixel of a detected component that matches a prompt object (its shape, and its colour when
        the prompt names one) takes that object's fact score, averaged with the relation's verdict
        for ``position`` prompts; a pixel of any other component (unknown shape, wrong shape or
        colour) takes 0 — the defect; background pixels take the sample's partial score (no local
        evidence either way). So a map's deviation from the score marks where the sample is right
        or wrong.
        """
        if det.pixels is None:
            raise ValueError("credit_map needs detections from detect() (with the pixel map)")
        b_ = det.pixels.shape[0]
        credit = np.zeros(len(det.image), np.float32)  # per component; unmatched stay 0
        for i in range(b_):
            info = result.details[i]
            rel = info["relation"]
            lo = int(np.searchsorted(det.image, i))
            for k, d in enumerate(info["detections"]):
                for obj in info["objects"]:
                    if d["shape"] == obj["shape"] and obj["colour"] in (None, d["colour"]):
                        c = obj["score"] if rel is None else 0.5 * (obj["score"] + float(rel["ok"]))
                        credit[lo + k] = max(credit[lo + k], c)
        scores = result.score.numpy()[:, None, None]
        if not len(credit):  # no component in the whole batch (e.g. blank images): background everywhere
            return torch.from_numpy(np.broadcast_to(scores, det.pixels.shape).astype(np.float32))
        out = np.where(det.pixels >= 0, credit[np.maximum(det.pixels, 0)], scores)
        return torch.from_numpy(out.astype(np.float32))

    def _det_dict(self, det: Detections, j: int) -> dict[str, Any]:
        s = int(det.shape[j])
        return {"shape": self.shapes[s] if s >= 0 else None, "colour": self.colours[det.colour[j]],
                "area": int(det.area[j]), "centroid": (float(det.cx[j]), float(det.cy[j])),
                "box": tuple(int(v) for v in det.box[j])}

    def _judge_object(self, obj: Any, counts: np.ndarray, dets: list[dict]) -> dict[str, Any]:
        """One object fact. ``counts``: (shapes, colours) of this image."""
        s = self.shapes.index(obj.shape)
        n_shape = int(counts[s].sum())
        if obj.colour is None:
            found, colour_frac = n_shape, 1.0
        else:
            found = int(counts[s, self.colours.index(obj.colour)])
            colour_frac = found / max(n_shape, obj.count)
        if obj.count == 1:  # "a X": at least one (GenEval's include count 1)
            ok = found >= 1
            score = float(n_shape >= 1) if obj.colour is None else 0.5 * (n_shape >= 1) + 0.5 * (found >= 1)
        else:  # counting: exactly N of the shape, all of the colour
            ok = n_shape == obj.count and found == obj.count
            score = 0.5 * (1.0 - min(1.0, abs(n_shape - obj.count) / obj.count)) + 0.5 * colour_frac
        matches = [d for d in dets if d["shape"] == obj.shape and obj.colour in (None, d["colour"])]
        best = max(matches, key=lambda d: d["area"], default=None)
        return {"shape": obj.shape, "colour": obj.colour, "count": obj.count, "found": found,
                "shape_found": n_shape, "ok": bool(ok), "score": float(score),
                "centroid": None if best is None else best["centroid"]}

    def _judge_relation(self, relation: str, a: dict, b: dict) -> dict[str, Any]:
        """``a relation b`` between the largest matches' centroids: along the named axis by more
        than the margin, and that axis dominates (|along| > |across|)."""
        if a["centroid"] is None or b["centroid"] is None:
            return {"name": relation, "ok": False, "dx": None, "dy": None}
        dx = b["centroid"][0] - a["centroid"][0]  # > 0: a is left of b
        dy = b["centroid"][1] - a["centroid"][1]  # > 0: a is above b (rows grow downwards)
        along, across = {"left_of": (dx, dy), "right_of": (-dx, dy),
                         "above": (dy, dx), "below": (-dy, dx)}[relation]
        ok = along > self.relation_margin and abs(along) > abs(across)
        return {"name": relation, "ok": bool(ok), "dx": dx, "dy": dy}
