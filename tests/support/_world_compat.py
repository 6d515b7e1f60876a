"""Stand-ins for ``vgrl.worlds.base`` (``World``, ``Prompt``, ``CheckResult``) on a tree that predates the World
contract (issue 21, item 1), so the test-only worlds import and check on both sides of that merge.

Delete this file, and the ``except ModuleNotFoundError`` branches that import it, once ``vgrl.worlds.base`` exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor


@dataclass(frozen=True)
class Prompt:
    text: str
    meta: Any


@dataclass
class CheckResult:
    passed: Tensor
    score: Tensor
    details: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, Tensor] = field(default_factory=dict)
    dense: Tensor | None = None
    extra: Tensor | None = None  # read by today's evaluator (shapes' "extra objects"); this world has none

    def __len__(self) -> int:
        return self.passed.shape[0]


class World:
    name: ClassVar[str]
    layout: ClassVar[str] = "image"
    fields: ClassVar[dict] = {}
