"""Preference datasets on disk: format, reader, validator and writer; saved rollouts and pairs built from them.

Format (docs/preferences.md). A dataset is a directory holding an *index*, ``pairs.jsonl`` or
``pairs.parquet``, and image files. Each line of a jsonl index is one JSON object, one preference pair::

    {"id": "p0001", "prompt": "a red circle", "chosen": "images/p0001_a.png", "rejected": "images/p0001_b.png",
     "metadata": {...}, "chosen_score": 0.9, "rejected_score": 0.2}

``prompt``, ``chosen`` and ``rejected`` are required; ``chosen`` is the preferred image. Image paths are
relative to the index's directory (no absolute paths, no ``..``), any format Pillow reads. ``id``
(unique), ``metadata`` (any JSON) and the finite numbers ``chosen_score`` / ``rejected_score`` are
optional; any other key is kept as is, so reading and writing a dataset loses nothing.

Clips and view sets (``"layout": "video"`` or ``"multiview"``; absent means ``"image"``): ``chosen`` and
``rejected`` are then lists of image paths, a clip's frames (a view set's views) in order, written as
numbered PNGs (``clips/p0001_a/000.png``, ...); both sides hold the same number. A dataset holds one
layout and one frame (view) count.

A parquet index (read with pyarrow, the ``parquet`` extra, imported only then) has the same fields as
columns, one row per pair: struct, map and list cells become plain dicts and lists, a null cell is an
absent field, and a column of a type JSON cannot hold (timestamps, bytes, decimals) is refused. Rows go
through exactly the jsonl validation and are named ``row N`` (counted from 1). Writing is always jsonl
(:meth:`PreferenceDataset.save`, :func:`write_index`): a saved parquet dataset becomes ``pairs.jsonl``
with the same records. A directory holding both index files is an error (pass the file you mean).

Validation collects every bad record and raises one :class:`PreferenceDataError` naming each by line
(row) number and id: invalid JSON or fields, an empty prompt, a missing or unreadable (corrupt) image,
chosen and rejected images of different sizes, the same file as chosen and rejected, a repeated id, and
a duplicate pair (same prompt and the same chosen and rejected image *contents* as an earlier record).

Saved rollouts (``log.save_rollouts: true``): ``RUN/rollouts/iter_XXXXX/index.jsonl`` with one line per
sample (``image``, ``prompt``, ``metadata``, ``reward``, ``group``, ``prompt_id``, ``seed``) and the
decoded images as PNG; a video or view set has ``layout`` and ``frames`` (its numbered PNGs) instead of
``image``. :func:`pairs_from_run` (``vgrl pairs``) pairs the best and the worst sample of
each group whose reward margin is at least ``margin`` (and positive).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from vgrl.data._files import check_files, sample_errors, write_frames
from vgrl.data._parquet import is_parquet, read_parquet

INDEX = "pairs.jsonl"
PARQUET_INDEX = "pairs.parquet"
ROLLOUT_INDEX = "index.jsonl"
REQUIRED = ("prompt", "chosen", "rejected")
SHOWN = 20  # problems listed in one error message


class PreferenceDataError(ValueError):
    """Bad records of a preference dataset; ``problems`` are ``"line N (id 'x'): what"`` strings
    (``"row N ..."`` for a parquet index)."""

    def __init__(self, index: Path, problems: list[str]) -> None:
        self.index, self.problems = index, problems
        more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        super().__init__(f"{index}: {len(problems)} bad record(s):\n  " + "\n  ".join(problems[:SHOWN]) + more)


@dataclass
class PreferenceRecord:
    """One pair. ``raw`` is the index line's object exactly as read (what :func:`write_index` writes);
    ``line`` is its line number (jsonl) or row number (parquet, ``unit == "row"``), from 1."""

    line: int
    raw: dict[str, Any]
    unit: str = field(default="line", compare=False)

    @property
    def id(self) -> str:
        return str(self.raw.get("id", f"{self.unit}{self.line}"))

    @property
    def prompt(self) -> str:
        return self.raw["prompt"]

    @property
    def chosen(self) -> str | list[str]:
        return self.raw["chosen"]

    @property
    def rejected(self) -> str | list[str]:
        return self.raw["rejected"]

    @property
    def layout(self) -> str:
        """``image`` (one file per side) unless the record says ``video`` / ``multiview`` (a list per side)."""
        return self.raw.get("layout", "image")

    def files(self, key: str) -> list[str]:
        """The image files of side ``key`` (``chosen`` or ``rejected``), frames (views) in order."""
        value = self.raw[key]
        return [value] if isinstance(value, str) else list(value)

    @property
    def metadata(self) -> Any:
        return self.raw.get("metadata")

    @property
    def margin(self) -> float:
        """``chosen_score - rejected_score``, or NaN without both scores."""
        a, b = self.raw.get("chosen_score"), self.raw.get("rejected_score")
        return math.nan if a is None or b is None else float(a) - float(b)

    def name(self) -> str:
        return f"{self.unit} {self.line}" + (f" (id {self.raw['id']!r})" if "id" in self.raw else "")


@dataclass
class PreferenceDataset:
    """A validated dataset: its index, records and the common image size ``(width, height)`` of each pair
    (every frame / view of a clip has it)."""

    index: Path
    records: list[PreferenceRecord]
    sizes: list[tuple[int, int]]
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def root(self) -> Path:
        return self.index.parent

    def __len__(self) -> int:
        return len(self.records)

    @property
    def layout(self) -> str:
        """The samples' layout (:mod:`vgrl.layouts`), one per dataset."""
        return self.records[0].layout

    @classmethod
    def load(cls, path: str | Path) -> PreferenceDataset:
        """Read and validate ``path``: an index file (jsonl, or parquet by its ``.parquet`` suffix or
        content) or a directory holding ``pairs.jsonl`` or ``pairs.parquet``."""
        index = _index_path(path)
        if is_parquet(index):
            unit, entries = "row", read_parquet(index)
        else:
            lines = enumerate(index.read_text(encoding="utf-8").splitlines(), start=1)
            unit, entries = "line", [(n, text) for n, text in lines if text.strip()]
        problems: list[str] = []
        records, sizes, seen_ids, seen_pairs, first = [], [], {}, {}, None
        for n, entry in entries:
            rec, errors = _parse(n, entry, unit)
            if rec is not None and not errors:
                shape = (rec.layout, len(rec.files("chosen")))
                first = first or (n, shape)
                if shape != first[1]:
                    errors.append(f"{_shape_text(shape)} but {unit} {first[0]} has {_shape_text(first[1])}: a "
                                  "dataset holds one layout and one frame (view) count")
            if rec is not None:
                size, image_errors, key = check_files(index.parent, rec)
                errors += image_errors
                if "id" in rec.raw:
                    if rec.raw["id"] in seen_ids:
                        errors.append(f"id {rec.raw['id']!r} already used on {unit} {seen_ids[rec.raw['id']]}")
                    seen_ids.setdefault(rec.raw["id"], n)
                if key is not None:
                    if key in seen_pairs:
                        errors.append(f"duplicate pair: the same prompt, chosen and rejected images as {unit} "
                                      f"{seen_pairs[key]}")
                    seen_pairs.setdefault(key, n)
            name = rec.name() if rec is not None else f"{unit} {n}"
            problems += [f"{name}: {e}" for e in errors]
            if rec is not None and not errors:
                records.append(rec)
                sizes.append(size)
        if problems:
            raise PreferenceDataError(index, problems)
        if not records:
            raise PreferenceDataError(index, ["no records: the index holds no pair"])
        return cls(index, records, sizes)

    def images(self, idx: list[int]) -> tuple[Any, Any]:
        """Chosen and rejected samples of records ``idx``: two float32 tensors in [0, 1] in the dataset's
        layout, ``(n, 3, H, W)`` for images, ``(n, F, 3, H, W)`` / ``(n, V, 3, H, W)`` for clips / view sets."""
        import torch

        def stack(key: str):
            arrays = [np.stack([self._pixels(f) for f in self.records[i].files(key)]) for i in idx]
            x = torch.from_numpy(np.stack(arrays)).permute(0, 1, 4, 2, 3).to(torch.float32) / 255.0
            return x[:, 0] if self.layout == "image" else x

        return stack("chosen"), stack("rejected")

    def _pixels(self, rel: str) -> np.ndarray:
        if rel not in self._cache:
            with Image.open(self.root / rel) as im:
                self._cache[rel] = np.asarray(im.convert("RGB"), dtype=np.uint8)
        return self._cache[rel]

    def order(self, iteration: int, n: int, seed: int) -> list[int]:
        """Records of training iteration ``iteration`` (``n`` per iteration): epochs of seeded permutations,
        a pure function of ``(iteration, n, seed)`` so a resumed run reads the same pairs."""
        import torch

        out, start = [], iteration * n
        while len(out) < n:
            epoch, pos = divmod(start + len(out), len(self))
            perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            out += perm[pos: pos + n - len(out)].tolist()
        return out

    def save(self, out_dir: str | Path) -> Path:
        """Copy the dataset (records as read, image files byte for byte) to ``out_dir``; returns the index.
        The index is always written as ``pairs.jsonl``, also for a dataset read from parquet."""
        out = Path(out_dir)
        if (out / PARQUET_INDEX).exists():
            raise FileExistsError(f"{out / PARQUET_INDEX} exists: saving writes {INDEX} beside it and the folder "
                                  "would hold two indexes; choose another folder (nothing was written)")
        for rec in self.records:
            for rel in rec.files("chosen") + rec.files("rejected"):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.root / rel, out / rel)
        return write_index(out / INDEX, [r.raw for r in self.records])


