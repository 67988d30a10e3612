"""Shared benchmark plumbing: the environment record, timing, the stability rule, and writing rows.

Every benchmark writes one row per measurement with the hardware, library versions, git SHA, shapes and
dtype (docs/design.md §12) into JSON Lines and CSV, and a Markdown table for docs/benchmarks.md. Whether a row's
timings are a result or contention is decided here, in one place (:class:`StabilityRule`).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def environment() -> dict[str, Any]:
    """Hardware and versions, recorded beside every measurement."""
    import torch

    from ..devices import cpu_name  # imports torch: not at the top (``--help`` stays torch-free)

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_name(),
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
    return {
        "median_ms": statistics.median(ordered),
        "p95_ms": percentile(ordered, 95),
        "min_ms": ordered[0],
        "repeats": len(ordered),
    }


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of ``samples`` (p in [0, 100])."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --------------------------------------------------------------------------------------------------
# Stability: is a row of timings a result, or the machine's other jobs?
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StabilityRule:
    """When a row of timings is unstable (docs/benchmarks.md, "Unstable timings"). Any one of:

    * **spread**: the medians of consecutive blocks of ``block`` runs (the blocks of :func:`time_blocks`)
      differ by more than ``max_spread`` of the row's median: ``(max - min) / median > 0.30``. Needs two
      full blocks; with fewer runs only the two tests below apply.
    * **tail**: ``p95 / p50 > max_tail`` (2.0): a twentieth of the runs took over twice the median.
    * **load**: a 1-min load average sampled just before or just after the row exceeds
      ``max(cpus, own_threads) + load_margin`` (0.5). ``own_threads`` is what the benchmark keeps
      runnable itself (its intra-op threads), so this reads "the load the benchmark did not cause
      (load - own) exceeds the CPUs it left free (cpus - own) by more than half a CPU": other jobs queue
      for the cores being timed. A steady background job slows every run alike, leaves the spread small
      and still turns ratios into nonsense (a starved torch row made ONNX Runtime look 130x faster; alone
      it is 2.2x), so spread alone is not enough. The 1-min average lags (a job that just ended still
      shows, a burst of seconds barely does); the spread and tail tests catch short bursts.

    An unstable row is measured again, up to ``retries`` more times; still unstable, it is marked
    unreliable with the reason, and no ratio is computed from it.
    """

    max_spread: float = 0.30
    max_tail: float = 2.0
    load_margin: float = 0.5
    retries: int = 2


STABILITY_RULE = StabilityRule()


@dataclass(frozen=True)
class Stability:
    """The verdict of a :class:`StabilityRule` on one row's timings (``reasons`` empty: stable)."""

    spread: float | None  # relative spread of the block medians; None with fewer than two full blocks
    tail: float  # p95 / p50
    load: float | None  # highest 1-min load average sampled around the row; None where unavailable
    load_limit: float  # the load above which the row is unstable: max(cpus, own_threads) + margin
    reasons: tuple[str, ...] = ()

    @property
    def reliable(self) -> bool:
        return not self.reasons

    @property
    def reason(self) -> str | None:
        """``"spread 85% > 30%; load 5.2 > 2.5"``, or None for a stable row."""
        return "; ".join(self.reasons) or None


