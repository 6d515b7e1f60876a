"""A reward computed by a server: the client of ``vgrl serve-reward`` (:mod:`vgrl.serve`).

The batch goes to ``POST {url}/score`` as JSON (never pickle, so a request can carry data but no code)::

    {"protocol": 2, "layout": "image" | "video" | "multiview", "format": "png" | "safetensors",
     "images": [base64 PNG, ...]          (format png: 8-bit RGB, u = round(255 x); a video / view set:
                                           one list of PNGs per sample, its frames / views in order)
     "tensor": base64 safetensors          (format safetensors: one float32 tensor "images" in the layout,
                                           (B, 3, H, W), (B, F, 3, H, W) or (B, V, 3, H, W))
     "prompts": [str] * B, "metadata": [JSON] * B, "sample_ids": [str] * B}

Protocol 1 is the same body without ``layout``: an image batch. The client sends image batches as
protocol 1 (so it also talks to servers older than protocol 2) and videos / view sets as protocol 2;
the server takes both. The option ``layout`` declares what the served reward judges.

and the answer is ``{"scores": [float] * B, "details": {...}, "sample_ids": [...], "reward": name,
"granularity": ..., "dense": base64 safetensors "dense" (B, ...) or null}``. ``png`` sends what an
image reward usually judges (8-bit pixels, compressed); ``safetensors`` is lossless float32, so remote
scores equal local ones exactly. Metadata must be JSON values,
or dataclasses registered in :data:`METADATA_TYPES` (the shapes world's ``PromptMeta``), which travel
as ``{"$type": "shapes.PromptMeta", ...}``; the server (:func:`vgrl.serve.metadata_from_json`) rebuilds
only types from that allowlist.

Time bound. With ``d = deadline_s`` every attempt gets at most ``d`` seconds and one call at most
``2 d`` in all: attempts plus jittered exponential backoff ``min(backoff_max_s, backoff_base_s 2^(k-1))
x U(0.5, 1)`` after failed attempt ``k`` (a ``Retry-After`` header raises it, up to ``backoff_max_s``),
and at most ``max_retries`` retries. So training waits at most about ``2 d`` (plus encoding) for a
dead or overloaded server, then fails with :class:`RemoteRewardError`; if the server comes back
within that window the call simply succeeds. Only transport errors, timeouts, 408, 429 and 5xx are
retried; any other answer fails at once with the sample ids. A failure is never turned into a score.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import dataclasses
import io
import json
import logging
import math
import os
import random
import ssl
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from PIL import Image
from pydantic import Field, SecretStr, field_validator, model_validator

from vgrl._lazy import lazy, lazy_function
from vgrl.rewards.base import NonFiniteRewardError, Reward, RewardInputError, RewardOptions
from vgrl.types import RewardOutput
from vgrl.worlds.shapes import ObjectSpec, PromptMeta

try:
    import httpx
except ModuleNotFoundError as e:  # pragma: no cover - httpx is in requirements.txt
    raise ModuleNotFoundError("reward 'remote' needs httpx: pip install 'vgrl[remote]'") from e

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy("torch")
st_load = lazy_function("safetensors.torch", "load")
st_save = lazy_function("safetensors.torch", "save")

PROTOCOL = 2  # the newest request version; protocol 1 (no ``layout`` field) is an image batch
TYPE_KEY = "$type"
METADATA_TYPES: dict[str, type] = {"shapes.PromptMeta": PromptMeta, "shapes.ObjectSpec": ObjectSpec}
_TYPE_NAMES = {cls: key for key, cls in METADATA_TYPES.items()}
log = logging.getLogger(__name__)


class RemoteRewardError(RuntimeError):
    """The reward server gave no valid answer; ``sample_ids`` are the request's samples."""

    def __init__(self, message: str, sample_ids: list[str], status: int | None = None) -> None:
        super().__init__(message)
        self.sample_ids, self.status = sample_ids, status


class ProtocolError(ValueError):
    """A request or answer body that breaks the protocol (bad base64, image, tensor or metadata)."""


def retryable(status: int) -> bool:
    """Statuses worth another attempt: 408 (timeout), 429 (rate limit) and every 5xx."""
    return status in (408, 429) or 500 <= status <= 599


def ids_text(ids: list[str], limit: int = 8) -> str:
    """``a/0, a/1, ... (64 in all)`` — sample ids for an error message."""
    return ", ".join(ids) if len(ids) <= limit else f"{', '.join(ids[:limit])}, ... ({len(ids)} in all)"