def _index_path(path: str | Path) -> Path:
    p = Path(path)
    index = p
    if p.is_dir():
        found = [p / name for name in (INDEX, PARQUET_INDEX) if (p / name).is_file()]
        if len(found) > 1:
            raise ValueError(f"{p} holds both {INDEX} and {PARQUET_INDEX}: which one is the dataset? Pass that "
                             f"index file ({found[0]} or {found[1]}) instead of the folder, or remove the other")
        index = found[0] if found else p / INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{path}: no preference index; expected a {INDEX} or {PARQUET_INDEX} file or a "
                                "directory holding one")
    return index


def _parse(n: int, entry: str | Any, unit: str = "line") -> tuple[PreferenceRecord | None, list[str]]:
    """The record of index line (or parquet row) ``n`` and its field errors (``None`` when the entry is not
    an object). ``entry`` is a jsonl line's text or an already parsed value (a parquet row's dict); both
    go through the same field checks."""
    raw = entry
    if isinstance(entry, str):
        try:
            raw = json.loads(entry)
        except json.JSONDecodeError as e:
            return None, [f"not valid JSON ({e.msg} at column {e.colno})"]
    if not isinstance(raw, dict):
        return None, [f"expected a JSON object, got {type(raw).__name__}"]
    errors = [f"missing required field {k!r}" for k in REQUIRED if k not in raw]
    if "id" in raw and not (isinstance(raw["id"], (str, int)) and not isinstance(raw["id"], bool)):
        errors.append(f"id must be a string or integer, got {raw['id']!r}")
    if "prompt" in raw and (not isinstance(raw["prompt"], str) or not raw["prompt"].strip()):
        errors.append("empty prompt" if isinstance(raw["prompt"], str) else f"prompt must be a string, got "
                      f"{type(raw['prompt']).__name__}")
    errors += sample_errors(raw)
    for key in ("chosen_score", "rejected_score"):
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            errors.append(f"{key} must be a finite number or null, got {v!r}")
    rec = PreferenceRecord(n, raw, unit)
    if not errors:
        chosen, rejected = (tuple(map(PurePosixPath, rec.files(k))) for k in ("chosen", "rejected"))
        if len(chosen) != len(rejected):
            errors.append(f"chosen has {len(chosen)} frames (views) but rejected has {len(rejected)}")
        elif chosen == rejected:
            errors.append(f"chosen and rejected are the same file{'s' if len(chosen) > 1 else ''} {raw['chosen']!r}")
    return rec, errors


