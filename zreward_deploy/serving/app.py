"""The ASGI app of ``zreward serve`` (Starlette): protocol v1 and the compatibility routes, all on one
micro-batcher (docs/serving.md).

| route | body | for |
|---|---|---|
| ``POST /v1/score`` | protocol v1 JSON, or ``application/x-safetensors`` | everyone; UniRL's remote backend |
| ``POST /score`` | the same (UniRL's path) | UniRL |
| ``POST /flowgrpo`` | ``{"images": [b64], "prompts", "metadata"}`` -> ``{"outputs", "scores"}`` | Flow-GRPO forks |
| ``POST /compute`` | ``{"prompt"/"prompts", "image"/"images"}`` -> ``{"rewards"}`` | Flow-Factory remote |
| ``GET /v1/health``, ``GET /health`` | | liveness, model identity, queue depth |
| ``GET /v1/rewards``, ``GET /rewards`` | | the reward's name and sub-metrics |
| ``GET /metrics`` | | Prometheus |

Statuses: 200 (every item is in ``results`` or ``errors``), 400 malformed, 401 no or wrong token, 413 too
large, 415 not JSON or safetensors (a pickle body is refused here, never unpickled), 503 + Retry-After
queue full, 504 deadline passed, 500 the scorer raised on a batch (no score is returned).
"""

from __future__ import annotations

import asyncio
import hmac
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from ..errors import MissingDependencyError
from ..scoring import BaseScorer
from .batcher import BatchFailed, DeadlineExceeded, MicroBatcher, QueueFull
from .cache import IdempotencyCache
from .config import ServeConfig
from .metrics import ServeMetrics
from .protocol import (
    PROTOCOL_VERSION,
    SAFETENSORS_TYPE,
    Item,
    ItemScore,
    Outcome,
    ProtocolError,
    ScoreOptions,
    error_text,
    load_json,
    model_identity,
    parse_json_request,
    parse_options,
    parse_prompt_image_lists,
    parse_safetensors_request,
    v1_response,
)


