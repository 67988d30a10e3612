"""Load benchmark of ``zreward serve``: throughput and latency with the micro-batcher against the same
server scoring each request alone, in one run; then an overload run (docs/serving.md, docs/benchmarks.md).

Two servers are started as subprocesses on 127.0.0.1 (any free port) on the same saved preset: one with
cross-request batching (``--coalesce``), one without (``--no-coalesce``: each request is one scorer call,
the per-request baseline). For every (images per request, concurrent clients) cell, closed-loop clients
(each sends a request, waits for the answer, sends the next) run for ``duration_s``; requests carry a
deadline (``deadline_ms``), so the drain after the window is bounded too. A 503 makes that client wait
``Retry-After``. Rows: images/s of the answered (200) requests over the cell's wall time, p50/p99 latency
of those, counts of every status.

Overload run (batched server): 1-image requests arrive open-loop at ``overload_factor`` x the capacity
measured in the sweep, for ``overload_s``; each carries a unique ``request_id``. Recorded: every request
answered (200 or 503, counted; any other outcome is counted too), no accepted request lost or answered
twice (each 200 echoes its own ``request_id`` exactly once), and the server's peak resident memory
(``VmHWM``) against its memory after warm-up.

Loopback only; every loop is bounded in count and time; the servers are stopped at the end.

Run:  zreward bench serve [--preset bench-small] [--clients 1,8,32,128] [--request-images 1,64]
      [--duration-s 10] [--overload-s 30] [--out runs/bench_serve]
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zreward_deploy.bench.common import environment, load_average, markdown_table, percentile, write_rows

PROMPTS = (
    "a red cube on a wooden table",
    "two blue spheres beside a green cone",
    "a small yellow triangle under a large purple square, seen from above on a grey floor",
    "three cubes",
)


@dataclass
class ServeBenchConfig:
    """Settings of ``zreward bench serve``."""

    preset: str = field(default="bench-small", metadata={"help": "model preset served (random weights)"})
    clients: tuple[int, ...] = field(
        default=(1, 8, 32, 128), metadata={"help": "concurrent clients per cell"}
    )
    request_images: tuple[int, ...] = field(default=(1, 64), metadata={"help": "images per request"})
    duration_s: float = field(default=10.0, metadata={"help": "seconds each cell sends new requests"})
    deadline_ms: float = field(
        default=30_000.0, metadata={"help": "deadline of each sweep request (bounds the drain after a cell)"}
    )
    max_batch_size: int = field(default=32, metadata={"help": "the servers' --max-batch-size"})
    max_wait_ms: float = field(default=5.0, metadata={"help": "the batched server's --max-wait-ms"})
    max_queue_items: int = field(default=256, metadata={"help": "the servers' --max-queue-items"})
    image_size: int = field(
        default=256, metadata={"help": "side of the uint8 images sent (resized by the server)"}
    )
    encoding: str = field(
        default="safetensors",
        metadata={
            "help": "request body: safetensors (uint8 fast path) or png (JSON)",
            "choices": ("safetensors", "png"),
        },
    )
    sweep: bool = field(
        default=True, metadata={"help": "run the throughput sweep (off: the overload run only)"}
    )
    overload_s: float = field(default=30.0, metadata={"help": "seconds of the overload run (0: skip it)"})
    overload_queue_items: int = field(
        default=64,
        metadata={"help": "--max-queue-items of the overload run's server (small, so the bound is reached)"},
    )
    overload_factor: float = field(
        default=3.0, metadata={"help": "offered load of the overload run / capacity"}
    )
    out: str = field(default="runs/bench_serve", metadata={"help": "output directory (JSONL, CSV, Markdown)"})
    seed: int = field(default=0, metadata={"help": "seed of the preset's weights and of the images"})
    device: str = field(default="cpu", metadata={"help": "the servers' --device (cpu or cuda)"})

    def __post_init__(self) -> None:
        if (
            not self.clients
            or min(self.clients) < 1
            or not self.request_images
            or min(self.request_images) < 1
        ):
            raise ValueError("clients and request_images must be non-empty lists of positive integers")
        if self.overload_queue_items < 1:
            raise ValueError("overload_queue_items must be >= 1")
        if max(self.request_images) > self.max_queue_items:
            raise ValueError(
                f"request_images {max(self.request_images)} exceed max_queue_items {self.max_queue_items}"
            )
        if self.duration_s <= 0 or self.deadline_ms <= 0 or self.overload_s < 0 or self.overload_factor <= 0:
            raise ValueError("duration_s, deadline_ms and overload_factor must be > 0, overload_s >= 0")


# --------------------------------------------------------------------------------------------------
# Servers (subprocesses) and request bodies
# --------------------------------------------------------------------------------------------------


class ServerProcess:
    """``zreward serve`` in a subprocess on 127.0.0.1 with any free port; stopped by SIGINT on exit."""

    def __init__(
        self, model_dir: Path, config: ServeBenchConfig, coalesce: bool, queue_items: int | None = None
    ):
        cmd = [sys.executable, "-m", "zreward_deploy.cli", "serve", "--model", str(model_dir), "--port", "0",
               "--max-batch-size", str(config.max_batch_size), "--max-wait-ms", str(config.max_wait_ms),
               "--max-queue-items", str(queue_items or config.max_queue_items),
               "--max-images-per-request", str(min(max(config.request_images), queue_items or config.max_queue_items)),
               "--coalesce" if coalesce else "--no-coalesce", "--device", config.device]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()  # the announcement, once the socket listens
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"zreward serve did not start: {line!r}")
        self.url = match.group(1)

    def rss_kib(self, field_name: str = "VmRSS") -> int | None:
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(rf"^{field_name}:\s+(\d+) kB", text, flags=re.M)
        return int(match.group(1)) if match else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_body(
    images: Any, n: int, encoding: str, deadline_ms: float, request_id: str | None = None
) -> tuple[bytes, str]:
    """A protocol-v1 request of ``n`` images (no idempotency keys: every request is scored)."""
    from zreward_deploy.serving.client import encode_request

    if request_id is not None:  # the overload run: one id per request, echoed in `identities`
        return _with_request_id(images[0], PROMPTS[0], encoding, deadline_ms, request_id)
    return encode_request(
        [images[i % len(images)] for i in range(n)], [PROMPTS[i % len(PROMPTS)] for i in range(n)],
        returns=("score", "dims"), deadline_ms=deadline_ms, idempotency_keys=[None] * n,
        binary=encoding == "safetensors",
    )  # fmt: skip


def _with_request_id(
    image: Any, prompt: str, encoding: str, deadline_ms: float, request_id: str
) -> tuple[bytes, str]:
    import numpy as np

    request = {"protocol_version": "1", "requests": [{"text": prompt, "request_id": request_id}],
               "options": {"return": "score", "deadline_ms": deadline_ms}}  # fmt: skip
    if encoding == "safetensors":
        from safetensors.numpy import save

        return save(
            {"images": np.ascontiguousarray(image[None])}, metadata={"request": json.dumps(request)}
        ), ("application/x-safetensors")
    from zreward_deploy.serving.client import encode_request

    body, _ = encode_request([image], [prompt], binary=False)
    payload = json.loads(body)
    payload["requests"][0]["request_id"] = request_id
    payload["options"] = request["options"]
    return json.dumps(payload).encode(), "application/json"


# --------------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------------


async def closed_loop(url: str, body: bytes, content_type: str, n_images: int, clients: int,
                      duration_s: float, timeout_s: float) -> dict[str, Any]:  # fmt: skip
    """``clients`` closed-loop clients for ``duration_s`` -> images/s, latency percentiles, statuses."""
    import httpx

    statuses: collections.Counter = collections.Counter()
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, trust_env=False) as http:
        start = time.monotonic()
        stop = start + duration_s

        async def client() -> None:
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    r = await http.post(
                        f"{url}/v1/score", content=body, headers={"Content-Type": content_type}
                    )
                    status: Any = r.status_code
                except httpx.TransportError as exc:
                    status, r = type(exc).__name__, None
                statuses[status] += 1
                if status == 200:
                    latencies.append((time.perf_counter() - t) * 1000)
                elif status == 503:
                    await asyncio.sleep(
                        min(float(r.headers.get("retry-after", 1)), max(stop - time.monotonic(), 0))
                    )

        await asyncio.gather(*[client() for _ in range(clients)])
        wall = time.monotonic() - start
    done = len(latencies)
    return {
        "wall_s": wall,
        "requests_ok": done,
        "images_per_s": done * n_images / wall,
        "p50_ms": percentile(latencies, 50) if latencies else None,
        "p99_ms": percentile(latencies, 99) if latencies else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
    }


async def open_loop(
    url: str, bodies: list[tuple[bytes, str]], rate: float, timeout_s: float
) -> list[tuple[Any, Any]]:
    """Send ``bodies[i]`` at time i / rate (open loop: arrivals do not wait for answers) -> (status,
    response JSON or None) per request, in order."""
    import httpx

    # connections are capped: past it, arrivals wait for a free connection in the client (reported as a
    # lower achieved rate, `wall_s`), instead of one socket per request
    limits = httpx.Limits(max_connections=min(len(bodies) + 4, 512), max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, trust_env=False) as http:

        async def one(body: bytes, content_type: str) -> tuple[Any, Any]:
            try:
                r = await http.post(f"{url}/v1/score", content=body, headers={"Content-Type": content_type})
            except httpx.TransportError as exc:
                return type(exc).__name__, None
            return r.status_code, (r.json() if r.status_code == 200 else None)

        start, tasks = time.monotonic(), []
        for i, (body, content_type) in enumerate(bodies):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(body, content_type)))
        return list(await asyncio.gather(*tasks))


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def _images(config: ServeBenchConfig) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(config.seed)
    return [rng.integers(0, 256, (config.image_size, config.image_size, 3), dtype=np.uint8) for _ in range(8)]


def sweep(
    server: ServerProcess, mode: str, config: ServeBenchConfig, images: list[Any]
) -> list[dict[str, Any]]:
    rows = []
    timeout_s = config.deadline_ms / 1000 + 60
    for n in config.request_images:
        body, content_type = make_body(images, n, config.encoding, config.deadline_ms)
        asyncio.run(closed_loop(server.url, body, content_type, n, 1, 0.01, timeout_s))  # warm-up request
        for clients in config.clients:
            load = load_average()
            cell = asyncio.run(
                closed_loop(server.url, body, content_type, n, clients, config.duration_s, timeout_s)
            )
            rows.append({"kind": "sweep", "mode": mode, "request_images": n, "clients": clients, **cell,
                         "load_before": load, "load_after": load_average()})  # fmt: skip
            print(f"  {mode:11s} {n:3d} img/request {clients:4d} clients: {cell['images_per_s']:8.2f} images/s, "
                  f"p50 {cell['p50_ms']} ms, statuses {cell['statuses']}", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def overload(
    server: ServerProcess, config: ServeBenchConfig, images: list[Any], capacity: float
) -> dict[str, Any]:
    """1-image requests at ``overload_factor`` x ``capacity`` (images/s) for ``overload_s``."""
    rate = config.overload_factor * capacity
    count = max(1, int(rate * config.overload_s))
    ids = [f"overload-{i}" for i in range(count)]
    bodies = [
        make_body([images[i % len(images)]], 1, config.encoding, 600_000.0, ids[i]) for i in range(count)
    ]
    rss_before = server.rss_kib()
    started = time.monotonic()
    answers = asyncio.run(open_loop(server.url, bodies, rate, timeout_s=700.0))
    wall = time.monotonic() - started
    statuses = collections.Counter(str(status) for status, _ in answers)
    echoed = collections.Counter()
    mismatched = 0
    for rid, (status, payload) in zip(ids, answers, strict=True):
        if status == 200:
            got = [i.get("request_id") for i in payload.get("identities", [])]
            echoed.update(got)
            mismatched += got != [rid]
    return {
        "kind": "overload", "mode": "batched", "offered_rate_rps": rate, "capacity_images_per_s": capacity,
        "requests_sent": count, "wall_s": wall, "statuses": dict(statuses),
        "answered": sum(statuses.values()), "accepted": statuses.get("200", 0),
        "answered_twice": sum(1 for v in echoed.values() if v > 1), "mismatched_identity": mismatched,
        "lost": count - sum(1 for s, _ in answers if s in (200, 503, 504)),
        "server_rss_before_mib": rss_before / 1024 if rss_before else None,
        "server_peak_rss_mib": (server.rss_kib("VmHWM") or 0) / 1024,
    }  # fmt: skip


def run_overload(
    server: ServerProcess, config: ServeBenchConfig, images: list[Any], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The overload run on its own server; capacity: the sweep's best 1-image batched cell, else a 10 s
    closed-loop measurement with 8 clients on this server."""
    cells = [r for r in rows if r["mode"] == "batched" and r["request_images"] == 1 and r["images_per_s"] > 0]
    if cells:
        capacity = max(r["images_per_s"] for r in cells)
    else:
        body, content_type = make_body(images, 1, config.encoding, config.deadline_ms)
        cell = asyncio.run(
            closed_loop(server.url, body, content_type, 1, 8, 10.0, config.deadline_ms / 1000 + 60)
        )
        capacity = cell["images_per_s"]
    print(f"  overload: {config.overload_factor}x {capacity:.2f} images/s for {config.overload_s} s, "
          f"queue {config.overload_queue_items} items", file=sys.stderr, flush=True)  # fmt: skip
    row = overload(server, config, images, capacity)
    row["max_queue_items"] = config.overload_queue_items
    print(f"  overload: {row}", file=sys.stderr, flush=True)
    return row


