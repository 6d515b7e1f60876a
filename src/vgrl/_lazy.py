"""Heavy dependencies imported on first use, so a component module imports without them.

A component keeps its options class in its own file (one file per component), and ``vgrl validate`` reads
those options torch-free, in a fraction of a second. So a component module's *top level* must not import
torch: it binds ``torch = lazy("torch")`` (and ``F = lazy("torch.nn.functional")``, ...) instead of
``import torch``, names tensor types for annotations only (``if TYPE_CHECKING: from torch import Tensor``;
every module has ``from __future__ import annotations``) and touches torch only inside functions. The
first attribute read (``torch.zeros``) imports the real module; from then on reads are plain attribute
reads of the real module's names (copied once), so the maths and its speed do not change.

A lazy module is local to the module that binds it: ``sys.modules`` is untouched until the real import,
so ``"torch" not in sys.modules`` stays a truthful test of "torch was not imported".
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable
from typing import Any


class LazyModule(types.ModuleType):
    """Stands for module ``name`` and imports it when one of its attributes is first read."""

    def __getattr__(self, attr: str) -> Any:  # only called for names not yet in this object's __dict__
        module = importlib.import_module(self.__name__)
        self.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self.__name__!r}>"


def lazy(name: str) -> Any:
    """A stand-in for ``import name`` (``import a.b as c`` -> ``c = lazy("a.b")``), imported on first use."""
    return LazyModule(name)


def lazy_function(module: str, name: str) -> Callable[..., Any]:
    """A stand-in for ``from module import name`` of a function, importing ``module`` at the first call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``{module}.{name}``, imported at the first call."
    return call


def no_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``@torch.no_grad()`` for a plain function, importing torch at the first call rather than at definition."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper
