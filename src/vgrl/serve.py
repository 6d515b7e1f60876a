"""Serve any registered vgrl reward over HTTP: the server of ``vgrl serve-reward``.

:func:`create_app` wraps a :class:`~vgrl.rewards.base.Reward` in a FastAPI app with two routes:

* ``GET /health`` -> ``{"status": "ok", "reward": name, "granularity": ..., "layouts": [...], "protocol": 2}``
  (no token needed).
* ``POST /score`` -> the protocol of :mod:`vgrl.rewards.remote`: a JSON body with base64 PNGs or a
  safetensors blob, prompts, JSON metadata and sample ids (protocol 2: and the samples' ``layout``; a
  protocol 1 body, which has none, is an image batch); answers ``{"scores", "details", "sample_ids",
  "reward", "granularity", "dense"}`` (``dense``: the reward's credit map as base64 safetensors, or null).

Every request is checked before the reward sees it, and a refusal is a JSON ``{"error": ..., "kind": ...,
"sample_ids": [...]}`` naming the problem: 401 without the bearer token (when one is configured;
compared in constant time), 413 for a body over ``max_body_bytes`` (refused while streaming, before it
is parsed) or more than ``max_images`` images, 400 for a body that is not JSON, 422 for a body that
breaks the schema, an image that does not decode or is larger than ``max_side``, metadata of an unknown
type, a layout the reward does not accept (``kind: layout``), or inputs the reward rejects (``kind: non_finite`` with ``rows`` when it scores NaN/inf), and
500 when the reward itself crashes. Nothing is ever unpickled. Rewards run one batch at a time.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import logging
import math
import sys
import threading
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError
from torch import Tensor

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect
except ModuleNotFoundError as e:  # pragma: no cover - fastapi is in requirements.txt
    raise ModuleNotFoundError("vgrl serve-reward needs fastapi and uvicorn: pip install 'vgrl[remote]'") from e

from vgrl.layouts import LAYOUTS
from vgrl.rewards.base import NonFiniteRewardError, Reward, RewardInputError
from vgrl.rewards.remote import (METADATA_TYPES, PROTOCOL, TYPE_KEY, ProtocolError, b64decode, decode_tensor,
                                 encode_safetensors)

log = logging.getLogger(__name__)


class ServeLimits(BaseModel):
    """What one ``/score`` request may carry."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(64 * 2**20, ge=1024, description="request body size limit in bytes")
    max_images: int = Field(1024, ge=1, description="images per request (every frame or view counts)")
    max_side: int = Field(2048, ge=8, description="largest image side in pixels")