def judge_timings(
    samples: Sequence[float],
    block: int,
    loads: Sequence[float | None] = (),
    own_threads: int = 1,
    cpus: int | None = None,
    rule: StabilityRule = STABILITY_RULE,
) -> Stability:
    """Apply ``rule`` to one row: ``samples`` in ms in the order they were timed, in blocks of ``block``;
    ``loads``: 1-min load averages sampled around the row; ``own_threads``: threads the benchmark itself
    keeps busy; ``cpus``: logical CPUs (default ``os.cpu_count()``)."""
    if not samples or block < 1:
        raise ValueError("need at least one sample and block >= 1")
    median = statistics.median(samples)
    full = len(samples) // block
    spread = None
    if full >= 2 and median > 0:
        medians = [statistics.median(samples[i * block : (i + 1) * block]) for i in range(full)]
        spread = (max(medians) - min(medians)) / median
    p50 = percentile(samples, 50)
    tail = percentile(samples, 95) / p50 if p50 > 0 else 1.0
    known = [x for x in loads if x is not None]
    load = max(known) if known else None
    limit = max(cpus or os.cpu_count() or 1, own_threads) + rule.load_margin
    reasons = []
    if spread is not None and spread > rule.max_spread:
        reasons.append(f"spread {spread:.0%} > {rule.max_spread:.0%}")
    if tail > rule.max_tail:
        reasons.append(f"p95/p50 {tail:.1f} > {rule.max_tail:g}")
    if load is not None and load > limit:
        reasons.append(f"load {load:.1f} > {limit:g}")
    return Stability(spread, tail, load, limit, tuple(reasons))


def load_average() -> float | None:
    """The 1-min load average, or None where the system has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclass
class Measurement:
    """What :func:`measure_until_stable` kept: the last try's timings and verdicts."""

    times: dict[str, list[float]]
    stability: dict[str, Stability]
    tries: int
    load_before: float | None
    load_after: float | None

    @property
    def reliable(self) -> bool:
        return all(s.reliable for s in self.stability.values())


def measure_until_stable(
    measure: Callable[[], dict[str, list[float]]],
    block: int,
    own_threads: int,
    rule: StabilityRule = STABILITY_RULE,
    on_retry: Callable[[int, dict[str, Stability]], None] | None = None,
) -> Measurement:
    """Call ``measure()`` (provider -> ms samples, all providers timed together) and judge every
    provider by ``rule``; while any is unstable, measure all of them again (ratios come from one try),
    at most ``rule.retries`` more times. ``on_retry(next_try, verdicts)`` is called before each retry."""
    tries = 0
    while True:
        before = load_average()
        times = measure()
        after = load_average()
        tries += 1
        verdicts = {
            name: judge_timings(t, block, (before, after), own_threads, rule=rule)
            for name, t in times.items()
        }
        result = Measurement(times, verdicts, tries, before, after)
        if result.reliable or tries > rule.retries:
            return result
        if on_retry is not None:
            on_retry(tries + 1, verdicts)


def unstable_cell(reason: str) -> str:
    """What a table shows instead of a ratio computed from an unreliable row."""
    return f"n/a (unstable: {reason})"


def progress(message: str) -> None:
    """One line on stderr, flushed, when stderr is not a terminal (a log file, CI, ``2>&1 | tee``): there,
    nothing else shows that a benchmark of several minutes is alive. On a terminal, say nothing."""
    stream = sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return
    print(message, file=stream, flush=True)


MATPLOTLIB_MISSING = (
    "no plot: matplotlib is not installed "
    "(pip install matplotlib, or the plots extra: pip install 'zreward-deploy[plots]')"
)


def has_matplotlib() -> bool:
    """Whether ``import matplotlib`` works (the optional ``plots`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


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


def publish(
    rows: Sequence[dict[str, Any]],
    out_dir: str | Path,
    name: str,
    columns: Sequence[str],
    *,
    env: bool = False,
) -> str:
    """Write ``rows`` as ``<name>.jsonl``, ``<name>.csv`` and ``<name>.md`` (the Markdown table of
    ``columns``) under ``out_dir``, print the table on stdout and the file names (with ``env``, first the
    first row's environment) on stderr; returns the table."""
    jsonl, csv_path = write_rows(rows, out_dir, name)
    table = markdown_table(rows, columns)
    (Path(out_dir) / f"{name}.md").write_text(table + "\n")
    print(table)
    if env and rows:
        print(f"\nenvironment: {json.dumps(rows[0]['env'])}", file=sys.stderr)
    print(f"wrote {jsonl} and {csv_path}", file=sys.stderr)
    return table


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], floatfmt: str = ".3g") -> str:
    """A GitHub Markdown table of ``columns`` from ``rows``."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return format(v, floatfmt)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
