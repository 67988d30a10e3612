"""Shared benchmark plumbing: the environment record, timing, and writing rows.

Every benchmark writes one row per measurement with the hardware, library versions, git SHA, shapes and
dtype (DESIGN.md §10) into JSON Lines and CSV, and a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    """Hardware and versions, recorded beside every measurement."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "git_sha": _git_sha(),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a core dependency
        pass
    for name in ("triton", "onnxruntime", "tensorrt"):
        try:
            module = __import__(name)
            env[name] = getattr(module, "__version__", "unknown")
        except Exception:  # not installed (or, for tensorrt, only the PyPI stub)
            env[name] = None
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    else:
        env["gpu"] = None
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (0 = leave as is), restoring the setting after."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_cpu(fn: Callable[[], Any], warmup: int = 3, repeats: int = 10) -> list[float]:
    """Wall-clock milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CPU timing)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def time_interleaved(
    providers: dict[str, Callable[[], Any]], warmup: int = 3, repeats: int = 10
) -> dict[str, list[float]]:
    """Wall-clock milliseconds of each provider, alternating providers run by run so that a change in
    background load affects all of them alike (ratios stay meaningful on a shared machine)."""
    for _ in range(warmup):
        for fn in providers.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in providers}
    for _ in range(repeats):
        for name, fn in providers.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def time_blocks(
    providers: dict[str, Callable[[], Any]],
    warmup: int = 3,
    repeats: int = 10,
    block: int = 5,
    settle_s: float = 0.2,
) -> dict[str, list[float]]:
    """Wall-clock milliseconds of each provider, timed in blocks of ``block`` consecutive runs, the
    providers taking turns block by block (A-block, B-block, then B, A, …) until each has ``repeats``.

    Use this, not :func:`time_interleaved`, when the providers are *different runtimes with their own
    thread pools* (torch's OpenMP, ONNX Runtime's): after a call each pool keeps its threads spinning
    for a while, so a run of the other library started right away shares the cores with them. On a
    2-core AMD EPYC, run-by-run interleaving doubled both libraries' time for a 340×512×1408 GEMM
    (torch 2.6 → 5.8 ms, ORT 1.1 → 2.2 ms) and inflated a 145 ms torch forward to 165 ms. Here each
    block starts after ``settle_s`` seconds of idling (the pools park) and one untimed call (warm caches
    again); the first block of each provider gets ``warmup`` untimed calls. Taking turns by block keeps
    most of interleaving's protection against a change of background load.
    """
    if block < 1 or repeats < 1 or warmup < 0 or settle_s < 0:
        raise ValueError("block >= 1, repeats >= 1, warmup >= 0 and settle_s >= 0 are required")
    times: dict[str, list[float]] = {name: [] for name in providers}
    order = list(providers)
    first = dict.fromkeys(providers, True)
    while any(len(t) < repeats for t in times.values()):
        for name in order:
            todo = min(block, repeats - len(times[name]))
            if not todo:
                continue
            fn = providers[name]
            time.sleep(settle_s)
            for _ in range(warmup if first[name] else 1):
                fn()
            first[name] = False
            for _ in range(todo):
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1e3)
        order.reverse()
    return times


def time_cuda(
    fn: Callable[[], Any], warmup: int = 10, repeats: int = 50, flush_l2_bytes: int = 256 << 20
) -> list[float]:
    """Milliseconds of ``fn()`` on the current CUDA stream, by CUDA events, over ``repeats`` runs.

    Before each timed run a ``flush_l2_bytes`` buffer is zeroed (outside the timed region) so that no run
    finds its inputs in the L2 cache left by the previous one (H100/H200 L2: 50/60 MB); 0 disables it.
    Launch overhead counts: when the GPU waits for the CPU, the events see the wait.
    """
    import torch

    flush = torch.empty(flush_l2_bytes, dtype=torch.int8, device="cuda") if flush_l2_bytes else None
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for start, end in zip(starts, ends, strict=True):
        if flush is not None:
            flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in zip(starts, ends, strict=True)]


def summarize(times_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(times_ms)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {
        "median_ms": statistics.median(ordered),
        "p95_ms": pct(95),
        "min_ms": ordered[0],
        "repeats": len(ordered),
    }


def write_rows(rows: Sequence[dict[str, Any]], out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``rows`` as ``<name>.jsonl`` and ``<name>.csv`` under ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl, csv_path = out / f"{name}.jsonl", out / f"{name}.csv"
    with jsonl.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")
    flat = [{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()} for r in rows]
    keys: list[str] = []
    for row in flat:
        keys += [k for k in row if k not in keys]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(flat)
    return jsonl, csv_path


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], floatfmt: str = ".3g") -> str:
    """A GitHub Markdown table of ``columns`` from ``rows``."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
