"""The micro-batcher through the server: items of concurrent requests are coalesced, a large request is
split and interleaved fairly with 1-image callers, batching off scores each request alone, and an item's
served scores equal the same item scored alone whatever it was batched with (batch invariance)."""

from __future__ import annotations

import concurrent.futures
import random
import time

import httpx
import numpy as np
import pytest

from .helpers import random_image, v1_body


def _post(url, body):
    return httpx.post(f"{url}/v1/score", json=body, timeout=60)


def _wait(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def _hold_then_send(controlled, url, service, bodies):
    """Hold the scorer on a first 1-image batch, queue ``bodies`` in order, release; -> responses."""
    controlled.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(len(bodies) + 1) as pool:
        blocker = pool.submit(_post, url, v1_body([random_image(99)], ["blocker"]))
        _wait(lambda: controlled.entered.is_set())
        futures = []
        queued = 0
        for body in bodies:
            futures.append(pool.submit(_post, url, body))
            queued += len(body["requests"])
            _wait(lambda q=queued: service.batcher.queued_items == q)  # arrival order is the send order
        controlled.gate.set()
        assert blocker.result().status_code == 200
        return [f.result() for f in futures]


def test_concurrent_one_image_requests_are_coalesced(controlled, serve):
    url, service = serve(controlled, max_batch_size=16, max_wait_ms=50)
    bodies = [v1_body([random_image(i)], [f"caller {i}"]) for i in range(6)]
    responses = _hold_then_send(controlled, url, service, bodies)
    assert all(r.status_code == 200 for r in responses)
    assert sorted(controlled.calls[1]) == sorted(f"caller {i}" for i in range(6))  # one batch of 6
    assert len(controlled.calls) == 2


def test_batching_off_scores_each_request_alone(controlled, serve):
    url, service = serve(controlled, max_batch_size=16, coalesce=False)
    bodies = [v1_body([random_image(i)], [f"caller {i}"]) for i in range(4)]
    responses = _hold_then_send(controlled, url, service, bodies)
    assert all(r.status_code == 200 for r in responses)
    assert controlled.calls[1:] == [[f"caller {i}"] for i in range(4)]


def test_large_request_is_split_and_interleaved_with_one_image_callers(controlled, serve):
    url, service = serve(controlled, max_batch_size=8, max_wait_ms=1)
    big = v1_body([random_image(0)] * 40, [f"big {i}" for i in range(40)])
    small = [v1_body([random_image(1)], [f"small {i}"]) for i in range(2)]
    responses = _hold_then_send(controlled, url, service, [big, *small])
    assert all(r.status_code == 200 for r in responses)
    batches = controlled.calls[1:]
    assert all(len(b) <= 8 for b in batches) and sum(len(b) for b in batches) == 42
    # the first batch after the held one holds both 1-image callers, beside 6 items of the big request,
    # instead of the 1-image callers waiting for all 5 micro-batches of the big one
    assert {"small 0", "small 1"} <= set(batches[0]) and len(batches[0]) == 8
    # the big request's items come back in its order
    big_out = responses[0].json()
    assert len(big_out["scores"]) == 40 and all(s is not None for s in big_out["scores"])


def test_served_scores_equal_the_item_scored_alone_in_random_mixed_batches(scorer, serve):
    """Batch invariance, fp32: |Δ| ≤ 1e-6 on the reward, the means, the variances and the distributions,
    whatever the item was batched with (random request sizes, prompts of 1 to 30 words, image sizes)."""
    rng = random.Random(0)
    words = [
        "red",
        "blue",
        "green",
        "cube",
        "sphere",
        "cone",
        "on",
        "under",
        "beside",
        "a",
        "the",
        "two",
        "three",
        "wooden",
        "table",
        "large",
        "small",
    ]
    items = []
    for i in range(24):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        items.append((random_image(100 + i, (rng.randint(20, 70), rng.randint(20, 70))), prompt))
    url, _ = serve(scorer, max_batch_size=8, max_wait_ms=20)
    requests, k = [], 0
    while k < len(items):
        n = rng.randint(1, 7)
        requests.append(items[k : k + n])
        k += n
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        outs = list(
            pool.map(
                lambda group: _post(url, v1_body(*zip(*group, strict=False), **{"return": "probs"})), requests
            )
        )
    served = [(r.json(), j) for r in outs for j in range(len(r.json()["scores"]))]
    assert len(served) == len(items)
    worst = 0.0
    for (out, j), (image, prompt) in zip(served, items, strict=True):
        ref = scorer.score([image], [prompt])
        entry = out["results"][j]["zreward"]
        got = (
            [entry["score"]]
            + [entry[d] for d in ref.dimensions]
            + [entry[f"{d}_var"] for d in ref.dimensions]
        )
        want = [float(ref.reward[0]), *ref.mean[0].tolist(), *(ref.std[0] ** 2).tolist()]
        worst = max(worst, float(np.abs(np.subtract(got, want)).max()))
        probs = np.array([out["probs"][j][d] for d in ref.dimensions])
        worst = max(worst, float(np.abs(probs - ref.probs[0].numpy()).max()))
    assert worst <= 1e-6, f"served vs alone: max |Δ| = {worst:.3g}"


@pytest.mark.parametrize("n", [1, 3])
def test_batcher_refuses_what_does_not_fit_at_once(scorer, n):
    import asyncio

    from zreward_deploy.serving.batcher import MicroBatcher, QueueFull

    async def run():
        batcher = MicroBatcher(scorer, max_batch_size=2, max_queue_items=2)
        image = scorer.processor.model_image(random_image(0), 0)
        try:
            if n > 2:
                with pytest.raises(QueueFull):
                    await batcher.submit(["x"] * n, [image] * n, ("realism",), 10.0)
            else:
                (out,) = await batcher.submit(["x"], [image], ("realism",), 10.0)
                assert np.isfinite(out.reward)
            assert batcher.queued_items == 0
        finally:
            await batcher.close()

    asyncio.run(run())


def test_a_lone_caller_does_not_wait_for_the_batch_timer(scorer, serve):
    """With nothing else on its way, an idle worker starts a batch at once instead of waiting
    ``max_wait_ms`` for more items (here 3 s): the server's own queue-wait histogram shows it."""
    url, _ = serve(scorer, max_wait_ms=3000)
    for i in range(2):
        assert _post(url, v1_body([random_image(i)], ["alone"])).status_code == 200
    metrics = httpx.get(f"{url}/metrics").text
    assert 'zreward_queue_wait_seconds_bucket{le="1.0"} 2.0' in metrics, metrics


def test_items_on_their_way_are_waited_for(controlled, serve):
    """The other side of the rule above: requests still being decoded when the worker falls idle are
    waited for (up to max_wait_ms) and join the batch."""
    import asyncio

    from zreward_deploy.serving.batcher import MicroBatcher

    async def run():
        incoming = [1]
        batcher = MicroBatcher(controlled, max_batch_size=8, max_wait_ms=5000, incoming=lambda: incoming[0])
        image = controlled.processor.model_image(random_image(0), 0)
        first = asyncio.ensure_future(batcher.submit(["first"], [image], ("realism",), 30.0))
        await asyncio.sleep(0.2)  # the batcher waits: one more request is on its way
        incoming[0] = 0
        second = asyncio.ensure_future(batcher.submit(["second"], [image], ("realism",), 30.0))
        await asyncio.gather(first, second)
        await batcher.close()

    asyncio.run(run())
    assert controlled.calls == [["first", "second"]]


def test_large_requests_finish_one_after_another_and_small_callers_go_first(controlled, serve):
    """Two 16-image requests and three 1-image callers, batches of 8: the callers go into the next batch,
    the older large request finishes before the other starts (no interleaving that would make both miss
    their deadlines), and the oldest request keeps a share of every batch (nothing starves)."""
    url, service = serve(controlled, max_batch_size=8, max_wait_ms=1)
    big_a = v1_body([random_image(0)] * 16, [f"A {i}" for i in range(16)])
    small = [v1_body([random_image(1)], [f"small {i}"]) for i in range(3)]
    big_b = v1_body([random_image(2)] * 16, [f"B {i}" for i in range(16)])
    responses = _hold_then_send(controlled, url, service, [big_a, *small, big_b])
    assert all(r.status_code == 200 for r in responses)
    batches = [{p.split()[0] for p in b} for b in controlled.calls[1:]]
    assert {"small"} <= batches[0] and "A" in batches[0]  # the callers, beside the oldest request's share
    last_a = max(i for i, b in enumerate(batches) if "A" in b)
    first_b = min(i for i, b in enumerate(batches) if "B" in b)
    assert first_b >= last_a, batches