class ScoreRequest(BaseModel):
    """The ``/score`` body (protocol 1 or 2); see :mod:`vgrl.rewards.remote`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    protocol: Literal[1, 2]
    layout: Literal["image", "video", "multiview"] | None = None
    format: Literal["png", "safetensors"]
    images: list[str] | list[list[str]] | None = None
    tensor: str | None = None
    prompts: list[str]
    metadata: list[JsonValue] | None = None
    sample_ids: list[str]


class _Refusal(Exception):
    def __init__(self, status: int, message: str, kind: str, ids: list[str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.kind, self.ids, self.extra = status, kind, ids or [], extra

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        body = {"error": str(self), "kind": self.kind, "sample_ids": self.ids, **self.extra}
        return JSONResponse(body, status_code=self.status, headers=headers)


def create_app(reward: Reward, token: str | None = None, limits: ServeLimits | None = None) -> FastAPI:
    """A FastAPI app serving ``reward`` (see the module docstring); ``token`` enables bearer auth."""
    limits = limits or ServeLimits()
    app = FastAPI(title=f"vgrl reward {reward.name}", docs_url=None, redoc_url=None, openapi_url=None)
    lock = threading.Lock()  # one batch at a time: rewards are not assumed thread-safe

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "reward": reward.name, "granularity": reward.granularity,
                "layouts": list(reward.layouts), "protocol": PROTOCOL}

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        try:
            _authorise(request, token)
            req = _parse(await _read_body(request, limits.max_body_bytes))
            layout = _layout(req, reward)
            images, metadata = _decode(req, limits, layout)
        except _Refusal as e:
            return e.response()

        def run() -> Any:
            with lock:
                return reward(images, req.prompts, metadata, layout=layout)

        ids = req.sample_ids
        try:
            out = await run_in_threadpool(run)
        except NonFiniteRewardError as e:
            return _Refusal(422, f"reward {reward.name!r}: {e}", "non_finite", ids, rows=e.samples).response()
        except (RewardInputError, ProtocolError) as e:
            return _Refusal(422, f"reward {reward.name!r} rejected the inputs: {e}", "reward_input", ids).response()
        except Exception as e:
            log.exception("reward %s failed on samples %s", reward.name, ids[:8])
            return _Refusal(500, f"reward {reward.name!r} failed: {type(e).__name__}: {e}", "reward_error",
                            ids).response()
        dense = None if out.dense is None else encode_safetensors(out.dense, "dense")
        return JSONResponse({"scores": out.scores.detach().cpu().tolist(), "details": _details(out.details),
                             "dense": dense, "sample_ids": ids, "reward": reward.name,
                             "granularity": reward.granularity})

    return app


def _authorise(request: Request, token: str | None) -> None:
    if token is None:
        return
    given = request.headers.get("authorization", "")
    if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
        raise _Refusal(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')", "unauthorised")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _Refusal(413, f"body of {int(declared)} bytes exceeds the limit of {limit} bytes", "too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Refusal(413, f"body exceeds the limit of {limit} bytes", "too_large")
            chunks.append(chunk)
    except ClientDisconnect:  # the client gave up (its deadline passed): nobody reads the answer
        raise _Refusal(400, "client disconnected before sending the whole body", "disconnected") from None
    return b"".join(chunks)


def _parse(body: bytes) -> ScoreRequest:
    try:
        return ScoreRequest.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors()
        if any(err["type"] == "json_invalid" for err in errors):
            raise _Refusal(400, f"body is not valid JSON: {errors[0]['msg']}", "bad_json") from None
        lines = [f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in errors[:5]]
        raise _Refusal(422, "invalid request: " + "; ".join(lines), "bad_request") from None


def _layout(req: ScoreRequest, reward: Reward) -> str:
    """The request's sample layout: its ``layout`` (protocol 2), ``image`` for protocol 1; refused unless the
    reward accepts it."""
    if req.protocol == 1 and req.layout is not None:
        raise _Refusal(422, "field layout needs protocol 2 (protocol 1 requests are image batches)", "bad_request",
                       req.sample_ids[:8])
    layout = req.layout or "image"
    if layout not in reward.layouts:
        raise _Refusal(422, f"reward {reward.name!r} accepts {' or '.join(reward.layouts)} samples, got a {layout} "
                            "batch", "layout", req.sample_ids[:8])
    return layout


def _decode(req: ScoreRequest, limits: ServeLimits, layout: str = "image") -> tuple[torch.Tensor, list[Any]]:
    """Samples (in ``layout``) and metadata of a parsed request, with counts and sizes checked (``_Refusal``
    otherwise)."""
    ids = req.sample_ids
    b = len(ids)
    n = b * max([len(x) for x in req.images or [] if isinstance(x, list)] + [1])  # images, frames included
    if b == 0 or n > limits.max_images:
        raise _Refusal(413 if b else 422, f"a request carries 1 to max_images = {limits.max_images} images (frames "
                                          f"and views count), got {n}", "batch_size", ids[:8])
    if (req.images is None) == (req.tensor is None) or (req.images is None) != (req.format == "safetensors"):
        raise _Refusal(422, f"format {req.format!r} needs exactly the field "
                            f"{'images' if req.format == 'png' else 'tensor'}", "bad_request", ids)
    metadata = req.metadata if req.metadata is not None else [None] * b
    for name, seq in (("prompts", req.prompts), ("metadata", metadata), ("images", req.images or ids)):
        if len(seq) != b:
            raise _Refusal(422, f"{name} has {len(seq)} entries but sample_ids has {b}", "bad_request", ids)
    if len(set(ids)) != b:
        raise _Refusal(422, "sample_ids must be distinct", "bad_request", ids)
    try:
        if req.format == "png":
            images = decode_samples(req.images or [], ids, limits.max_side, layout)
        else:
            images = decode_safetensors(req.tensor or "", limits.max_side, layout)
        if images.shape[0] != b:
            raise ProtocolError(f"tensor holds {images.shape[0]} samples but sample_ids has {b}")
        if b * math.prod(images.shape[1:-3]) > limits.max_images:
            raise _Refusal(413, f"a request carries at most max_images = {limits.max_images} images (frames and views "
                                f"count), got {b * math.prod(images.shape[1:-3])}", "batch_size", ids[:8])
        metas = [metadata_from_json(m, f"metadata[{i}] (sample {ids[i]})") for i, m in enumerate(metadata)]
    except ProtocolError as e:
        raise _Refusal(422, str(e), "bad_payload", ids) from None
    return images, metas


# ------------------------------------------------------------------------------------------- decoding
def decode_png(items: list[str], sample_ids: list[str], max_side: int) -> Tensor:
    """B base64 PNGs (8-bit RGB, all the same size, sides <= ``max_side``) -> ``(B, 3, H, W)`` float32 in [0, 1]."""
    arrays = []
    for i, text in enumerate(items):
        where = f"images[{i}] (sample {sample_ids[i]})"
        raw = b64decode(text, where)
        try:
            with Image.open(io.BytesIO(raw), formats=["PNG"]) as im:
                if max(im.size) > max_side:  # checked before decoding any pixel
                    raise ProtocolError(f"{where} is {im.size[0]}x{im.size[1]}; the server allows sides <= {max_side}")
                if im.mode != "RGB":
                    raise ProtocolError(f"{where} has PNG mode {im.mode!r}; expected 8-bit 'RGB'")
                arrays.append(np.asarray(im))
        except ProtocolError:
            raise
        except Exception as e:  # PIL raises many types for corrupt data
            raise ProtocolError(f"{where} is not a decodable PNG: {type(e).__name__}: {e}") from None
        if arrays[-1].shape != arrays[0].shape:
            raise ProtocolError(f"{where} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]} but images[0] is "
                                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; a batch shares one size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(torch.float32) / 255.0


def decode_samples(items: list, sample_ids: list[str], max_side: int, layout: str = "image") -> Tensor:
    """The ``images`` field of a png request -> float32 samples in [0, 1] in ``layout``: B base64 PNGs for images,
    B lists of N base64 PNGs (frames or views in order, N the same for every sample) otherwise."""
    if layout == "image":
        if not all(isinstance(x, str) for x in items):
            raise ProtocolError("images must be a list of base64 PNGs (one per sample) for an image batch")
        return decode_png(items, sample_ids, max_side)
    if not all(isinstance(x, list) and x for x in items) or len({len(x) for x in items}) != 1:
        raise ProtocolError(f"images must be, for a {layout} batch, one non-empty list of base64 PNGs per sample "
                            "(its frames or views), all of one length")
    n = len(items[0])
    flat = decode_png([f for x in items for f in x], [f"{i}[{k}]" for i in sample_ids for k in range(n)], max_side)
    return flat.view(len(items), n, *flat.shape[1:])


def decode_safetensors(text: str, max_side: int, layout: str = "image") -> Tensor:
    """The inverse of :func:`encode_safetensors` for the ``tensor`` field: float32 ``images`` in ``layout``,
    ``(B, 3, H, W)``, ``(B, F, 3, H, W)`` or ``(B, V, 3, H, W)``."""
    x = decode_tensor(text, "images", "tensor")
    dims = LAYOUTS[layout]
    if x.ndim != len(dims) or x.shape[-3] != 3:
        want = ", ".join("3" if d == "C" else d for d in dims)
        raise ProtocolError(f"tensor 'images' must be float32 ({want}) for a {layout} batch, got {x.dtype} "
                            f"{tuple(x.shape)}")
    if max(x.shape[-2:]) > max_side:
        raise ProtocolError(f"tensor 'images' is {x.shape[-1]}x{x.shape[-2]}; the server allows sides <= {max_side}")
    return x


def metadata_from_json(value: Any, where: str = "metadata", in_dataclass: bool = False) -> Any:
    """Rebuild :func:`metadata_to_json`'s output; only :data:`METADATA_TYPES` are ever constructed
    (lists inside them become tuples, as frozen dataclasses hold). Raises :class:`ProtocolError`."""
    if isinstance(value, list):
        items = [metadata_from_json(v, f"{where}[{i}]", in_dataclass) for i, v in enumerate(value)]
        return tuple(items) if in_dataclass else items
    if not isinstance(value, dict):
        return value
    if TYPE_KEY not in value:
        return {k: metadata_from_json(v, f"{where}.{k}", in_dataclass) for k, v in value.items()}
    cls = METADATA_TYPES.get(value[TYPE_KEY]) if isinstance(value[TYPE_KEY], str) else None
    if cls is None:
        raise ProtocolError(f"{where}.{TYPE_KEY} is {value[TYPE_KEY]!r}; valid: {', '.join(METADATA_TYPES)}")
    fields = {k: metadata_from_json(v, f"{where}.{k}", True) for k, v in value.items() if k != TYPE_KEY}
    try:
        return cls(**fields)
    except TypeError as e:
        raise ProtocolError(f"{where} is not a valid {value[TYPE_KEY]}: {e}") from None


def _details(details: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe details: tensors become lists, non-finite floats None, other objects their ``str``."""
    def safe(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return safe(v.detach().cpu().tolist())
        if isinstance(v, (list, tuple)):
            return [safe(x) for x in v]
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        return v if v is None or isinstance(v, (str, bool, int)) else str(v)

    return {str(k): safe(v) for k, v in details.items()}


# ------------------------------------------------------------------------------------------- command line
def build_reward(name: str, options: list[str]) -> Reward:
    """Reward ``name`` with ``KEY=VALUE`` options (values parsed as YAML); ``ValueError`` names a bad one."""
    import yaml

    from vgrl import registry

    opts: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        opts[key] = yaml.safe_load(value)
    cls = registry.resolve("rewards", name)
    try:
        return cls(**opts)
    except ValidationError as e:
        lines = [f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"invalid options for reward {name!r}: " + "; ".join(lines)) from None
    except TypeError as e:  # a reward whose constructor needs objects (compose's terms)
        raise ValueError(f"reward {name!r} cannot be built from --option values: {e}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(reward: Reward, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          limits: ServeLimits | None = None) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    if not is_loopback(host) and token is None:
        print(f"warning: serving on {host} without a token: anyone who can reach port {port} can use this "
              "reward server (pass --token-env)", file=sys.stderr)
    print(f"serving reward {reward!r} on http://{host}:{port} (bearer token "
          f"{'required' if token else 'not required'})", file=sys.stderr, flush=True)
    uvicorn.run(create_app(reward, token, limits), host=host, port=port, log_level="info")
