"""ZRewardClient (sync and async): bounded retries with backoff, and every response verified (length,
finiteness, model identity) instead of a short or NaN result passed on. Misbehaving servers are stub apps
on 127.0.0.1; the real server checks the happy path."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import numpy as np
import pytest

from .helpers import random_image

MODEL = {"name": "m", "checkpoint_sha256": "a" * 64, "version": "m@aaaa"}


def _valid(n, model=MODEL, score=3.0):
    return {
        "protocol_version": "1",
        "model": model,
        "reward_name": "zreward",
        "dimensions": ["realism"],
        "results": [{"zreward": {"score": score, "realism": score, "realism_var": 0.1}} for _ in range(n)],
        "errors": [{} for _ in range(n)],
        "scores": [score] * n,
    }


@pytest.fixture
def stub():
    """``stub(handler) -> url``: a server whose /v1/score answers ``handler(call_number, n_items)`` ->
    (status, json body, headers)."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from zreward_deploy.serving.config import ServeConfig
    from zreward_deploy.serving.server import BackgroundServer

    servers = []

    def start(handler):
        calls = []

        async def score(request):
            body = await request.body()
            n = _count(body, request)
            calls.append(n)
            status, payload, headers = handler(len(calls), n)
            # json.dumps writes NaN as the bare token NaN (not strict JSON), which Python's json reads back:
            # the way a careless server would send a non-finite score
            return Response(
                json.dumps(payload), status_code=status, headers=headers, media_type="application/json"
            )

        server = BackgroundServer(
            app=Starlette(routes=[Route("/v1/score", score, methods=["POST"])]), config=ServeConfig(port=0)
        )
        url = server.__enter__()
        servers.append(server)
        return url, calls

    yield start
    for server in servers:
        server.stop()


def _count(body, request):
    """Items in a protocol-v1 request (safetensors: from the request JSON in its header)."""
    if request.headers.get("content-type") == "application/x-safetensors":
        header = json.loads(body[8 : 8 + int.from_bytes(body[:8], "little")])
        return len(json.loads(header["__metadata__"]["request"])["requests"])
    return len(json.loads(body)["requests"])


def test_client_against_the_real_server_sync_and_async(scorer, serve):
    from zreward_deploy.serving.client import AsyncZRewardClient, ZRewardClient

    url, _ = serve(scorer)
    images = [random_image(i) for i in range(3)]
    want = scorer.score(images, ["a", "b", "c"])
    with ZRewardClient(url) as client:
        for binary in (True, False):
            result = client.score(images, ["a", "b", "c"], binary=binary)
            np.testing.assert_allclose(result.reward, want.reward.numpy(), atol=1e-6)
            np.testing.assert_allclose(result.dims["realism"], want.mean[:, 1].numpy(), atol=1e-6)
        mixed = client.score([random_image(0, (30, 30)), random_image(1, (40, 20))], "one prompt for all")
        assert mixed.errors == {} and np.isfinite(mixed.reward).all()  # different sizes: PNG in JSON
        failed = client.score(images[:2], ["fine", ""])
        assert np.isnan(failed.reward[1]) and "prompt is empty" in failed.errors[1]
        with pytest.raises(Exception, match="1 item"):
            failed.raise_for_errors()

    async def run():
        async with AsyncZRewardClient(url) as client:
            results = await asyncio.gather(*[client.score([images[i]], ["abc"[i]]) for i in range(3)])
        return np.concatenate([r.reward for r in results])

    np.testing.assert_allclose(asyncio.run(run()), want.reward.numpy(), atol=1e-6)


def test_retries_503_with_retry_after_then_succeeds(stub):
    from zreward_deploy.serving.client import ZRewardClient

    url, calls = stub(
        lambda k, n: (503, {"error": "full"}, {"Retry-After": "0"}) if k < 3 else (200, _valid(n), {})
    )
    with ZRewardClient(url, max_retries=3, backoff_s=0.01) as client:
        result = client.score([random_image(0)] * 2, ["a", "b"])
    assert calls == [2, 2, 2] and result.reward.tolist() == [3.0, 3.0]


def test_retries_are_bounded(stub):
    from zreward_deploy.serving.client import ZRewardClient, ZRewardClientError

    url, calls = stub(lambda k, n: (500, {"error": "boom"}, {}))
    started = time.monotonic()
    with (
        ZRewardClient(url, max_retries=2, backoff_s=0.01) as client,
        pytest.raises(ZRewardClientError, match="3 attempt"),
    ):
        client.score([random_image(0)], ["a"])
    assert len(calls) == 3 and time.monotonic() - started < 10


def test_dead_server_fails_after_bounded_retries():
    from zreward_deploy.serving.client import ZRewardClient, ZRewardClientError

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    client = ZRewardClient(f"http://127.0.0.1:{port}", max_retries=2, backoff_s=0.01)
    with client, pytest.raises(ZRewardClientError, match="ConnectError"):
        client.score([random_image(0)], ["a"])


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda n: {**_valid(n), "scores": [3.0] * (n - 1)}, "one entry per item"),
        (lambda n: {**_valid(n), "results": [{"zreward": {"score": 3.0}}] * (n - 1)}, "one entry per item"),
        (lambda n: _valid(n, score=float("nan")), "finite"),
        (lambda n: {**_valid(n), "model": {}}, "model identity"),
        (lambda n: [1, 2], "not a JSON object"),
    ],
)
def test_invalid_responses_are_errors_not_results(stub, bad, match):
    from zreward_deploy.serving.client import ZRewardClient, ZRewardClientError

    url, _ = stub(lambda k, n: (200, bad(n), {}))
    with ZRewardClient(url, max_retries=0) as client, pytest.raises(ZRewardClientError, match=match):
        client.score([random_image(0)] * 2, ["a", "b"])


def test_a_changed_model_is_an_error(stub):
    from zreward_deploy.serving.client import ZRewardClient, ZRewardClientError

    other = {**MODEL, "checkpoint_sha256": "b" * 64, "version": "m@bbbb"}
    url, _ = stub(lambda k, n: (200, _valid(n, model=MODEL if k == 1 else other), {}))
    with ZRewardClient(url, max_retries=0) as client:
        client.score([random_image(0)], ["a"])
        with pytest.raises(ZRewardClientError, match="model changed"):
            client.score([random_image(0)], ["a"])