def run(config: ServeBenchConfig) -> list[dict[str, Any]]:
    from zreward_deploy.presets import build_preset

    images = _images(config)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="zreward-bench-serve-") as tmp:
        model, processor = build_preset(config.preset, seed=config.seed)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        del model
        if config.sweep:
            for mode, coalesce in (("batched", True), ("per_request", False)):
                server = ServerProcess(Path(tmp), config, coalesce)
                try:
                    rows += sweep(server, mode, config, images)
                finally:
                    server.stop()
        if config.overload_s > 0:
            server = ServerProcess(Path(tmp), config, True, queue_items=config.overload_queue_items)
            try:
                rows.append(run_overload(server, config, images, rows))
            finally:
                server.stop()
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Batched / per-request images/s per (images per request, clients) cell."""
    by = {(r["mode"], r["request_images"], r["clients"]): r for r in rows if r["kind"] == "sweep"}
    out = []
    for (mode, n, c), row in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        base = by.get(("per_request", n, c))
        if mode == "batched" and base is not None:
            out.append({
                "request_images": n, "clients": c,
                "batched_images_per_s": row["images_per_s"], "per_request_images_per_s": base["images_per_s"],
                "speedup": row["images_per_s"] / base["images_per_s"] if base["images_per_s"] else None,
                "batched_p50_ms": row["p50_ms"], "batched_p99_ms": row["p99_ms"],
                "per_request_p50_ms": base["p50_ms"], "per_request_p99_ms": base["p99_ms"],
                "batched_statuses": row["statuses"], "per_request_statuses": base["statuses"],
            })  # fmt: skip
    return out


def report(config: ServeBenchConfig) -> list[dict[str, Any]]:
    """Run, write ``bench_serve.jsonl``/``.csv`` and ``bench_serve.md`` under ``config.out``; rows back."""
    env = environment()
    load_start = load_average()
    rows = run(config)
    stamp = {"config": asdict(config), "env": env, "load_start": load_start, "load_end": load_average()}
    rows = [{**r, **stamp} for r in rows]
    write_rows(rows, config.out, "bench_serve")
    table = ratios(rows)
    cols = ["request_images", "clients", "batched_images_per_s", "per_request_images_per_s", "speedup",
            "batched_p50_ms", "batched_p99_ms", "per_request_p50_ms", "per_request_p99_ms",
            "batched_statuses", "per_request_statuses"]  # fmt: skip
    lines = [f"# zreward bench serve ({config.preset}, {config.encoding}, {config.image_size}px images)", "",
             f"{env['cpu']}; torch {env['torch']}, transformers {env.get('transformers')}; git {env['git_sha']}; "
             f"1-min load {load_start} at start, {stamp['load_end']} at end", "",
             markdown_table(table, cols)]  # fmt: skip
    over = [r for r in rows if r["kind"] == "overload"]
    if over:
        o = over[0]
        keys = ["offered_rate_rps", "capacity_images_per_s", "max_queue_items", "requests_sent", "statuses", "answered", "accepted",
                "answered_twice", "mismatched_identity", "lost", "server_rss_before_mib", "server_peak_rss_mib"]  # fmt: skip
        lines += ["", "## Overload", "", markdown_table([o], keys)]
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    from zreward_deploy.cliargs import add_dataclass_arguments, dataclass_from_namespace

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataclass_arguments(parser, ServeBenchConfig)
    report(dataclass_from_namespace(ServeBenchConfig, parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
