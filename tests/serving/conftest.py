"""Shared pieces of the serving tests: a scorer whose batches the test can hold, fail and count, images
as PNG/base64, and servers on 127.0.0.1 (any free port) that stop when the test ends.

Every server here binds loopback only and every request goes to it; load is bounded by the tests' own
counts (a few dozen requests at most)."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the `serve` extra (starlette, uvicorn, httpx) is not installed")
pytest.importorskip("uvicorn", reason="the `serve` extra (starlette, uvicorn, httpx) is not installed")
pytest.importorskip("httpx", reason="the `serve` extra (starlette, uvicorn, httpx) is not installed")

from zreward_deploy.scoring import Scorer

from .helpers import ControlledScorer


@pytest.fixture(scope="session")
def scorer(tiny):
    model, processor = tiny
    return Scorer(model, processor)


@pytest.fixture
def controlled(tiny):
    model, processor = tiny
    return ControlledScorer(model, processor)


@pytest.fixture
def serve():
    """``serve(scorer, **config) -> (url, service)``: a server per call, all stopped at the test's end."""
    from zreward_deploy.serving.config import ServeConfig
    from zreward_deploy.serving.server import BackgroundServer

    servers = []

    def start(scorer, model_dir=None, **config):
        server = BackgroundServer(scorer, ServeConfig(port=0, **config), model_dir=model_dir)
        url = server.__enter__()
        servers.append(server)
        return url, server.service

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shared_server(tiny):
    """One server with default settings and a plain scorer, for the tests that only read from it."""
    from zreward_deploy.serving.config import ServeConfig
    from zreward_deploy.serving.server import BackgroundServer

    model, processor = tiny
    with BackgroundServer(Scorer(model, processor), ServeConfig(port=0)) as url:
        yield url
