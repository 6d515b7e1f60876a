"""The remote reward against real servers on loopback: equal scores, the fault table, time bounds.

Servers are uvicorn in a thread (the real ``vgrl.serve`` app, optionally behind a fault-injecting ASGI
wrapper) or ``vgrl serve-reward`` in a subprocess (killed and restarted). Elapsed-time asserts are
correctness bounds (``2 x deadline`` plus slack), not speed benchmarks.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pydantic
import pytest
import torch
import uvicorn
from PIL import Image
from starlette.responses import JSONResponse, Response

from vgrl import rewards
from vgrl.cli import build_parser
from vgrl.rewards.base import NonFiniteRewardError, Reward, RewardInputError
from vgrl.rewards.remote import RemoteRewardError, encode_png, metadata_to_json
from vgrl.serve import ServeLimits, build_reward, create_app, metadata_from_json
from vgrl.types import RewardOutput
from vgrl.worlds.shapes import ObjectSpec, PromptMeta, ShapesWorld

SLACK = 0.6  # seconds of scheduling slack on a loaded 2-core machine


class Faulty:
    """ASGI wrapper: answers ``/score`` by the next action of ``plan`` ('ok' passes through), counts requests."""

    def __init__(self, app):
        self.app, self.plan, self.seen = app, [], 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/score":
            return await self.app(scope, receive, send)
        self.seen += 1
        action = self.plan.pop(0) if self.plan else ("ok",)
        kind, *args = action
        if kind == "slow":
            await asyncio.sleep(args[0])
            kind = "ok"
        if kind == "ok":
            return await self.app(scope, receive, send)
        if kind == "status":
            code, headers = args[0], (args[1] if len(args) > 1 else None)
            response = JSONResponse({"error": f"injected {code}"}, status_code=code, headers=headers)
        else:  # "raw": a 200 with this exact body
            response = Response(args[0], status_code=200, media_type="application/json")
        await response(scope, receive, send)


class LoopbackServer:
    """uvicorn serving ``app`` in a daemon thread on a free 127.0.0.1 port."""

    def __init__(self, app, port: int = 0):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert time.monotonic() - t0 < 20 and self.thread.is_alive(), "test server did not start"
            time.sleep(0.01)

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


class NaNAtRow1(Reward):
    """Test reward: 1.0 everywhere but NaN at row 1 (the served reward misbehaves)."""

    name, differentiable, granularity = "nan_at_row_1", False, "pointwise"

    def compute(self, images, prompts, metadata):
        s = torch.ones(images.shape[0])
        s[1] = float("nan")
        return RewardOutput(s)


@contextmanager
def serving(reward, port: int = 0, **kwargs):
    faulty = Faulty(create_app(reward, **kwargs))
    server = LoopbackServer(faulty, port)
    try:
        yield server.url, faulty
    finally:
        server.close()


@pytest.fixture(scope="module")
def world():
    return ShapesWorld(32)


@pytest.fixture(scope="module")
def batch(world):
    """Six renders of varied prompts, scored against rotated metadata (so scores differ)."""
    prompts = [world.prompts("train", c)[3] for c in ("single_object", "two_object", "counting", "colors",
                                                     "position", "color_attr")]
    metas = [p.meta for p in prompts]
    images = world.render(metas, seed=0)
    metas = metas[:3] + metas[3:][::-1]  # three right, three wrong
    return images, [p.text for p in prompts], metas


@pytest.fixture(scope="module")
def jpeg_server():
    with serving(rewards.get("jpeg")) as s:
        yield s


@pytest.fixture
def jpeg(jpeg_server):
    url, faulty = jpeg_server
    faulty.plan, faulty.seen = [], 0
    return url, faulty


def remote(url, **kw):
    kw = {"deadline_s": 0.4, "backoff_base_s": 0.02, "backoff_max_s": 0.1, **kw}
    return rewards.get("remote", url=url, **kw)


# --------------------------------------------------------------------------------------------- equality
def test_remote_scores_equal_local_shapes_checker(batch):
    images, prompts, metas = batch
    local = rewards.get("shapes_checker")
    want = local(images, prompts, metas)
    assert want.scores.max() == 1 and want.scores.min() < 0.5  # a non-trivial batch
    u8 = (images * 255).round() / 255
    with serving(rewards.get("shapes_checker")) as (url, _):
        for fmt in ("png", "safetensors"):
            got = remote(url, format=fmt, deadline_s=10)(images, prompts, metas)
            assert torch.equal(got.scores, want.scores), fmt
            assert torch.equal(got.details["passed"], want.details["passed"])
            assert torch.equal(got.details["partial"], want.details["partial"])
            assert got.details["category"] == want.details["category"]
        # png carries round(255 x): scores equal the local reward on exactly those pixels
        assert torch.equal(remote(url, deadline_s=10)(u8, prompts, metas).scores, local(u8, prompts, metas).scores)


def test_dense_maps_travel_losslessly(batch):
    images, prompts, metas = batch
    local = rewards.get("shapes_checker", dense=True)
    want = local(images, prompts, metas)
    with serving(rewards.get("shapes_checker", dense=True)) as (url, _):
        got = remote(url, format="safetensors", granularity="dense", deadline_s=10)(images, prompts, metas)
        assert want.dense is not None and torch.equal(got.dense, want.dense)
        with pytest.raises(RemoteRewardError, match="granularity"):  # the client must declare what it gets
            remote(url, deadline_s=10)(images, prompts, metas)


def test_jpeg_png_payload_is_exact(jpeg):
    url, _ = jpeg
    x = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    want = rewards.get("jpeg")(x, [""] * 4)
    assert torch.equal(remote(url, deadline_s=10)(x, [""] * 4).scores, want.scores)  # jpeg quantises alike

    async def inside_an_event_loop():  # e.g. a notebook: the call runs its own loop in a worker thread
        return remote(url, deadline_s=10)(x, [""] * 4)

    assert torch.equal(asyncio.run(inside_an_event_loop()).scores, want.scores)


def test_metadata_codec_round_trip_and_allowlist():
    meta = PromptMeta("position", (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")), "left_of")
    wire = json.loads(json.dumps(metadata_to_json([meta, {"a": (1, 2.5)}, None])))
    back = metadata_from_json(wire)
    assert back[0] == meta and hash(back[0]) == hash(meta) and back[1] == {"a": [1, 2.5]} and back[2] is None
    with pytest.raises(ValueError, match="os.system"):
        metadata_from_json({"$type": "os.system", "command": "true"})
    with pytest.raises(RewardInputError, match=r"metadata\[1\] is a object"):
        metadata_to_json(object(), "metadata[1]")


# --------------------------------------------------------------------------------------------- faults
def test_503s_then_recovery_and_408_429_500_are_retried(jpeg):
    url, faulty = jpeg
    x = torch.rand(2, 3, 16, 16)
    faulty.plan = [("status", 503), ("status", 503), ("status", 408), ("status", 429), ("status", 500)]
    out = remote(url, deadline_s=2.0)(x, ["", ""])
    assert faulty.seen == 6 and torch.equal(out.scores, rewards.get("jpeg")(x, ["", ""]).scores)
    faulty.plan, faulty.seen = [("status", 429, {"Retry-After": "0.3"})], 0
    t0 = time.monotonic()
    remote(url, deadline_s=2.0, backoff_max_s=1.0)(x, ["", ""])
    assert faulty.seen == 2 and time.monotonic() - t0 >= 0.3  # Retry-After honoured (below backoff_max_s)


def test_persistent_503_fails_clearly_within_twice_the_deadline(jpeg):
    url, faulty = jpeg
    faulty.plan = [("status", 503)] * 10_000
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError, match=r"HTTP 503.*injected 503") as e:
        remote(url, deadline_s=0.4, max_retries=1000)(torch.rand(2, 3, 16, 16), ["", ""])
    elapsed = time.monotonic() - t0
    assert elapsed <= 0.8 + SLACK and 2 <= faulty.seen < 200  # bounded by time, not by max_retries
    assert "2 x deadline_s = 0.8 s" in str(e.value) and len(e.value.sample_ids) == 2
    faulty.plan, faulty.seen = [("status", 503)] * 100, 0
    with pytest.raises(RemoteRewardError, match="after 3 attempt"):
        remote(url, deadline_s=5.0, max_retries=2)(torch.rand(2, 3, 16, 16), ["", ""])
    assert faulty.seen == 3  # bounded by max_retries


def test_slow_answers_time_out_then_a_fast_one_succeeds(jpeg):
    url, faulty = jpeg
    x = torch.rand(2, 3, 16, 16)
    faulty.plan = [("slow", 1.5)] * 5
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError, match="no answer within the attempt's time limit"):
        remote(url, deadline_s=0.4, max_retries=50)(x, ["", ""])
    assert time.monotonic() - t0 <= 0.8 + SLACK
    faulty.plan, faulty.seen = [("slow", 1.5), ("ok",)], 0
    t0 = time.monotonic()
    out = remote(url, deadline_s=0.5)(x, ["", ""])
    assert out.scores.shape == (2,) and faulty.seen == 2 and 0.5 <= time.monotonic() - t0 <= 1.0 + SLACK


@pytest.mark.parametrize("body, match", [
    ("{not json", "malformed JSON"),
    ('{"scores": [1.0]}', "expected 2 scores, got 1 scores"),
    ('{"score": [1.0, 2.0]}', "no 'scores' list"),
    ('{"scores": [1.0, "high"]}', r"scores\[1\] is 'high', not a number"),
    ('{"scores": [1.0, 2.0], "sample_ids": ["x/0", "x/1"]}', "other samples"),
])
def test_malformed_answers_fail_at_once(jpeg, body, match):
    url, faulty = jpeg
    faulty.plan = [("raw", body)]
    with pytest.raises(RemoteRewardError, match=match):
        remote(url, deadline_s=5.0)(torch.rand(2, 3, 16, 16), ["", ""])
    assert faulty.seen == 1


def test_non_finite_scores_are_an_error_never_a_zero(jpeg):
    url, faulty = jpeg
    faulty.plan = [("raw", '{"scores": [0.5, NaN]}')]
    with pytest.raises(NonFiniteRewardError, match="non-finite") as e:
        remote(url)(torch.rand(2, 3, 16, 16), ["", ""])
    assert e.value.samples == [1] and faulty.seen == 1
    with serving(NaNAtRow1()) as (nan_url, nan_faulty):  # the served reward itself scores NaN: 422 non_finite
        with pytest.raises(NonFiniteRewardError, match=r"non-finite scores for samples \[1\]") as e:
            remote(nan_url)(torch.rand(3, 3, 8, 8), ["", "", ""])
        assert e.value.samples == [1] and nan_faulty.seen == 1


@pytest.mark.parametrize("code", [400, 404, 409, 422])
def test_other_4xx_fail_at_once_naming_the_samples(jpeg, code):
    url, faulty = jpeg
    faulty.plan = [("status", code)] * 5
    t0 = time.monotonic()
    with pytest.raises(RemoteRewardError, match=rf"refused samples [0-9a-f]{{8}}/0, [0-9a-f]{{8}}/1 with HTTP {code}"):
        remote(url, deadline_s=5.0)(torch.rand(2, 3, 16, 16), ["", ""])
    assert faulty.seen == 1 and time.monotonic() - t0 < 1.0 + SLACK


def test_reward_input_error_on_the_server_is_a_422_naming_the_samples(batch):
    _, prompts, metas = batch
    with serving(rewards.get("shapes_checker")) as (url, faulty):
        match = r"HTTP 422: reward 'shapes_checker' rejected the inputs.*32x32"
        with pytest.raises(RemoteRewardError, match=match) as e:
            remote(url, deadline_s=5.0)(torch.rand(6, 3, 16, 16), prompts, metas)
        assert faulty.seen == 1 and e.value.status == 422 and len(e.value.sample_ids) == 6


def test_bearer_token(monkeypatch):
    x = torch.rand(2, 3, 16, 16)
    with serving(rewards.get("jpeg"), token="s3cret") as (url, faulty):
        with pytest.raises(RemoteRewardError, match="HTTP 401.*bearer token.*token_env"):
            remote(url, token="wrong", deadline_s=5.0)(x, ["", ""])
        with pytest.raises(RemoteRewardError, match="HTTP 401"):
            remote(url, deadline_s=5.0)(x, ["", ""])
        assert faulty.seen == 2  # never retried
        monkeypatch.setenv("VGRL_TEST_REWARD_TOKEN", "s3cret")
        assert remote(url, token_env="VGRL_TEST_REWARD_TOKEN")(x, ["", ""]).scores.shape == (2,)
        assert "s3cret" not in repr(remote(url, token="s3cret"))
        assert httpx.get(f"{url}/health").json()["status"] == "ok"  # health needs no token


def test_server_validates_request_bodies(jpeg):
    url, _ = jpeg
    png = encode_png(torch.rand(1, 3, 8, 8))[0]
    good = {"protocol": 1, "format": "png", "images": [png, png], "prompts": ["", ""], "sample_ids": ["a", "b"]}

    def post(body, base=url, **kw):
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(f"{base}/score", content=data, headers={"content-type": "application/json"}, **kw)

    assert post(good).status_code == 200
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    jpeg_b64 = base64.b64encode(buf.getvalue()).decode()
    cases = [
        ("{oops", 400, "not valid JSON"),
        ({**good, "pickle": "x"}, 422, "pickle: Extra inputs"),
        ({**good, "images": [png, "@@@"]}, 422, r"images\[1\] \(sample b\) is not valid base64"),
        ({**good, "images": [png, jpeg_b64]}, 422, r"images\[1\].*not a decodable PNG"),
        ({**good, "prompts": [""]}, 422, "prompts has 1 entries but sample_ids has 2"),
        ({**good, "metadata": [{"$type": "builtins.eval"}, None]}, 422, r"metadata\[0\] \(sample a\)"),
        ({**good, "format": "safetensors"}, 422, "needs exactly the field tensor"),
        ({**good, "protocol": 3}, 422, "protocol: Input should be 1 or 2"),
        ({**good, "layout": "image"}, 422, "field layout needs protocol 2"),
        ({**good, "protocol": 2, "layout": "video"}, 422, "images must be, for a video batch, one non-empty list"),
    ]
    for body, code, match in cases:
        r = post(body)
        assert r.status_code == code, (match, r.text)
        assert re.search(match, r.json()["error"]), r.json()["error"]
    with serving(rewards.get("jpeg"), limits=ServeLimits(max_body_bytes=4096, max_images=2, max_side=8)) as (small, _):
        big = encode_png(torch.rand(1, 3, 16, 16))[0]
        r = post({**good, "images": [png] * 3, "prompts": [""] * 3, "sample_ids": list("abc")}, small)
        assert r.status_code == 413 and "max_images = 2" in r.json()["error"]
        r = post({**good, "images": [png, big]}, small)
        assert r.status_code == 422 and "16x16; the server allows sides <= 8" in r.json()["error"]
        r = post({**good, "prompts": ["x" * 5000, ""]}, small)
        assert r.status_code == 413 and "limit of 4096 bytes" in r.json()["error"]


# --------------------------------------------------------------------------------------------- killed server
def _start_cli_server(port: int) -> subprocess.Popen:
    env = {**os.environ, "VGRL_TEST_TOKEN": "tok", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vgrl", "serve-reward", "--reward", "jpeg", "--option", "quality=80",
                             "--port", str(port), "--token-env", "VGRL_TEST_TOKEN"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_server_killed_mid_run_fails_within_bound_or_recovers_after_restart(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, x = f"http://127.0.0.1:{port}", torch.rand(3, 3, 16, 16)
    want = rewards.get("jpeg", quality=80)(x, [""] * 3).scores
    monkeypatch.setenv("VGRL_TEST_TOKEN", "tok")
    procs = [_start_cli_server(port)]
    try:
        # the client waits for the server to come up (connection refused is retried): 2 x 15 s at most
        assert torch.equal(remote(url, token_env="VGRL_TEST_TOKEN", deadline_s=15, max_retries=1000, backoff_max_s=0.3)(
            x, [""] * 3).scores, want)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        t0 = time.monotonic()
        with pytest.raises(RemoteRewardError, match=r"ConnectError") as e:
            remote(url, token_env="VGRL_TEST_TOKEN", deadline_s=0.5, max_retries=100)(x, [""] * 3)
        assert time.monotonic() - t0 <= 1.0 + SLACK and "limit 2 x deadline_s = 1 s" in str(e.value)
        procs.append(_start_cli_server(port))  # back while the next call is still retrying
        t0 = time.monotonic()
        out = remote(url, token_env="VGRL_TEST_TOKEN", deadline_s=15, max_retries=1000, backoff_max_s=0.3)(x, [""] * 3)
        assert torch.equal(out.scores, want) and time.monotonic() - t0 <= 30 + SLACK
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


# --------------------------------------------------------------------------------------------- training
TINY = {  # tests/recipes/test_train.py's tiny run, two iterations, no evaluation
    "seed": 0, "backbone": {"name": "flow", "tiny": True, "resolution": 32},
    "kernel": {"name": "flow_sde", "noise_level": 0.7},
    "sampling": {"num_steps": 4, "plan": {"kind": "window", "window_start": 0, "window_size": 2}},
    "data": {"world": "shapes", "split": "train"}, "batch_size": 8, "group_size": 4,
    "algorithm": {"name": "flow_grpo", "beta": 0.01},
    "train": {"iterations": 2, "lr": 1e-3, "minibatch_size": 4, "grad_accum": 2, "checkpoint_every": 100},
    "eval": {"before": False, "every": None}, "log": {"grid_every": 100, "progress": False, "tensorboard": False},
}


@pytest.fixture(scope="module")
def local_jpeg_rewards(tmp_path_factory):
    """reward_mean of that run with the local reward {name: jpeg}: what the remote runs must equal exactly
    (the recipe test pins its values; they move in the 4th decimal between CPU models)."""
    return _train(tmp_path_factory.mktemp("local"), "local", {"name": "jpeg"})


def _train(tmp_path, name, reward):
    import yaml

    from vgrl.config import load_config
    from vgrl.training.loop import train

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**TINY, "reward": reward}))
    train(load_config(path, []), tmp_path / name)
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    return [round(r["reward_mean"], 4) for r in map(json.loads, lines) if r["kind"] == "train"]


def test_training_through_the_remote_reward_equals_local_and_rides_out_an_outage(tmp_path, local_jpeg_rewards):
    with serving(rewards.get("jpeg")) as (url, faulty):
        faulty.plan = [("status", 503), ("status", 503)]  # the first iteration's call is retried
        assert _train(tmp_path, "run", {"name": "remote", "url": url, "deadline_s": 10}) == local_jpeg_rewards
        assert faulty.seen == 4
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(RemoteRewardError, match="ConnectError"):  # server gone: a clear error, not a zero reward
        _train(tmp_path, "down", {"name": "remote", "url": url, "deadline_s": 0.3})
    later = threading.Timer(0.5, lambda: servers.append(LoopbackServer(create_app(rewards.get("jpeg")), port)))
    servers: list[LoopbackServer] = []
    later.start()  # the server comes back while the first reward call is retrying
    try:
        reward = {"name": "remote", "url": url, "deadline_s": 10, "max_retries": 1000, "backoff_base_s": 0.05,
                  "backoff_max_s": 0.2}
        assert _train(tmp_path, "back", reward) == local_jpeg_rewards
    finally:
        later.join()
        for server in servers:
            server.close()


# --------------------------------------------------------------------------------------------- options, CLI
def test_options_are_validated(monkeypatch):
    with pytest.raises(pydantic.ValidationError, match="url"):
        rewards.get("remote")
    with pytest.raises(pydantic.ValidationError, match="http:// or https://"):
        rewards.get("remote", url="127.0.0.1:8000")
    with pytest.raises(pydantic.ValidationError, match="at most one of token and token_env"):
        rewards.get("remote", url="http://h", token="a", token_env="B")
    with pytest.raises(pydantic.ValidationError, match="backoff_max_s"):
        rewards.get("remote", url="http://h", backoff_base_s=2, backoff_max_s=1)
    monkeypatch.delenv("VGRL_NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ValueError, match="VGRL_NO_SUCH_TOKEN"):
        rewards.get("remote", url="http://h", token_env="VGRL_NO_SUCH_TOKEN")
    r = rewards.get("remote", url="http://h/", backoff_base_s=0.1, backoff_max_s=1.0)
    assert r.options.url == "http://h" and not r.differentiable
    pauses = [r.backoff(k) for k in range(1, 8)]
    caps = [min(1.0, 0.1 * 2 ** (k - 1)) for k in range(1, 8)]  # min(backoff_max_s, base 2^(k-1)), jitter U(0.5, 1)
    assert all(0.5 * c <= p <= c for c, p in zip(caps, pauses)) and caps[-1] == 1.0


def test_cli_parses_serve_reward_and_rejects_bad_options():
    args = build_parser().parse_args(["serve-reward", "--reward", "shapes_checker", "--option", "score=pass",
                                      "--option", "resolution=64", "--token-env", "T"])
    assert (args.host, args.port, args.token_env) == ("127.0.0.1", 8000, "T")
    assert args.option == ["score=pass", "resolution=64"]
    reward = build_reward(args.reward, args.option)
    assert (reward.options.score, reward.options.resolution) == ("pass", 64)
    with pytest.raises(ValueError, match="invalid options for reward 'jpeg': qualty"):
        build_reward("jpeg", ["qualty=3"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        build_reward("jpeg", ["quality"])


# --------------------------------------------------------------------------------------------- layouts
class FrameMeans(Reward):
    """Test reward over videos: score = mean pixel, dense = the (B, F, H, W) per-frame, per-pixel channel mean."""

    name, differentiable, granularity, layouts = "frame_means", False, "dense", ("video",)

    def compute(self, images, prompts, metadata):
        dense = images.mean(dim=2)
        return RewardOutput(dense.flatten(1).mean(dim=1), dense=dense)


def _clips(b: int = 4, n: int = 3, side: int = 16) -> torch.Tensor:
    return torch.rand(b, n, 3, side, side, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layout, fmt", [("video", "png"), ("multiview", "safetensors")])
def test_clips_and_view_sets_score_remotely_as_locally(jpeg, layout, fmt):
    url, _ = jpeg
    x = _clips()
    want = rewards.get("jpeg")(x, [""] * 4, layout=layout).scores
    assert torch.equal(remote(url, layout=layout, format=fmt, deadline_s=10)(x, [""] * 4).scores, want)
    health = httpx.get(f"{url}/health").json()
    assert health["protocol"] == 2 and health["layouts"] == ["image", "video", "multiview"]


def test_old_image_requests_keep_working(jpeg):
    """A protocol 1 body (no layout field), as clients before protocol 2 send it, is an image batch."""
    url, _ = jpeg
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    body = {"protocol": 1, "format": "png", "images": encode_png(x), "prompts": ["", ""], "sample_ids": ["a", "b"],
            "metadata": [None, None]}
    r = httpx.post(f"{url}/score", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["scores"] == rewards.get("jpeg")(x, ["", ""]).scores.tolist()


def test_layouts_are_checked_on_both_sides(batch):
    images, prompts, metas = batch
    with serving(rewards.get("shapes_checker")) as (url, faulty):
        client = remote(url, layout="video", deadline_s=10)
        with pytest.raises(RewardInputError, match=r"accepts video \(B, F, C, H, W\) samples only"):
            client(images, prompts, metas)  # refused before any request
        assert faulty.seen == 0
        with pytest.raises(RemoteRewardError, match=r"HTTP 422: reward 'shapes_checker' accepts image samples, got a "
                                                     r"video batch"):
            client(images[:, None].repeat(1, 2, 1, 1, 1), prompts, metas)


def test_clip_dense_maps_travel_losslessly():
    x = _clips()
    want = FrameMeans()(x, [""] * 4)
    with serving(FrameMeans()) as (url, _):
        got = remote(url, layout="video", format="safetensors", granularity="dense", deadline_s=10)(x, [""] * 4)
    assert want.dense.shape == (4, 3, 16, 16) and torch.equal(got.dense, want.dense)
    assert torch.equal(got.scores, want.scores)
