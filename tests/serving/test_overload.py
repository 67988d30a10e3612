"""Overload and faults on a real server: queue full -> 503 + Retry-After, a passed deadline -> 504 (its
items withdrawn), a scorer that raises -> 500 for that batch's requests only, the server keeps serving;
idempotent retries are free. The scorer's batches are held with a gate, so no timing is guessed."""

from __future__ import annotations

import concurrent.futures
import time

import httpx

from .helpers import random_image, v1_body


def _post(url, body, **kwargs):
    return httpx.post(f"{url}/v1/score", json=body, timeout=60, **kwargs)


def _wait(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_queue_full_is_503_with_retry_after_and_accepted_requests_complete(controlled, serve):
    url, service = serve(
        controlled, max_batch_size=2, max_queue_items=4, max_images_per_request=4, retry_after_s=2
    )
    controlled.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(_post, url, v1_body([random_image(0)] * 2, ["a", "b"]))
        _wait(lambda: controlled.entered.is_set())  # the first batch is on the scorer, held
        second = pool.submit(_post, url, v1_body([random_image(1)] * 4, ["c"] * 4))
        _wait(lambda: service.batcher.queued_items == 4)  # the queue is now full (4 items)
        refused = _post(url, v1_body([random_image(2)], ["d"]))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert "overloaded" in refused.json()["error"]
        assert httpx.get(f"{url}/v1/health").json()["queue_items"] == 4
        controlled.gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
    assert all(s is not None for s in second.result().json()["scores"])
    assert _post(url, v1_body([random_image(2)], ["d"])).status_code == 200  # room again
    metrics = httpx.get(f"{url}/metrics").text
    assert 'zreward_requests_total{route="/v1/score",status="503"} 1.0' in metrics


def test_deadline_is_504_and_the_items_are_withdrawn(controlled, serve):
    url, service = serve(controlled, max_batch_size=4)
    controlled.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        blocker = pool.submit(_post, url, v1_body([random_image(0)], ["a"]))
        _wait(lambda: controlled.entered.is_set())
        started = time.monotonic()
        late = _post(url, v1_body([random_image(1)] * 3, ["b"] * 3, deadline_ms=300))
        assert late.status_code == 504 and "deadline" in late.json()["error"]
        assert time.monotonic() - started < 10
        assert service.batcher.queued_items == 0  # withdrawn, not scored later
        controlled.gate.set()
        assert blocker.result().status_code == 200
    assert ["b"] not in [c[:1] for c in controlled.calls]


def test_scorer_exception_fails_only_that_batch_and_the_server_keeps_serving(controlled, serve):
    url, _ = serve(controlled, max_batch_size=8)
    controlled.gate.clear()
    controlled.fail_next = True
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        failing = pool.submit(_post, url, v1_body([random_image(0)] * 2, ["in the failing batch"] * 2))
        _wait(lambda: controlled.entered.is_set())
        other = pool.submit(_post, url, v1_body([random_image(1)], ["in the next batch"]))
        _wait(lambda: httpx.get(f"{url}/v1/health").json()["queue_items"] == 1)
        controlled.gate.set()
        bad, good = failing.result(), other.result()
    assert bad.status_code == 500 and "injected fault" in bad.json()["error"]
    assert "scores" not in bad.json() and "results" not in bad.json()  # a 500 never carries scores
    assert good.status_code == 200 and good.json()["scores"][0] is not None
    assert _post(url, v1_body([random_image(2)], ["after"])).status_code == 200


def test_idempotent_retry_is_answered_from_the_cache(controlled, serve):
    url, _ = serve(controlled)
    body = v1_body([random_image(0), random_image(1)], ["a", "b"])
    body["requests"][0]["idempotency_key"] = "sample-0-step-7"
    first = _post(url, body).json()
    assert len(controlled.calls) == 1 and first["cached"] == [False, False]
    retry = _post(url, body).json()
    assert retry["cached"] == [True, False]
    assert retry["results"][0] == first["results"][0]
    assert controlled.calls[1] == ["b"]  # only the item without a key was scored again
    # the same key asking for other dimensions is not a retry
    other = _post(url, {**body, "options": {"dims": ["realism"]}}).json()
    assert other["cached"] == [False, False]


def test_a_retry_while_the_first_attempt_is_in_flight_shares_its_forward_pass(controlled, serve):
    # the trainer's client timed out and retried while the first request was still on the scorer: the
    # retry must wait for that run, not score the item a second time
    url, service = serve(controlled, max_batch_size=4)
    body = v1_body([random_image(0)], ["a"])
    body["requests"][0]["idempotency_key"] = "sample-0-step-7"
    controlled.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(_post, url, body)
        _wait(lambda: controlled.entered.is_set())  # the first attempt is on the scorer, held
        retry = pool.submit(_post, url, body)
        _wait(lambda: service.sharing == 1)
        controlled.gate.set()
        first, retry = first.result().json(), retry.result().json()
    assert controlled.calls == [["a"]]  # one forward pass for both
    assert first["cached"] == [False] and retry["cached"] == [True]
    assert retry["results"] == first["results"]


def test_a_retry_waiting_on_a_failed_first_attempt_is_scored_itself(controlled, serve):
    url, service = serve(controlled, max_batch_size=4)
    body = v1_body([random_image(0)], ["a"])
    body["requests"][0]["idempotency_key"] = "sample-0-step-8"
    controlled.gate.clear()
    controlled.fail_next = True
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(_post, url, body)
        _wait(lambda: controlled.entered.is_set())
        retry = pool.submit(_post, url, body)
        _wait(lambda: service.sharing == 1)
        controlled.gate.set()
        first, retry = first.result(), retry.result()
    assert first.status_code == 500
    assert retry.status_code == 200 and retry.json()["cached"] == [False]
    assert retry.json()["scores"][0] is not None
    assert controlled.calls == [["a"], ["a"]]  # the failed run, then the retry's own
    assert not service._in_flight  # nothing left waiting


def test_idempotency_cache_expires_and_is_bounded():
    from zreward_deploy.serving.cache import IdempotencyCache

    now = [0.0]
    cache = IdempotencyCache(ttl_s=10, max_entries=2, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)
    assert cache.get("a") is None and cache.get("b") == 2 and len(cache) == 2
    now[0] = 11.0
    assert cache.get("b") is None and cache.get("c") is None
    off = IdempotencyCache(ttl_s=0, max_entries=2)
    off.put("a", 1)
    assert off.get("a") is None
