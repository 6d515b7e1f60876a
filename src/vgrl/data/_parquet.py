"""Parquet preference indexes (``pairs.parquet``): rows read as plain Python values for the shared
validation of :mod:`vgrl.data.preferences`. pyarrow is imported only when a parquet file is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def is_parquet(index: Path) -> bool:
    """A parquet index: by its suffix, or by the ``PAR1`` magic bytes every parquet file starts with."""
    with index.open("rb") as f:
        return index.suffix.lower() == ".parquet" or f.read(4) == b"PAR1"


def read_parquet(index: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(row number from 1, row)`` of a parquet index, each row of plain Python values (struct and map
    cells -> dicts, lists -> lists) without its null cells (a null is an absent field). A column JSON cannot
    hold is refused, since a dataset is saved as jsonl; pandas' unnamed ``__index_level_N__`` is dropped."""
    from vgrl.data.preferences import PreferenceDataError  # the module that imports this one

    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{index}: reading a parquet preference index needs pyarrow: pip install pyarrow "
                          "(or pip install 'vgrl[parquet]'), or convert the index to pairs.jsonl") from None
    try:
        table = pq.read_table(index, use_threads=False)
    except Exception as e:  # ArrowInvalid, OSError, ... for a corrupt or truncated file  # noqa: BLE001
        raise PreferenceDataError(index, [f"not a readable parquet file ({type(e).__name__}: {e})"]) from None
    names = table.column_names
    problems = [f"column {c!r} appears {names.count(c)} times" for c in sorted(set(names)) if names.count(c) > 1]
    fields = [f for f in table.schema if not (f.name.startswith("__index_level_") and f.name.endswith("__"))]
    problems += [f"column {f.name!r} has type {f.type}, which JSON cannot hold (vgrl saves datasets as jsonl); "
                 "store it as a string or a number" for f in fields if not _json_type(f.type)]
    if problems:
        raise PreferenceDataError(index, problems)
    rows = []
    for n, row in enumerate(table.select([f.name for f in fields]).to_pylist(), start=1):
        plain = {}
        for f in fields:
            try:
                plain[f.name] = _plain(row[f.name], f.type)
            except ValueError as e:
                problems.append(f"row {n}: column {f.name!r}: {e}")
        rows.append((n, {k: v for k, v in plain.items() if v is not None}))
    if problems:
        raise PreferenceDataError(index, problems)
    return rows


_LISTS = ("list", "large_list", "fixed_size_list", "list_view", "large_list_view")
_STRINGS = ("string", "large_string", "string_view")


def _is(t, *kinds: str) -> bool:
    """Whether arrow type ``t`` is one of ``kinds`` (``pyarrow.types.is_<kind>``; False where pyarrow lacks it)."""
    import pyarrow.types as pat

    return any(getattr(pat, "is_" + k, lambda _: False)(t) for k in kinds)


def _json_type(t) -> bool:
    """Whether every value of arrow type ``t`` converts to JSON (maps only with string keys)."""
    if _is(t, *_STRINGS, "null", "boolean", "integer", "float32", "float64"):
        return True
    if _is(t, "dictionary"):
        return _json_type(t.value_type)
    if _is(t, "map"):
        return _is(t.key_type, *_STRINGS) and _json_type(t.item_type)
    if _is(t, "struct"):
        return all(_json_type(t.field(i).type) for i in range(t.num_fields))
    return _is(t, *_LISTS) and _json_type(t.value_type)


def _plain(value: Any, t) -> Any:
    """A ``to_pylist`` value of arrow type ``t`` with every map (a list of key-value pairs) made a dict."""
    if value is None:
        return None
    if _is(t, "dictionary"):
        return _plain(value, t.value_type)
    if _is(t, "map"):
        out = {}
        for k, v in value:
            if k in out:
                raise ValueError(f"map key {k!r} appears twice")
            out[k] = _plain(v, t.item_type)
        return out
    if _is(t, "struct"):
        return {t.field(i).name: _plain(value[t.field(i).name], t.field(i).type) for i in range(t.num_fields)}
    if _is(t, *_LISTS):
        return [_plain(v, t.value_type) for v in value]
    return value