def _shape_text(shape: tuple[str, int]) -> str:
    return "layout 'image'" if shape[0] == "image" else f"layout {shape[0]!r} with {shape[1]} frames (views)"


def write_index(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as a jsonl index (one compact JSON object per line, UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- saved rollouts


def jsonable(meta: Any) -> Any:
    """Prompt metadata as JSON: dataclasses (the shapes world's ``PromptMeta``) become dicts."""
    if dataclasses.is_dataclass(meta) and not isinstance(meta, type):
        return dataclasses.asdict(meta)
    return meta


def save_rollouts(out_dir: str | Path, images, prompts: list[str], metadata: list[Any], rewards, group_ids,
                  prompt_ids: list[int], seeds, layout: str = "image") -> Path:
    """Write one iteration's decoded samples in [0, 1] as PNG and its ``index.jsonl``: an image batch
    ``(B, 3, H, W)`` as ``images/0000.png`` ... (field ``image``); a video / view-set batch ``(B, N, 3, H, W)`` as
    ``images/0000/000.png`` ... (fields ``layout`` and ``frames``)."""
    import torch

    from vgrl.layouts import as_frames

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    frames = as_frames(images.detach().float().clamp(0, 1), layout)
    pixels = (frames * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    rows = []
    for i in range(len(prompts)):
        stem = f"images/{i:04d}"
        files = write_frames(out, stem, pixels[i], layout)
        where = {"image": files[0]} if layout == "image" else {"layout": layout, "frames": files}
        rows.append({"sample": i, **where, "prompt": prompts[i], "metadata": jsonable(metadata[i]),
                     "reward": float(rewards[i]), "group": int(group_ids[i]), "prompt_id": int(prompt_ids[i]),
                     "seed": int(seeds[i])})
    return write_index(out / ROLLOUT_INDEX, rows)


def pairs_from_run(run_dir: str | Path, out_dir: str | Path, margin: float = 0.0) -> PreferenceDataset:
    """Build a dataset from ``RUN/rollouts``: per iteration and group, the best sample (chosen) against the
    worst (rejected), kept when ``best - worst > 0`` and ``>= margin`` (ties: the earlier sample)."""
    rollouts = Path(run_dir) / "rollouts"
    iterations = sorted(rollouts.glob("iter_*/" + ROLLOUT_INDEX)) if rollouts.is_dir() else []
    if not iterations:
        raise FileNotFoundError(f"{rollouts}: no saved rollouts; train with log.save_rollouts=true")
    out = Path(out_dir)
    for name in (INDEX, PARQUET_INDEX):
        if (out / name).exists():
            raise FileExistsError(f"{out / name} exists; choose another --out (nothing was overwritten)")
    rows = []
    for index in iterations:
        it = index.parent.name
        samples = [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines() if line.strip()]
        for group in sorted({s["group"] for s in samples}):
            members = [s for s in samples if s["group"] == group]
            best = max(members, key=lambda s: s["reward"])  # max / min keep the first of ties
            worst = min(members, key=lambda s: s["reward"])
            gap = best["reward"] - worst["reward"]
            if not (gap > 0 and gap >= margin):
                continue
            pair, layout = {}, best.get("layout", "image")
            for role, s in (("chosen", best), ("rejected", worst)):
                files = s["frames"] if "frames" in s else [s["image"]]
                rels = [f"images/{it}_{s['sample']:04d}.png"] if "image" in s else [
                    f"images/{it}_{s['sample']:04d}/{k:03d}.png" for k in range(len(files))]
                for src, rel in zip(files, rels):
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(index.parent / src, out / rel)
                pair[role] = rels[0] if "image" in s else rels
            rows.append({"id": f"{it}-group{group:03d}", **({} if layout == "image" else {"layout": layout}),
                         "prompt": best["prompt"], "metadata": best["metadata"],
                         "chosen": pair["chosen"], "rejected": pair["rejected"], "chosen_score": best["reward"],
                         "rejected_score": worst["reward"],
                         "source": {"run": str(run_dir), "iteration": it, "group": group,
                                    "prompt_id": best["prompt_id"], "chosen_seed": best["seed"],
                                    "rejected_seed": worst["seed"]}})
    if not rows:
        raise ValueError(f"{rollouts}: no group has a reward margin > 0 and >= {margin}; lower --margin")
    write_index(out / INDEX, rows)
    return PreferenceDataset.load(out)


def dataset_for_run(cfg, algorithm, world: int) -> PreferenceDataset | None:
    """The validated preference dataset of an offline pairwise run (None otherwise), after checking the
    combination of algorithm, ``data.preferences``, ``log.save_rollouts`` and the number of processes
    ``world``; raises ``ValueError`` with one line naming the field."""
    name = cfg.algorithm.name
    if cfg.log.save_rollouts and world > 1:
        raise ValueError("log.save_rollouts writes the samples of one process; run it with one process")
    needs = algorithm.needs
    if needs.pairs and not needs.dataset and world > 1:
        raise ValueError(f"algorithm {name!r} with mode 'online' pairs the samples of a rollout in one "
                         "process; run it with one process (or mode: offline)")
    if not needs.dataset:
        if cfg.data.preferences is not None:
            raise ValueError(f"data.preferences is read only by a pairwise algorithm with mode: offline "
                                f"(diffusion_dpo, npo); algorithm {name!r} trains on rollouts: remove it or set "
                                "algorithm.mode: offline")
        return None
    if cfg.data.preferences is None:
        raise ValueError(f"algorithm.mode: 'offline' trains {name!r} on a preference dataset: set "
                         "data.preferences to a pairs.jsonl or pairs.parquet index (docs/preferences.md), or use "
                         "mode: online")
    try:
        data = PreferenceDataset.load(cfg.data.preferences)
    except (ValueError, ImportError) as e:  # bad records (PreferenceDataError), two indexes, no pyarrow
        raise ValueError(f"data.preferences: {e}") from None
    side = cfg.backbone.resolution
    wrong = [(r, s) for r, s in zip(data.records, data.sizes) if s != (side, side)]
    if wrong:
        rec, (w, h) = wrong[0]
        raise ValueError(f"data.preferences: {data.index} {rec.name()} has {w}x{h} images but backbone.resolution "
                         f"is {side} ({len(wrong)} of {len(data)} pairs differ); resize the images or set "
                         "backbone.resolution")
    return data
