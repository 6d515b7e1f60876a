"""``report.html``: one self-contained page of a run folder (inline SVG plots, PNG grids as base64).

Reads ``metrics.jsonl`` (rows ``train``, ``eval``, ``skip`` as the trainer logs them), ``summary.json``
when the run finished, and ``grids/*.png``. Every missing piece is named on the page instead of failing,
so the report of a run that crashed after a few rows still opens. Imports no torch.
"""

from __future__ import annotations

import base64
import json
import math
import re
from html import escape
from pathlib import Path

from vgrl.media import svg_line_plot

# Train-row fields plotted in their own sections (the rest of the numeric fields get a small plot each).
_TRAIN_MAIN = ("iteration", "images", "wall_seconds", "reward_mean", "reward_std", "loss", "grad_norm", "skipped")
_SUMMARY_MAIN = ("heldout_accuracy_before", "heldout_accuracy_after", "images_generated", "wall_seconds",
                 "eval_seconds", "iterations", "config")

_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.missing{color:#a33}.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0}img{image-rendering:pixelated;max-width:100%}pre{background:#f6f6f6;padding:8px}
.captions{font-size:12px;columns:2;max-width:560px}.pass{color:#286}.fail{color:#b22}"""


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``, in file order.

    A last line without its newline that does not parse (a write cut by a crash) is dropped; any other
    line that does not parse raises ``ValueError`` naming the file and line.
    """
    text = Path(path).read_text()
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):  # no newline after it: torn by a crash mid-write
                break
            raise ValueError(f"{path}:{i}: not a JSON row ({e.msg})") from None
    return rows


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` and return its path; ``FileNotFoundError`` without ``metrics.jsonl``."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} not found: not a vgrl run folder, or the run logged nothing yet")
    rows = read_metrics(metrics)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    skips = [r for r in rows if r.get("kind") == "skip"]

    missing = [text for absent, text in [
        (summary is None, "summary.json: the run did not finish (or is still running); numbers come from "
                          "metrics.jsonl"),
        (not train, "training rows in metrics.jsonl"),
        (not evals, "held-out evaluation rows in metrics.jsonl"),
        (not (run_dir / "grids").is_dir(), "grids/: no image grids were saved"),
    ] if absent]
    name = escape(run_dir.resolve().name)
    body = [f"<h1>vgrl run: {name}</h1>",
            f"<p>{len(rows)} rows in metrics.jsonl ({len(train)} train, {len(evals)} eval, {len(skips)} skip)</p>"]
    if missing:
        body.append("<h2>Missing</h2><ul class='missing'>" + "".join(f"<li>{escape(m)}</li>" for m in missing)
                    + "</ul>")
    body += [_summary_section(summary, train, evals), _eval_section(evals), _monitor_section(evals),
             _training_section(train),
             _skip_section(skips, train), _grid_section(run_dir / "grids")]
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>vgrl run {name}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _points(rows: list[dict], get) -> list[tuple[float, float]]:
    """``(images, get(row))`` for the rows where both are finite numbers."""
    return [(r["images"], get(r)) for r in rows if _number(r.get("images")) and _number(get(r))]


def _plot(series: dict[str, list[tuple[float, float]]], what: str, **kw) -> str:
    """``svg_line_plot`` of the non-empty series, or a line saying there is nothing to plot."""
    series = {name: pts for name, pts in series.items() if pts}
    if not series:
        return f"<p class='missing'>no {escape(what)} logged</p>"
    return svg_line_plot(series, xlabel="images generated", **kw)


_BY_CATEGORY = "reward_by_category/"
_WINDOW = 10


def _running_mean(points: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """Each point's y replaced by the mean of the last ``window`` values up to it (a category is drawn in only
    some iterations, so its raw per-iteration values are few and noisy)."""
    ys = [y for _, y in points]
    out = []
    for i, (x, _) in enumerate(points):
        last = ys[max(0, i - window + 1):i + 1]
        out.append((x, sum(last) / len(last)))
    return out


def _human(key: str) -> str:
    """A summary key as words: ``heldout_strict_accuracy_after`` -> ``held-out strict accuracy after``."""
    return key.replace("heldout", "held-out").replace("_", " ")


def _value(v) -> str:
    """Numbers to 4 significant digits; everything else as written."""
    return f"{v:.4g}" if _number(v) and isinstance(v, float) else "n/a" if v is None else str(v)


def _percent(x) -> str:
    return f"{100 * x:.1f}%" if _number(x) else "n/a"


def _table(pairs: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in pairs) + "</table>"


def _summary_section(summary: dict | None, train: list[dict], evals: list[dict]) -> str:
    """Before -> after held-out accuracy, gain in points, images and minutes (from the last rows without a summary)."""
    if summary is None:
        last = (train or evals or [{}])[-1]
        first_eval, last_eval = (evals[0], evals[-1]) if evals else ({}, {})
        accuracy = f"{_percent(first_eval.get('overall_accuracy'))} -> {_percent(last_eval.get('overall_accuracy'))}"
        wall = last.get("wall_seconds")
        pairs = [("held-out accuracy, first -> latest eval", accuracy),
                 ("last iteration logged", str(last.get("iteration", "n/a"))),
                 ("images generated", str(last.get("images", "n/a"))),
                 ("training minutes", f"{wall / 60:.1f}" if _number(wall) else "n/a")]
        return "<h2>Summary (no summary.json: from metrics.jsonl)</h2>" + _table(pairs)
    before, after = summary.get("heldout_accuracy_before"), summary.get("heldout_accuracy_after")
    gain = f"{100 * (after - before):+.1f} points" if _number(before) and _number(after) else "n/a"
    minutes = lambda key: f"{summary[key] / 60:.1f}" if _number(summary.get(key)) else "n/a"  # noqa: E731
    pairs = [("held-out accuracy, before -> after", f"{_percent(before)} -> {_percent(after)}"), ("gain", gain),
             ("images generated", str(summary.get("images_generated", "n/a"))),
             ("iterations", str(summary.get("iterations", "n/a"))),
             ("training minutes", minutes("wall_seconds")), ("eval minutes", minutes("eval_seconds"))]
    pairs += [(_human(k), _value(v)) for k, v in summary.items()
              if k not in _SUMMARY_MAIN and not isinstance(v, (dict, list))]
    config = summary.get("config")
    details = (f"<details><summary>config</summary><pre>{escape(json.dumps(config, indent=2))}</pre></details>"
               if config is not None else "")
    return "<h2>Summary</h2>" + _table(pairs) + details


def _training_section(train: list[dict]) -> str:
    """Reward mean vs images; loss and grad norm of the steps that updated; one small plot per other number."""
    updated = [r for r in train if not r.get("skipped")]
    parts = ["<h2>Training</h2>", _plot({"reward mean": _points(train, lambda r: r.get("reward_mean"))},
                                        "training reward", title="training reward (batch mean)", ylabel="reward"),
             "<div class='row'>",
             _plot({"loss": _points(updated, lambda r: r.get("loss"))}, "loss", title="loss", ylabel="loss",
                   width=420, height=260),
             _plot({"grad norm": _points(updated, lambda r: r.get("grad_norm"))}, "grad norm",
                   title="grad norm (before clipping)", ylabel="norm", width=420, height=260),
             "</div>"]
    keys = list(dict.fromkeys(k for r in train for k in r))
    by_category = [k for k in keys if k.startswith(_BY_CATEGORY)]
    if by_category:
        parts.append(_plot({k[len(_BY_CATEGORY):]: _running_mean(_points(train, lambda r, k=k: r.get(k)), _WINDOW)
                            for k in by_category}, "training reward per category",
                           title=f"training reward per prompt category (mean of its last {_WINDOW} logged values)",
                           ylabel="reward"))
    others = [k for k in keys if k not in _TRAIN_MAIN and k != "kind" and k not in by_category
              and any(_number(r.get(k)) for r in train)]
    if others:
        parts.append("<h3>Other training metrics</h3><div class='row'>")
        parts += [_plot({key: _points(updated, lambda r, key=key: r.get(key))}, key, title=key, width=360, height=220)
                  for key in others]
        parts.append("</div>")
    return "\n".join(parts)


def _eval_section(evals: list[dict]) -> str:
    """Held-out accuracy, overall and per category, vs images generated."""
    categories = list(dict.fromkeys(c for r in evals for c in r.get("accuracy", {})))
    series = {"overall": _points(evals, lambda r: r.get("overall_accuracy"))}
    for c in categories:
        series[c] = _points(evals, lambda r, c=c: r.get("accuracy", {}).get(c))
    return "<h2>Held-out evaluation</h2>\n" + _plot(series, "held-out evaluation", title="held-out accuracy",
                                                     ylabel="accuracy")


def _monitor_section(evals: list[dict]) -> str:
    """The reward-hacking monitor (eval.monitor): proxy vs gold, diversity, feature drift, and warnings."""
    if not any("frechet" in r for r in evals):
        return ""
    warned = [r for r in evals if r.get("hacking_warning")]
    note = (f"<p class='missing'><b>Possible reward hacking</b> at iteration(s) "
            f"{', '.join(str(r.get('iteration')) for r in warned)}: the training reward rose while held-out "
            "accuracy fell at each of the last evaluations.</p>" if warned else
            "<p>No hacking warning: the training reward never rose while held-out accuracy fell for the "
            "monitor's patience of consecutive evaluations.</p>")
    return ("<h2>Reward-hacking monitor</h2>\n" + note
            + _plot({"proxy (training reward)": _points(evals, lambda r: r.get("proxy_reward")),
                     "gold (held-out accuracy)": _points(evals, lambda r: r.get("gold"))},
                    "monitor rows", title="proxy reward vs gold metric", ylabel="value")
            + _plot({"intra-prompt diversity": _points(evals, lambda r: r.get("diversity"))},
                    "diversity rows", title="intra-prompt diversity (EfficientNet cosine distance)",
                    ylabel="diversity")
            + _plot({"Frechet distance to the base samples": _points(evals, lambda r: r.get("frechet"))},
                    "drift rows", title="feature drift from the base model", ylabel="Frechet distance"))


def _skip_section(skips: list[dict], train: list[dict]) -> str:
    """A table of the skipped steps (iteration, reason, prompts), when there are any."""
    if not skips:
        return ""
    rows = "".join(f"<tr><td>{r.get('iteration')}</td><td>{escape(str(r.get('reason', '')))}</td>"
                   f"<td>{escape(', '.join(map(str, r.get('prompt_ids', []))))}</td></tr>" for r in skips)
    return (f"<h2>Skipped steps</h2><p>{len(skips)} skipped of {len(train)} training rows logged</p>"
            f"<table><tr><th>iteration</th><th>reason</th><th>prompt ids</th></tr>{rows}</table>")


def _figure(path: Path, caption: str) -> str:
    """``path`` inline (base64); a video's grid, when ``path.gif`` is beside the PNG, as its animated GIF."""
    gif = path.with_suffix(".gif")
    shown, mime = (gif, "gif") if gif.is_file() else (path, "png")
    data = base64.b64encode(shown.read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/{mime};base64,{data}' alt='{escape(shown.name)}'>"
            f"<figcaption>{escape(caption)}{_captions(path.with_suffix('.json'))}</figcaption></figure>")


def _captions(path: Path) -> str:
    """The prompts of a captioned grid (``{name}.json`` beside it), row by row, each with its verdict."""
    if not path.is_file():
        return ""
    try:
        rows = json.loads(path.read_text())
        items = "".join(f"<li class='{'pass' if r['passed'] else 'fail'}'>{'&#10003;' if r['passed'] else '&#10007;'} "
                        f"{escape(str(r['prompt']))}</li>" for r in rows)
    except (ValueError, KeyError, TypeError) as e:
        return f"<p class='missing'>{escape(path.name)}: unreadable captions ({escape(str(e))})</p>"
    passed = sum(bool(r["passed"]) for r in rows)
    return (f"<details><summary>{passed} of {len(rows)} passed (green frame: passed, red: failed); prompts row by "
            f"row</summary><ol class='captions'>{items}</ol></details>")


def _grid_section(grids: Path) -> str:
    """``eval_before.png`` and ``eval_after.png`` side by side, then the latest ``train_*.png`` (each grid shown as
    its animated ``.gif`` where the run wrote one: video samples)."""
    parts = ["<h2>Samples</h2><div class='row'>"]
    for name, caption in (("eval_before", "held-out samples before training"),
                          ("eval_after", "held-out samples after training")):
        path = grids / f"{name}.png"
        parts.append(_figure(path, caption) if path.is_file() else f"<p class='missing'>no grids/{name}.png</p>")
    parts.append("</div>")
    # "latest" by the last number in the name (train_9 < train_10), not by string order
    train = sorted(grids.glob("train_*.png"), key=lambda p: (int((re.findall(r"\d+", p.stem) or ["-1"])[-1]), p.name))
    parts.append(_figure(train[-1], f"latest training samples ({train[-1].name})") if train
                 else "<p class='missing'>no grids/train_*.png</p>")
    return "\n".join(parts)
