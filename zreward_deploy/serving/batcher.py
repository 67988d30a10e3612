"""The asyncio micro-batcher in front of any ``BaseScorer`` (docs/serving.md, "Batching").

Items of concurrent requests are coalesced into batches of up to ``max_batch_size`` after the oldest
waited at most ``max_wait_ms`` (only while more requests are on their way; a lone caller does not wait).
A large request is split into micro-batches: the oldest waiting request gets up to a quarter of every
batch (nothing starves), and the rest goes to the requests with the fewest items left, so 1-image callers
get into the next batch instead of waiting behind a 64-image request, and several large requests finish
one after another rather than all at the end of their deadlines (shortest remaining first). The queue is bounded in items: a request that does
not fit is refused at once (:class:`QueueFull`, HTTP 503 + Retry-After), never dropped later.

Scoring runs on one worker thread per model (the event loop only schedules), through the scorer's public
``score(..., errors="collect")``: a bad item is that item's error, and a batch whose scorer raises fails
only the requests that had items in it (:class:`BatchFailed`, HTTP 500), the server goes on. Items of one
batch share their dimensions (a batch is formed from requests asking for the same ones).

Batch invariance: an item's scores do not depend on what it was batched with, because the scorer pads
each prompt and masks the padding (tests/serving/test_batch_invariance.py checks it to 1e-6 in fp32).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ZRewardInputError
from ..scoring import BaseScorer
from .protocol import Outcome, item_scores


class QueueFull(Exception):
    """The request's items do not fit in the queue (HTTP 503 + Retry-After)."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before all its items were scored (HTTP 504)."""


class BatchFailed(Exception):
    """The scorer raised on a batch that held items of this request (HTTP 500; no score is returned)."""


