"""Config files: YAML reading (duplicate keys refused), dotted overrides, validation into one-line
errors that lead with the field path, and an atomic save of the resolved config.

No torch here either: ``vgrl validate`` stays fast.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vgrl.config.schema import _TAG, ConfigError, RunConfig, _describe, _dotted, _short

def _valid_keys(loc: Sequence[Any], root: type[BaseModel] = RunConfig) -> list[str] | None:
    """The keys allowed in the mapping that holds ``loc`` (None when that is not a config model)."""
    model = root
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return [name for name in model.model_fields if name != "opts"]


def error_messages(err: ValidationError) -> list[str]:
    """One line per problem in ``err`` (from validating a :class:`RunConfig`), each led by its path."""
    lines: list[str] = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        if e["type"] == _TAG:
            found = [(loc + tuple(sub), msg) for sub, msg in e["ctx"]["problems"]]
        else:
            found = [(loc, _describe(e, _valid_keys(loc)))]
        for where, msg in found:
            line = f"{_dotted(where) or '<config>'}: {msg}"
            if line not in lines:
                lines.append(line)
    return lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            key = loader.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
# YAML 1.1 (PyYAML) reads ``1e-4`` (no dot) as a string; YAML 1.2 and every user read it as a float.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"], path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot read: {e}"], path) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{where}: invalid YAML: {problem}"], path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys ("
                           f"{', '.join(RunConfig.model_fields)}), got {type(data).__name__}"], path)
    return data


_KEY = re.compile(r"[A-Za-z0-9_]+")
_NAMED = ("kernel", "reward", "algorithm")  # sections whose options belong to the component they name
log = logging.getLogger(__name__)


def _drop_replaced_options(data: dict, overrides: Sequence[str]) -> None:
    """``reward.name=remote`` over a config whose reward is another one: drop that reward's options from ``data``
    (they belong to the component being replaced), saying so on stderr. Options given as overrides stay."""
    for section in _NAMED:
        names = [item.partition("=")[2] for item in overrides if item.partition("=")[0].strip() == f"{section}.name"]
        old = data.get(section)
        if not names or not isinstance(old, dict):
            continue
        try:
            new = yaml.load(names[-1], Loader=_UniqueKeyLoader)
        except yaml.YAMLError:
            continue  # apply_overrides reports it
        before = old.get("name", RunConfig.model_fields[section].default_factory().name)
        dropped = [k for k in old if k != "name"]
        if new != before and dropped:
            data[section] = {}
            log.warning(f"note: {section}.name={new} replaces {before!r}: its options {', '.join(dropped)} "
                        f"are dropped (give {new}'s own as {section}.KEY=VALUE)")


def apply_overrides(data: dict, overrides: Sequence[str], file: str | None = None) -> dict:
    """Set each dotted ``a.b=c`` in ``data`` (in place; values parsed as YAML) and return it.

    An override of ``kernel.name``, ``reward.name`` or ``algorithm.name`` to another component drops the options
    ``data`` gave the one it replaces (a note on stderr names them), so ``reward.name=remote reward.url=...``
    means the remote reward with that url and nothing else, in ``vgrl validate`` and ``vgrl train`` alike."""
    _drop_replaced_options(data, overrides)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(_KEY.fullmatch(p) for p in parts):
            raise ConfigError([f"override {item!r}: expected KEY=VALUE with a dotted KEY, "
                               "e.g. sampling.num_steps=20"], file)
        try:
            value = yaml.load(raw, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as e:
            raise ConfigError([f"{'.'.join(parts)}: override {item!r}: value is not valid YAML "
                               f"({getattr(e, 'problem', None) or e})"], file) from None
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError([f"{where}: override {item!r} goes through {where}, which is "
                                   f"{type(child).__name__} {_short(child)}, not a mapping"], file)
            node = child
        node[parts[-1]] = value
    return data


def validate_config(data: Any, file: str | os.PathLike | None = None) -> RunConfig:
    """A :class:`RunConfig` from plain data, or :class:`ConfigError` with one line per problem."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(error_messages(e), file) from None


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config, apply dotted ``a.b=c`` overrides, validate; raises :class:`ConfigError`."""
    data = _read_yaml(Path(path))
    apply_overrides(data, overrides, str(path))
    return validate_config(data, path)


def dump_config(cfg: RunConfig) -> str:
    """YAML of the fully resolved config (every default filled in); loads back to an equal config."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=False,
                          allow_unicode=True)


def save_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write :func:`dump_config` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dump_config(cfg))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
