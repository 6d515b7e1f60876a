"""The sample files of a preference dataset or saved rollouts: path checks, reading checks, writing.

Private to :mod:`vgrl.data` (the leading underscore). A sample is one image file, or for a video / view set
(:mod:`vgrl.layouts`) a list of image files, its frames (views) in order, written as numbered PNGs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from vgrl.layouts import LAYOUTS


def path_errors(value: Any) -> list[str]:
    if not isinstance(value, str) or not value.strip():
        return [f"expected an image path relative to the index, got {value!r}"]
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts:
        return [f"{value!r} must be relative to the index's directory (no absolute path, no '..')"]
    return []


def sample_errors(raw: dict[str, Any]) -> list[str]:
    """Errors of a record's ``layout`` and its ``chosen`` / ``rejected`` paths (a path, or for a video or view
    set a non-empty list of paths)."""
    layout, errors = raw.get("layout", "image"), []
    if layout not in LAYOUTS:
        return [f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}"]
    for key in ("chosen", "rejected"):
        if key not in raw:
            continue
        value = raw[key]
        if layout == "image":
            errors += [f"{key}: {e}" for e in path_errors(value)]
        elif not isinstance(value, list) or not value:
            errors.append(f"{key}: a {layout} sample is a non-empty list of image paths (its frames or views in "
                          f"order), got {value!r}")
        else:
            errors += [f"{key}[{i}]: {e}" for i, v in enumerate(value) for e in path_errors(v)]
    return errors


def check_files(root: Path, rec: Any) -> tuple[tuple[int, int] | None, list[str], tuple | None]:
    """Open every image of both sides of ``rec`` (a :class:`~vgrl.data.preferences.PreferenceRecord`) fully (a truncated or corrupt file fails); their common size, errors,
    and the duplicate key ``(prompt, sha256 chosen, sha256 rejected)``. Skipped when the paths are invalid."""
    if any(k not in rec.raw for k in ("chosen", "rejected")) or sample_errors(rec.raw):
        return None, [], None
    sizes, digests, errors = {}, {}, []
    for key in ("chosen", "rejected"):
        files, side, failed = rec.files(key), hashlib.sha256(), len(errors)
        for i, rel in enumerate(files):
            name = key if len(files) == 1 and rec.layout == "image" else f"{key}[{i}]"
            path = root / rel
            if not path.is_file():
                errors.append(f"{name} image {rel!r} not found (looked for {path})")
                continue
            data = path.read_bytes()
            try:
                with Image.open(path) as im:
                    im.load()
                    size = im.size
            except Exception as e:  # Pillow raises many types for bad files  # noqa: BLE001
                errors.append(f"{name} image {rel!r} is not a readable image ({type(e).__name__}: {e})")
                continue
            if key in sizes and size != sizes[key]:
                errors.append(f"unequal image sizes: {name} is {size[0]}x{size[1]}, {key}[0] is "
                              f"{sizes[key][0]}x{sizes[key][1]}")
            sizes.setdefault(key, size)
            side.update(hashlib.sha256(data).digest() if len(files) > 1 else data)
        if len(errors) == failed:
            digests[key] = side.hexdigest()
    if len(sizes) == 2 and sizes["chosen"] != sizes["rejected"]:
        (cw, ch), (rw, rh) = sizes["chosen"], sizes["rejected"]
        errors.append(f"unequal image sizes: chosen is {cw}x{ch}, rejected is {rw}x{rh}")
    key = (rec.raw.get("prompt"), digests["chosen"], digests["rejected"]) if len(digests) == 2 else None
    return sizes.get("chosen"), errors, key


def write_frames(out: Path, stem: str, pixels: np.ndarray, layout: str) -> list[str]:
    """Write one sample's ``(N, H, W, 3)`` uint8 frames under ``out``: ``{stem}.png`` for an image (``N = 1``),
    ``{stem}/000.png``, ``{stem}/001.png``, ... otherwise; returns the relative paths, in order."""
    rels = [f"{stem}.png"] if layout == "image" else [f"{stem}/{k:03d}.png" for k in range(len(pixels))]
    for rel, frame in zip(rels, pixels):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(out / rel)
    return rels