# ------------------------------------------------------------------------------------------- payloads
def encode_png(images: Tensor) -> list[str]:
    """``(B, 3, H, W)`` in [0, 1] -> B base64 8-bit RGB PNGs of ``round(255 x)``."""
    u8 = (images.detach().to("cpu", torch.float32) * 255.0).round().clamp(0, 255).to(torch.uint8)
    out = []
    for a in u8.permute(0, 2, 3, 1).contiguous().numpy():
        buf = io.BytesIO()
        Image.fromarray(a, "RGB").save(buf, format="PNG", compress_level=1)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def b64decode(text: str, where: str) -> bytes:
    """Strict base64 decoding; :class:`ProtocolError` naming ``where`` on bad input."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError(f"{where} is not valid base64: {e}") from None


def encode_safetensors(x: Tensor, key: str = "images") -> str:
    """Base64 of a safetensors blob holding ``x`` as float32 tensor ``key`` (lossless)."""
    x = x.detach().to("cpu", torch.float32).contiguous()
    return base64.b64encode(st_save({key: x})).decode("ascii")


def decode_tensor(text: str, key: str, where: str) -> Tensor:
    """The float32 tensor ``key`` of a base64 safetensors blob holding exactly that tensor."""
    raw = b64decode(text, where)
    try:
        tensors = st_load(raw)
    except Exception as e:  # safetensors parses a JSON header and raw bytes: no code runs
        raise ProtocolError(f"{where} is not a valid safetensors blob: {type(e).__name__}: {e}") from None
    if list(tensors) != [key] or tensors[key].dtype != torch.float32:
        found = {k: str(v.dtype) for k, v in tensors.items()}
        raise ProtocolError(f"{where} must hold exactly one float32 tensor named {key!r}, got {found}")
    return tensors[key]


# ------------------------------------------------------------------------------------------- metadata
def metadata_to_json(value: Any, where: str = "metadata") -> Any:
    """A JSON value for ``value``: JSON scalars, lists/tuples, str-keyed dicts and the dataclasses of
    :data:`METADATA_TYPES`; raises :class:`RewardInputError` naming ``where`` for anything else."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RewardInputError(f"{where} is {value}; metadata must be finite JSON values")
        return value
    if isinstance(value, (list, tuple)):
        return [metadata_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str) or k == TYPE_KEY]
        if bad:
            raise RewardInputError(f"{where} has key {bad[0]!r}; metadata dict keys must be strings other "
                                   f"than {TYPE_KEY!r}")
        return {k: metadata_to_json(v, f"{where}.{k}") for k, v in value.items()}
    name = _TYPE_NAMES.get(type(value))
    if name is None:
        raise RewardInputError(f"{where} is a {type(value).__name__}, which the remote reward cannot send; use JSON "
                               f"values or a registered dataclass ({', '.join(METADATA_TYPES)})")
    return {TYPE_KEY: name, **{f.name: metadata_to_json(getattr(value, f.name), f"{where}.{f.name}")
                               for f in dataclasses.fields(value)}}


# ------------------------------------------------------------------------------------------- client
class RemoteOptions(RewardOptions):
    url: str = Field(description="server base URL, e.g. http://127.0.0.1:8000 (requests go to {url}/score)")
    deadline_s: float = Field(30.0, gt=0, le=3600, description="limit of one attempt; a call takes at most 2x this")
    max_retries: int = Field(10, ge=0, le=1000, description="retries after the first attempt (within 2x deadline)")
    backoff_base_s: float = Field(0.5, gt=0, description="first backoff; doubles per retry, times U(0.5, 1)")
    backoff_max_s: float = Field(5.0, gt=0, description="largest backoff (also caps a Retry-After header)")
    token: SecretStr | None = Field(None, description="bearer token (prefer token_env: a config file keeps this)")
    token_env: str | None = Field(None, description="environment variable holding the bearer token")
    format: Literal["png", "safetensors"] = Field("png", description="payload: 8-bit PNGs or lossless float32")
    granularity: Literal["pointwise", "groupwise", "dense"] = Field(
        "pointwise", description="what the served reward is; the server's answer must agree")
    layout: Literal["image", "video", "multiview"] = Field(
        "image", description="the sample layout sent (the served reward must accept it): image batches go as "
                             "protocol 1, videos and view sets as protocol 2")
    trust_env: bool = Field(False, description="honour HTTP(S)_PROXY / SSL env variables (off: connect directly)")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")) or not url.partition("://")[2].strip("/"):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> RemoteOptions:
        if self.token is not None and self.token_env is not None:
            raise ValueError("set at most one of token and token_env")
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) must be >= backoff_base_s "
                             f"({self.backoff_base_s})")
        return self


