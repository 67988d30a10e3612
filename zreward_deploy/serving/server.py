"""Run the app on uvicorn: in the foreground (``zreward serve``) or on a background thread that stops
itself (tests, ``zreward bench serve``, notebooks)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import MissingDependencyError
from ..scoring import BaseScorer
from .app import create_app
from .config import ServeConfig


def _uvicorn() -> Any:
    try:
        import uvicorn
    except ModuleNotFoundError as exc:
        raise MissingDependencyError("uvicorn", "serve", "zreward serve") from exc
    return uvicorn


def _uvicorn_config(app: Any, config: ServeConfig, log_level: str) -> Any:
    uvicorn = _uvicorn()
    # One process, one event loop: the model lives in this process; scale out with --ray or more servers.
    # h11 and asyncio, the pure-Python defaults, so the server behaves the same wherever it is installed.
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        loop="asyncio",
        http="h11",
        lifespan="on",
        limit_concurrency=config.max_connections,
        timeout_graceful_shutdown=5,
    )


def serve_forever(
    scorer: BaseScorer,
    config: ServeConfig,
    model_dir: str | os.PathLike | None = None,
    on_started: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM: uvicorn stops accepting, finishes, and returns).
    ``on_started(url)`` is called once the socket listens (with the real port when ``port=0``)."""
    uvicorn = _uvicorn()
    server = uvicorn.Server(_uvicorn_config(create_app(scorer, config, model_dir), config, log_level))
    if on_started is not None:
        threading.Thread(target=_announce, args=(server, on_started), daemon=True).start()
    server.run()


def _announce(server: Any, on_started: Callable[[str], None]) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.01)
    if server.started:
        on_started(server_url(server))


def server_url(server: Any) -> str:
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return f"http://{host}:{port}"


class BackgroundServer:
    """``with BackgroundServer(scorer, config) as url: ...``: the server on a daemon thread, stopped and
    joined on exit. Binds ``config.host`` (loopback by default) on ``config.port`` (0: any free port).
    ``app=`` serves another ASGI app instead of the scorer's (test stubs)."""

    def __init__(
        self,
        scorer: BaseScorer | None = None,
        config: ServeConfig | None = None,
        model_dir: str | os.PathLike | None = None,
        start_timeout_s: float = 30.0,
        app: Any = None,
    ):
        self.config = config or ServeConfig(port=0)
        self.app = app if app is not None else create_app(scorer, self.config, model_dir)
        self.service = getattr(self.app.state, "service", None)
        self._server = _uvicorn().Server(_uvicorn_config(self.app, self.config, "warning"))
        self._thread = threading.Thread(target=self._server.run, name="zreward-serve", daemon=True)
        self.start_timeout_s = start_timeout_s
        self.url = ""

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                raise RuntimeError(f"the server did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.01)
        self.url = server_url(self._server)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