@dataclass
class _Request:
    """One caller's items waiting to be scored, and the future its handler awaits."""

    prompts: list[str]
    images: list[torch.Tensor]
    dims: tuple[str, ...]
    deadline: float  # time.monotonic()
    future: asyncio.Future
    arrival: float = field(default_factory=time.monotonic)
    next_item: int = 0  # items before it are scheduled
    done: int = 0
    outcomes: list[Outcome | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outcomes = [None] * len(self.prompts)

    @property
    def waiting(self) -> int:
        return len(self.prompts) - self.next_item


BatchHook = Callable[[int, float, list[float]], None]
"""``hook(batch_size, execution_seconds, queue_wait_seconds_per_item)`` after each batch (metrics)."""


class MicroBatcher:
    """Coalesce items of concurrent requests into batches for ``scorer`` (see the module docstring).

    Args:
        scorer: any :class:`~zreward_deploy.scoring.BaseScorer` (torch, ONNX Runtime, TensorRT).
        max_batch_size: most items per batch.
        max_wait_ms: longest time the oldest waiting item waits for a batch to fill.
        max_queue_items: most items waiting (not yet in a running batch); past it, :class:`QueueFull`.
        coalesce: ``False`` scores each request on its own (no cross-request batching: the baseline).
        on_batch: called after each batch with its size, execution time and the items' queue waits.
        incoming: the number of requests admitted but not yet submitted (being decoded). An idle worker
            waits up to ``max_wait_ms`` for them only; with none on the way it starts at once, so a lone
            caller never pays the wait.
    """

    def __init__(
        self,
        scorer: BaseScorer,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue_items: int = 1024,
        coalesce: bool = True,
        on_batch: BatchHook | None = None,
        incoming: Callable[[], int] | None = None,
    ):
        self.scorer = scorer
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_items = max_queue_items
        self.coalesce = coalesce
        self.on_batch = on_batch
        self.incoming = incoming or (lambda: 1)  # unknown: assume more may come
        self.queued_items = 0
        self.batches_run = 0
        self.items_scored = 0
        self._pending: collections.OrderedDict[int, _Request] = collections.OrderedDict()
        self._ids = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        # One worker thread per model: forward passes of one model never overlap (the model's threads
        # already use the cores), and the event loop stays free to parse and queue.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zreward-scorer")

    # -- callers ----------------------------------------------------------------------------------
    async def submit(
        self, prompts: Sequence[str], images: Sequence[torch.Tensor], dims: Sequence[str], deadline_s: float
    ) -> list[Outcome]:
        """Score ``images[i]`` (``[3, S, S]`` in [0, 1]) against ``prompts[i]`` on ``dims``; one outcome per
        item (:class:`~.protocol.ItemScore` or the item's error), in order.

        Raises :class:`QueueFull` at once when the items do not fit, :class:`DeadlineExceeded` when
        ``deadline_s`` seconds pass first (its waiting items are withdrawn), :class:`BatchFailed` when
        the scorer raised on a batch holding its items.
        """
        if not prompts:
            return []
        self._ensure_started()
        n = len(prompts)
        if self.queued_items + n > self.max_queue_items:
            raise QueueFull(
                f"{self.queued_items} items queued; {n} more exceed the limit of {self.max_queue_items}"
            )
        loop = asyncio.get_running_loop()
        request = _Request(
            list(prompts), list(images), tuple(dims), time.monotonic() + deadline_s, loop.create_future()
        )
        rid = next(self._ids)
        self._pending[rid] = request
        self.queued_items += n
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), timeout=max(deadline_s, 0.0))
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"deadline of {deadline_s * 1000:.0f} ms passed") from None
        finally:
            self._withdraw(rid)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        """Stop the batching task and the worker thread (waiting requests get :class:`BatchFailed`)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for rid in list(self._pending):
            request = self._pending[rid]
            if not request.future.done():
                request.future.set_exception(BatchFailed("the server is shutting down"))
            self._withdraw(rid)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- internals ----------------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        # Started lazily on the loop that serves requests (uvicorn's or Ray Serve's), whichever it is.
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="zreward-batcher")

    def _withdraw(self, rid: int) -> None:
        request = self._pending.pop(rid, None)
        if request is not None:
            self.queued_items -= request.waiting
            request.next_item = len(request.prompts)

    def _expire(self) -> None:
        now = time.monotonic()
        for rid in [r for r, req in self._pending.items() if req.deadline <= now]:
            request = self._pending[rid]
            if not request.future.done():
                request.future.set_exception(DeadlineExceeded("deadline passed while queued"))
            self._withdraw(rid)

    def _compatible(self) -> list[tuple[int, _Request]]:
        """The waiting requests a batch may draw from: same dims as the oldest; only the oldest when
        batching across requests is off."""
        first = next(iter(self._pending.values()))
        if not self.coalesce:
            return [next(iter(self._pending.items()))]
        return [(rid, r) for rid, r in self._pending.items() if r.dims == first.dims and r.waiting]

    async def _run(self) -> None:
        while True:
            self._expire()
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # wait for a full batch, or until the oldest waiting request has waited max_wait
            oldest = next(iter(self._pending.values())).arrival
            while (
                self.coalesce
                and self.incoming() > 0
                and sum(r.waiting for _, r in self._compatible()) < self.max_batch_size
                and (remaining := oldest + self.max_wait - time.monotonic()) > 0
            ):
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            self._expire()
            if not self._pending:
                continue
            batch = self._take_batch()
            await self._execute(batch)

    def _take_batch(self) -> list[tuple[_Request, int]]:
        """Fill a batch: the oldest waiting request first gets up to a quarter of it (so no request
        starves), then requests with the fewest items left go first (1-image callers get into the next
        batch; large requests finish one after another instead of all at the end, which matters when
        they carry deadlines)."""
        sources = [r for _, r in self._compatible()]  # in arrival order
        batch: list[tuple[_Request, int]] = []

        def take(request: _Request, k: int) -> None:
            for _ in range(min(k, request.waiting, self.max_batch_size - len(batch))):
                batch.append((request, request.next_item))
                request.next_item += 1
                self.queued_items -= 1

        take(sources[0], max(1, self.max_batch_size // 4))
        for request in sorted(sources, key=lambda r: r.waiting):  # stable: arrival order among equals
            take(request, request.waiting)
        for rid in [rid for rid, r in self._pending.items() if not r.waiting]:
            del self._pending[rid]  # fully scheduled: it waits on its future only
        return batch

    async def _execute(self, batch: list[tuple[_Request, int]]) -> None:
        start = time.monotonic()
        dims = list(batch[0][0].dims)
        images = [request.images[i] for request, i in batch]
        prompts = [request.prompts[i] for request, i in batch]
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, self._score, images, prompts, dims)
        except Exception as exc:  # the scorer failed: every request with an item here fails, no other
            failed = BatchFailed(f"the scorer raised {type(exc).__name__}: {exc}")
            for request in {id(r): r for r, _ in batch}.values():
                if not request.future.done():
                    request.future.set_exception(failed)
                for rid in [rid for rid, r in self._pending.items() if r is request]:
                    self._withdraw(rid)
            return
        finally:
            self.batches_run += 1
        elapsed = time.monotonic() - start
        self.items_scored += len(batch)
        for (request, i), outcome in zip(batch, item_scores(result, range(len(batch))), strict=True):
            if isinstance(outcome, ZRewardInputError):  # the scorer named the batch row: name the item
                outcome = type(outcome)(i, outcome.reason)
            request.outcomes[i] = outcome
            request.done += 1
            if request.done == len(request.prompts) and not request.future.done():
                request.future.set_result(list(request.outcomes))
        if self.on_batch is not None:
            self.on_batch(len(batch), elapsed, [start - request.arrival for request, _ in batch])

    def _score(self, images: list[torch.Tensor], prompts: list[str], dims: list[str]) -> Any:
        return self.scorer.score(images, prompts, dimensions=dims, errors="collect")