class HTTPFailure(Exception):
    """A request answered with an error status (and optional headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class _Arrival:
    """One admitted request on its way to the batcher; ``leave()`` (idempotent) when it gets there or fails."""

    def __init__(self, service: ZRewardService):
        self.service = service
        self.left = False
        service.decoding += 1

    def leave(self) -> None:
        if not self.left:
            self.left = True
            self.service.decoding -= 1


class ZRewardService:
    """What every route shares: the scorer, its batcher, the cache, the metrics and the identity."""

    def __init__(
        self,
        scorer: BaseScorer,
        config: ServeConfig,
        model_dir: str | os.PathLike | None = None,
        replica_id: str | None = None,
    ):
        self.scorer = scorer
        self.config = config
        self.identity = model_identity(scorer, model_dir, config.model_name)
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}"
        self.metrics = ServeMetrics(queue_depth=lambda: self.batcher.queued_items)
        self.batcher = MicroBatcher(
            scorer,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            max_queue_items=config.max_queue_items,
            coalesce=config.coalesce,
            on_batch=self.metrics.on_batch,
            incoming=lambda: self.decoding,
        )
        self.cache = IdempotencyCache(config.idempotency_ttl_s, config.idempotency_max_entries)
        # (idempotency_key, dims) -> the future of an item being scored now: a retry that arrives while the
        # first attempt is still queued or on the scorer waits for it instead of scoring the item twice
        self._in_flight: dict[Any, asyncio.Future[ItemScore | None]] = {}
        self.sharing = 0  # items of retries waiting for their first attempt now
        self.state = "ok"
        self._decodes: asyncio.Semaphore | None = None
        self.decoding = 0  # requests admitted and being read or decoded: items on their way to the batcher

    def admit(self) -> None:
        """503 before the body is read or decoded when the queue is already full: an overloaded server
        spends nothing on requests it cannot take (the exact check, with the request's item count, is
        the batcher's)."""
        if self.batcher.queued_items >= self.config.max_queue_items:
            raise HTTPFailure(
                503,
                f"overloaded: {self.batcher.queued_items} items queued (limit {self.config.max_queue_items})",
                {"Retry-After": str(self.config.retry_after_s)},
            )

    async def decode(self, parse: Callable[..., Any], *args: Any) -> Any:
        """``parse(*args)`` on a worker thread, at most ``max_parallel_decodes`` at once: decoded images
        are the server's largest transient memory, so their number in flight is bounded."""
        if self._decodes is None:  # created on the serving loop
            self._decodes = asyncio.Semaphore(self.config.max_parallel_decodes)
        async with self._decodes:
            return await asyncio.to_thread(parse, *args)

    # -- the shared path of every scoring route -----------------------------------------------------
    async def score_items(
        self, items: list[Item], options: ScoreOptions, started: float, arrival: _Arrival | None = None
    ) -> tuple[list[Outcome], list[bool]]:
        """Outcomes of ``items`` in order: decode errors kept, cached items looked up, items whose key is
        being scored now (a retry of a request still in flight) shared with that run, the rest batched."""
        outcomes: list[Outcome | None] = [item.error for item in items]
        cached = [False] * len(items)
        todo: list[int] = []
        waiting: list[tuple[int, asyncio.Future[ItemScore | None]]] = []
        owned: dict[Any, asyncio.Future[ItemScore | None]] = {}
        for k, item in enumerate(items):
            if item.error is not None:
                continue
            key = (item.idempotency_key, options.dims) if item.idempotency_key else None
            hit = self.cache.get(key) if key is not None else None
            if hit is not None:
                outcomes[k], cached[k] = hit, True
            elif key is not None and key in self._in_flight:
                waiting.append((k, self._in_flight[key]))
            else:
                todo.append(k)
                if key is not None:
                    owned[key] = self._in_flight[key] = asyncio.get_running_loop().create_future()
        if arrival is not None:
            arrival.leave()  # its items are in the queue from the submit below (no await in between)
        try:
            if todo:
                await self._submit(items, todo, options, started, outcomes)
        finally:  # the retries waiting on this request's items get their scores, or None: score it yourself
            for key, future in owned.items():
                outcome = next(
                    (outcomes[k] for k in todo if (items[k].idempotency_key, options.dims) == key), None
                )
                future.set_result(outcome if isinstance(outcome, ItemScore) else None)
                if self._in_flight.get(key) is future:
                    del self._in_flight[key]
        retry = []
        for k, future in waiting:
            remaining = options.deadline_ms / 1000.0 - (time.monotonic() - started)
            self.sharing += 1
            try:
                shared = await asyncio.wait_for(asyncio.shield(future), max(remaining, 0.0))
            except TimeoutError:
                raise HTTPFailure(
                    504, "the deadline passed while the first attempt of an item was scored"
                ) from None
            finally:
                self.sharing -= 1
            if shared is None:  # the first attempt failed (500, 503, 504, a per-item error): score it here
                retry.append(k)
            else:
                outcomes[k], cached[k] = shared, True
        if retry:
            await self._submit(items, retry, options, started, outcomes)
        for outcome, hit in zip(outcomes, cached, strict=True):
            label = "cached" if hit else "scored" if isinstance(outcome, ItemScore) else "error"
            self.metrics.items.labels(label).inc()
        return outcomes, cached  # type: ignore[return-value]

    async def _submit(
        self, items: list[Item], todo: list[int], options: ScoreOptions, started: float, outcomes: list
    ) -> None:
        """Score ``items[k] for k in todo`` on the batcher into ``outcomes`` (and the cache); batcher
        failures become the request's HTTP status."""
        remaining = options.deadline_ms / 1000.0 - (time.monotonic() - started)
        if remaining <= 0:
            raise HTTPFailure(504, "the deadline passed while the request was decoded")
        try:
            scored = await self.batcher.submit(
                [items[k].prompt for k in todo], [items[k].image for k in todo], options.dims, remaining
            )
        except QueueFull as exc:
            raise HTTPFailure(
                503, f"overloaded: {exc}", {"Retry-After": str(self.config.retry_after_s)}
            ) from None
        except DeadlineExceeded as exc:
            raise HTTPFailure(504, str(exc)) from None
        except BatchFailed as exc:
            raise HTTPFailure(500, str(exc)) from None
        for k, outcome in zip(todo, scored, strict=True):
            if isinstance(outcome, ItemScore):
                if items[k].idempotency_key:
                    self.cache.put((items[k].idempotency_key, options.dims), outcome)
            else:  # the batcher named the item by its place in `todo`: name it by its place in the request
                outcome = type(outcome)(k, outcome.reason)
            outcomes[k] = outcome

    def arrive(self) -> _Arrival:
        """Count a request from admission until its items reach the batcher (:meth:`_Arrival.leave`)."""
        return _Arrival(self)

    def health(self) -> dict[str, Any]:
        return {
            "protocol_version": PROTOCOL_VERSION,
            "state": self.state,
            "model": self.identity,
            "replica": self.replica_id,
            "queue_items": self.batcher.queued_items,
            "max_queue_items": self.config.max_queue_items,
            "max_batch_size": self.config.max_batch_size,
            "batches_run": self.batcher.batches_run,
            "items_scored": self.batcher.items_scored,
        }

    def rewards(self) -> dict[str, Any]:
        dims = self.identity["dimensions"]
        return {
            "protocol_version": PROTOCOL_VERSION,
            "model": self.identity,
            "rewards": {
                self.config.reward_name: {
                    "sub_metrics": ["score", *[m for d in dims for m in (d, f"{d}_var")]],
                    "dimensions": dims,
                    "default_dimensions": self.identity["default_dimensions"],
                    "score_values": self.identity["score_values"],
                }
            },
        }


def create_app(
    scorer: BaseScorer,
    config: ServeConfig | None = None,
    model_dir: str | os.PathLike | None = None,
    replica_id: str | None = None,
) -> Any:
    """The Starlette app serving ``scorer`` (routes in the module docstring). ``app.state.service`` is the
    :class:`ZRewardService` (its batcher, cache, metrics)."""
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(exc.name or "starlette", "serve", "zreward serve") from exc

    config = config or ServeConfig()
    service = ZRewardService(scorer, config, model_dir, replica_id)
    base_headers = {
        "x-zreward-protocol-version": PROTOCOL_VERSION,
        "x-zreward-model-sha256": service.identity["checkpoint_sha256"],
        "x-zreward-replica": service.replica_id,
    }

    def failure(exc: HTTPFailure | ProtocolError, route: str) -> Response:
        status = exc.status
        service.metrics.requests.labels(route, str(status)).inc()
        body = {
            "protocol_version": PROTOCOL_VERSION,
            "status": status,
            "error": exc.message,
            "model": service.identity,
        }
        return JSONResponse(body, status_code=status, headers={**base_headers, **getattr(exc, "headers", {})})

    def ok(body: dict[str, Any], route: str) -> Response:
        service.metrics.requests.labels(route, "200").inc()
        return JSONResponse(body, headers=base_headers)

    def scoring_route(route: str, handler: Callable[..., Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            started = time.monotonic()
            try:
                check_token(request, config.token)
                kind = content_kind(request)  # before the body is read: a pickle is refused unread
                service.admit()
                arrival = service.arrive()
                try:
                    body = await read_body(request, config.max_body_bytes)
                    return ok(await handler(kind, body, started, arrival), route)
                finally:
                    arrival.leave()
            except (HTTPFailure, ProtocolError) as exc:
                return failure(exc, route)

        return endpoint

    async def v1_score(kind: str, body: bytes, started: float, arrival: Any) -> dict[str, Any]:
        parse = parse_safetensors_request if kind == "safetensors" else parse_json_request
        items, options, _ = await service.decode(parse, body, scorer, config)
        outcomes, cached = await service.score_items(items, options, started, arrival)
        return v1_response(outcomes, items, options, service.identity, config.reward_name, cached)

    async def flowgrpo(kind: str, body: bytes, started: float, arrival: Any) -> dict[str, Any]:
        require_json(kind)
        payload = await asyncio.to_thread(load_json, body)
        if not isinstance(payload, dict):
            raise ProtocolError(400, "expected a JSON object {images, prompts, metadata}")
        options = parse_options(payload.get("options"), scorer, config)
        items = await service.decode(
            parse_prompt_image_lists, payload.get("prompts"), payload.get("images"), scorer, config
        )
        outcomes, _ = await service.score_items(items, options, started, arrival)
        scores = [o.reward if isinstance(o, ItemScore) else None for o in outcomes]
        return {
            "outputs": scores,
            "scores": scores,
            "errors": [None if isinstance(o, ItemScore) else error_text(o) for o in outcomes],
            "model": service.identity,
        }

    async def compute(kind: str, body: bytes, started: float, arrival: Any) -> dict[str, Any]:
        require_json(kind)
        payload = await asyncio.to_thread(load_json, body)
        if not isinstance(payload, dict):
            raise ProtocolError(400, "expected a JSON object {prompt(s), image(s)}")
        # Flow-Factory's client sends prompt/image, its template server reads prompts/images: take both
        prompts = payload.get("prompts", payload.get("prompt"))
        images = payload.get("images", payload.get("image"))
        options = parse_options(payload.get("options"), scorer, config)
        items = await service.decode(parse_prompt_image_lists, prompts, images, scorer, config)
        outcomes, _ = await service.score_items(items, options, started, arrival)
        return {
            "rewards": [o.reward if isinstance(o, ItemScore) else None for o in outcomes],
            "errors": [None if isinstance(o, ItemScore) else error_text(o) for o in outcomes],
            "model": service.identity,
        }

    async def legacy_root(request: Request) -> Response:
        # Flow-GRPO's reward-server protocol posts pickle here; it is refused unread.
        return failure(
            ProtocolError(
                415,
                "pickle bodies are never accepted; send protocol v1 JSON to /v1/score or "
                "Flow-GRPO-style JSON to /flowgrpo (docs/serving.md)",
            ),
            "/",
        )

    async def health(request: Request) -> Response:
        return JSONResponse(service.health(), headers=base_headers)

    async def rewards(request: Request) -> Response:
        try:
            check_token(request, config.token)
        except HTTPFailure as exc:
            return failure(exc, "/v1/rewards")
        return JSONResponse(service.rewards(), headers=base_headers)

    async def metrics(request: Request) -> Response:
        try:
            check_token(request, config.token)
        except HTTPFailure as exc:
            return failure(exc, "/metrics")
        data, content_type = service.metrics.render()
        return Response(data, media_type=content_type)

    async def lifespan(app: Any):
        yield
        service.state = "stopping"
        await service.batcher.close()

    import contextlib

    routes = [
        Route("/v1/score", scoring_route("/v1/score", v1_score), methods=["POST"]),
        Route("/score", scoring_route("/score", v1_score), methods=["POST"]),
        Route("/flowgrpo", scoring_route("/flowgrpo", flowgrpo), methods=["POST"]),
        Route("/compute", scoring_route("/compute", compute), methods=["POST"]),
        Route("/", legacy_root, methods=["POST"]),
        Route("/v1/health", health, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/rewards", rewards, methods=["GET"]),
        Route("/rewards", rewards, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=contextlib.asynccontextmanager(lifespan))
    app.state.service = service
    return app


def check_token(request: Any, token: str | None) -> None:
    """401 unless ``Authorization: Bearer <token>`` matches (constant-time comparison); no token: open."""
    if token is None:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPFailure(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


def content_kind(request: Any) -> str:
    """``json`` or ``safetensors`` from the Content-Type; anything else (pickle, octet-stream) is 415."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == SAFETENSORS_TYPE:
        return "safetensors"
    if media == "application/json" or media.endswith("+json"):
        return "json"
    raise HTTPFailure(
        415,
        f"Content-Type {media or '(none)'!r} is not served: send application/json or {SAFETENSORS_TYPE} "
        "(pickle is never accepted)",
    )


def require_json(kind: str) -> None:
    if kind != "json":
        raise HTTPFailure(415, "this route takes application/json")


async def read_body(request: Any, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes (from Content-Length
    before reading, else while streaming): an oversized body is never held in memory whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPFailure(413, f"body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPFailure(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