class RemoteReward(Reward):
    """Scores from a ``vgrl serve-reward`` server (see the module docstring for protocol and time bound).

    ``details`` are the server's (lists of B numbers or booleans become tensors). Raises
    :class:`RemoteRewardError` when no valid answer arrives, :class:`NonFiniteRewardError` (as a local
    reward would) when the served reward's scores are NaN or inf, and :class:`RewardInputError` for
    metadata that cannot travel as JSON.
    """

    name = "remote"
    differentiable = False  # scores come back as numbers: no gradient crosses the wire
    granularity = "pointwise"  # per instance: the ``granularity`` option
    Options: ClassVar[type[RewardOptions]] = RemoteOptions

    @classmethod
    def example(cls, root: Path) -> RemoteReward:
        raise NotImplementedError("needs a running reward server; its contract is tested against a loopback "
                                  "server in tests/unit/test_remote_reward.py")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.granularity = o.granularity
        self.layouts = (o.layout,)
        token = o.token.get_secret_value() if o.token is not None else None
        if o.token_env is not None:
            token = os.environ.get(o.token_env)
            if not token:
                raise ValueError(f"token_env: environment variable {o.token_env!r} is not set or empty")
        self._headers = {"content-type": "application/json"}
        if token:
            self._headers["authorization"] = f"Bearer {token}"
        self._rng = random.Random()
        self._ssl: ssl.SSLContext | None = None

    def compute(self, images: Tensor, prompts: list[str], metadata: list[Any]) -> RewardOutput:
        call = uuid.uuid4().hex[:8]
        ids = [f"{call}/{i}" for i in range(images.shape[0])]
        layout = self.options.layout
        body: dict[str, Any] = {"protocol": 1} if layout == "image" else {"protocol": PROTOCOL, "layout": layout}
        body.update({"format": self.options.format, "prompts": prompts, "sample_ids": ids,
                     "metadata": [metadata_to_json(m, f"metadata[{i}]") for i, m in enumerate(metadata)]})
        if self.options.format == "png":
            body["images"] = encode_png(images) if layout == "image" else [encode_png(x) for x in images]
        else:
            body["tensor"] = encode_safetensors(images)
        data = json.dumps(body).encode()
        answer = _run(self._post(data, ids))
        scores, details, dense = self._parse(answer, ids)
        return RewardOutput(scores=scores.to(images.device), details=details,
                            dense=None if dense is None else dense.to(images.device))

    def backoff(self, attempt: int) -> float:
        """Jittered exponential backoff after failed attempt ``attempt`` (1-based), in seconds."""
        o = self.options
        return min(o.backoff_max_s, o.backoff_base_s * 2.0 ** (attempt - 1)) * self._rng.uniform(0.5, 1.0)

    async def _post(self, data: bytes, ids: list[str]) -> httpx.Response:
        """Attempts with backoff until an answer, a non-retryable status or the ``2 x deadline_s`` budget."""
        o, url = self.options, f"{self.options.url}/score"
        budget, t0, attempt, errors = 2.0 * o.deadline_s, time.monotonic(), 0, collections.Counter()
        if self._ssl is None:  # built once: httpx would build (and load CA files) per client otherwise
            self._ssl = ssl.create_default_context()
        # httpx's own per-operation timeouts (5 s by default) must not cut an attempt short: wait_for bounds it
        timeout = httpx.Timeout(o.deadline_s)
        async with httpx.AsyncClient(verify=self._ssl, trust_env=o.trust_env, timeout=timeout) as client:
            while (left := budget - (time.monotonic() - t0)) > 0:
                attempt += 1
                limit, retry_after = min(o.deadline_s, left), 0.0
                try:
                    resp = await asyncio.wait_for(client.post(url, content=data, headers=self._headers), limit)
                except asyncio.TimeoutError:
                    last = "no answer within the attempt's time limit"
                except httpx.TransportError as e:
                    last = f"{type(e).__name__}: {e}"
                else:
                    if resp.status_code == 200:
                        return resp
                    if not retryable(resp.status_code):
                        self._refused(resp, ids)
                    last, retry_after = f"HTTP {resp.status_code}: {_error_text(resp)}", _retry_after(resp)
                errors[last] += 1
                if attempt > o.max_retries:
                    break
                pause = max(self.backoff(attempt), min(retry_after, o.backoff_max_s))
                # shorten the last pause so that a final attempt still fits in the budget
                pause = min(pause, budget - (time.monotonic() - t0) - min(0.25 * o.deadline_s, 1.0))
                if pause < 0:
                    break
                log.warning("remote reward %s: attempt %d failed (%s); retrying in %.2f s", url, attempt, last, pause)
                await asyncio.sleep(pause)
        raise RemoteRewardError(
            f"remote reward {url}: no valid answer for samples {ids_text(ids)} after {attempt} attempt(s) in "
            f"{time.monotonic() - t0:.2f} s (limit 2 x deadline_s = {budget:g} s, max_retries = {o.max_retries}); "
            f"errors: {'; '.join(f'{n} x {text}' for text, n in errors.most_common(3)) or 'none'}", ids)

    def _refused(self, resp: httpx.Response, ids: list[str]) -> None:
        """A non-retryable status: raise at once, naming the samples (and the rows for non-finite scores)."""
        url, status, text = resp.request.url, resp.status_code, _error_text(resp)
        rows = _json_field(resp, "rows")
        if status == 422 and _json_field(resp, "kind") == "non_finite" and isinstance(rows, list) and rows and all(
                isinstance(r, int) and 0 <= r < len(ids) for r in rows):
            raise NonFiniteRewardError(f"remote reward {url}: {text} (samples {ids_text([ids[r] for r in rows])})",
                                       rows)
        hint = "; check token / token_env against the server's --token" if status in (401, 403) else ""
        raise RemoteRewardError(
            f"remote reward {url} refused samples {ids_text(ids)} with HTTP {status}: {text}{hint}", ids, status)

    def _parse(self, resp: httpx.Response, ids: list[str]) -> tuple[Tensor, dict[str, Any], Tensor | None]:
        """Check the answer: JSON object, B finite numbers, our sample ids, the declared granularity."""
        where = f"remote reward {resp.request.url} (samples {ids_text(ids)})"
        try:
            answer = resp.json()
        except ValueError:
            raise RemoteRewardError(f"{where}: malformed JSON answer: {resp.text[:200]!r}", ids, 200) from None
        scores = answer.get("scores") if isinstance(answer, dict) else None
        if not isinstance(scores, list) or len(scores) != len(ids):
            got = (f"{len(scores)} scores" if isinstance(scores, list)
                   else f"no 'scores' list in {str(answer)[:200]!r}")
            raise RemoteRewardError(f"{where}: expected {len(ids)} scores, got {got}", ids, 200)
        bad = [i for i, s in enumerate(scores) if isinstance(s, bool) or not isinstance(s, (int, float))]
        if bad:
            raise RemoteRewardError(f"{where}: scores[{bad[0]}] is {scores[bad[0]]!r}, not a number", ids, 200)
        if answer.get("sample_ids", ids) != ids:
            raise RemoteRewardError(f"{where}: the answer is for other samples "
                                    f"({str(answer.get('sample_ids'))[:80]})", ids)
        if answer.get("granularity", self.granularity) != self.granularity:
            raise RemoteRewardError(f"{where}: the server's reward is {answer['granularity']!r} but this client "
                                    f"declares granularity {self.granularity!r}; set the granularity option", ids)
        rows = [i for i, s in enumerate(scores) if not math.isfinite(s)]
        if rows:
            raise NonFiniteRewardError(f"{where}: non-finite scores for samples {ids_text([ids[r] for r in rows])}",
                                       rows)
        details = answer.get("details") or {}
        details = {k: _detail(v, len(ids)) for k, v in details.items()} if isinstance(details, dict) else {}
        return torch.tensor(scores, dtype=torch.float32), details, self._dense(answer, ids, where)

    def _dense(self, answer: dict[str, Any], ids: list[str], where: str) -> Tensor | None:
        """The ``dense`` credit map ``(B, ...)`` of the answer (base64 safetensors), or None."""
        if answer.get("dense") is None:
            return None
        try:
            dense = decode_tensor(answer["dense"], "dense", "dense") if isinstance(answer["dense"], str) else None
        except ProtocolError as e:
            raise RemoteRewardError(f"{where}: {e}", ids, 200) from None
        if dense is None or dense.ndim < 2 or dense.shape[0] != len(ids) or not bool(torch.isfinite(dense).all()):
            raise RemoteRewardError(f"{where}: 'dense' must be a finite ({len(ids)}, ...) map", ids, 200)
        return dense


def _detail(value: Any, b: int) -> Any:
    """A list of B booleans -> bool tensor, of B numbers -> float32 tensor; anything else unchanged."""
    if isinstance(value, list) and len(value) == b:
        if all(isinstance(v, bool) for v in value):
            return torch.tensor(value, dtype=torch.bool)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return torch.tensor(value, dtype=torch.float32)
    return value


def _json_field(resp: httpx.Response, key: str) -> Any:
    try:
        body = resp.json()
    except ValueError:
        return None
    return body.get(key) if isinstance(body, dict) else None


def _error_text(resp: httpx.Response) -> str:
    return str(_json_field(resp, "error") or resp.text[:300] or resp.reason_phrase)


def _retry_after(resp: httpx.Response) -> float:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "0")))
    except ValueError:  # an HTTP date: ignore, the backoff applies
        return 0.0


def _run(coro: Any) -> Any:
    """Run ``coro`` to completion from synchronous code (in a worker thread if a loop already runs here)."""
    try:
        asyncio.get_running_loop()
        running = True
    except RuntimeError:  # the usual case; run outside this handler so errors carry no spurious context
        running = False
    if not running:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


COMPONENT = RemoteReward
