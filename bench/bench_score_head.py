"""Benchmark of the fused score head against the ways a VLM is usually scored.

Providers, all computing fp32 probs / mean / var of the K score tokens from bf16 hidden states and a bf16
``lm_head`` (real models ship bf16 weights, so bf16 is the default on CPU too):

* ``eager_full``: ``hidden @ lm_head.T`` over the whole vocabulary ``[N, V]``, then select the K columns,
  softmax and moments: what generic VLM scoring does.
* ``eager_restricted``: the PyTorch reference ``score_head_ref``: gather the K rows, matmul, softmax,
  moments, in several eager kernels.
* ``compiled_restricted``: ``torch.compile`` of ``eager_restricted``.
* ``triton``: the fused kernel (``score_head(backend="triton")``). CUDA only: on CPU it would run in
  Triton's interpreter, which is not a timing, so its rows say "skipped" with that reason.

Modes: ``fwd`` (under ``no_grad``); ``fwd_bwd``: forward, then ``autograd.grad`` of a loss with random
upstream gradients on mean and var, to hidden only (a frozen reward model: the differentiable-reward use);
``fwd_bwd_w``: the same, also to the ``[V, H]`` lm_head (training; the dense weight gradient, zeros
outside the K rows, is written by every provider and dominates at small N).

Bytes the operation must move (``s`` = element size of hidden and lm_head, 2 for bf16), the floor that
the GB/s column divides by, the same for every provider so GB/s ratios are speed ratios:

* ``fwd``:     ``N H s`` (hidden) + ``K H s`` (score rows) + ``12 K`` (values, ids) + ``4 N K`` (probs)
  + ``8 N`` (mean, var)
* ``fwd_bwd``: ``fwd`` + ``4 N K + 4 N`` (saved probs, mean) + ``8 N`` (upstream grads) + ``K H s``
  (score rows again) + ``N H s`` (write d hidden)
* ``fwd_bwd_w``: ``fwd_bwd`` + ``N H s`` (read hidden again for dW) + ``V H s`` (write the dense
  ``[V, H]`` weight gradient)

Timing: medians after warm-up, every provider in the same process; CUDA events with the L2 cache flushed
before each repeat on GPU; on CPU ``perf_counter`` with the providers interleaved run by run, so that load
from other processes on a shared machine affects them alike. Output: ``bench_score_head.{jsonl,csv}`` (one row per
provider and shape, with the environment) and ``bench_score_head.md`` (a pivot table per shape).

Run: ``python bench/bench_score_head.py --out runs/bench_score_head [--device cuda|cpu] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zreward_deploy.bench.common import (
    environment,
    markdown_table,
    summarize,
    time_cuda,
    time_interleaved,
    torch_threads,
    write_rows,
)
from zreward_deploy.kernels.score_head import score_head, score_head_ref

MODELS: dict[str, tuple[int, int]] = {
    # name: (hidden size H, vocabulary V) of the text decoder's lm_head
    "qwen2.5-vl-7b": (3584, 152064),
    "qwen2.5-vl-3b": (2048, 151936),
    "qwen3-0.6b": (1024, 151936),
}
PROVIDERS = ("eager_full", "eager_restricted", "compiled_restricted", "triton")
MODES = ("fwd", "fwd_bwd", "fwd_bwd_w")
# HBM bandwidth from the vendor datasheets, GB/s, for the "% of peak" column (longest name match first)
PEAK_GBPS = {"H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H100": 3350.0, "H200": 4800.0}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_CPU_THREADS_WHY = (
    "one CPU thread: on a shared 2-core machine two OpenMP threads stall at every barrier while the other "
    "core is busy (the restricted read-out, 0.1 ms on one thread, measured 28 ms on two under load), so "
    "a one-thread timing measures the work and not the scheduler"
)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ScoreHeadBenchConfig:
    """What to measure; every field is a command-line flag (``--field-name``)."""

    out: str = field(default="runs/bench_score_head", metadata=_help("output folder for jsonl, csv and md"))
    device: str = field(default="auto", metadata=_help("cuda, cpu, or auto (cuda when available)"))
    quick: bool = field(default=False, metadata=_help("small sweep: N in {1, 16}, K = 5, 3 repeats"))
    models: tuple[str, ...] = field(
        default=tuple(MODELS),
        metadata=_help(f"models from {sorted(MODELS)}, or custom 'name:H:V' (e.g. tiny:64:1000)"),
    )
    ns: tuple[int, ...] | None = field(
        default=None, metadata=_help("rows N; default 1,16,256,4096 on cuda and 1,16,256 on cpu")
    )
    ks: tuple[int, ...] = field(default=(5, 9), metadata=_help("numbers of score tokens K (≤ 32)"))
    modes: tuple[str, ...] | None = field(
        default=None, metadata=_help(f"subset of {MODES}; default all on cuda, fwd and fwd_bwd on cpu")
    )
    providers: tuple[str, ...] = field(default=PROVIDERS, metadata=_help(f"subset of {PROVIDERS}"))
    dtype: str = field(default="bf16", metadata=_help("dtype of hidden and lm_head: bf16, fp16 or fp32"))
    temperature: float = field(default=1.0, metadata=_help("softmax temperature"))
    warmup: int | None = field(default=None, metadata=_help("warm-up calls; default 10 on cuda, 1 on cpu"))
    repeats: int | None = field(default=None, metadata=_help("timed calls; default 50 on cuda, 5 on cpu"))
    threads: int | None = field(
        default=None,
        metadata=_help("torch CPU threads; default 1 on cpu (see _CPU_THREADS_WHY), torch's on cuda"),
    )
    compile_backend: str = field(default="inductor", metadata=_help("torch.compile backend for provider c"))
    peak_gbps: float | None = field(
        default=None, metadata=_help("HBM peak for the % column; default from the GPU name (H100, H200)")
    )
    seed: int = field(default=0, metadata=_help("random seed of the inputs"))

    def __post_init__(self) -> None:
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device not in ("cuda", "cpu"):
            raise ValueError(f"device must be cuda, cpu or auto, got {self.device!r}")
        if self.device == "cuda":
            from zreward_deploy.devices import resolve_device

            resolve_device("cuda", "--device")  # a CPU-only build or no GPU: one line, not a traceback
        if self.quick:
            self.ns, self.ks = self.ns or (1, 16), (5,)
            self.repeats = self.repeats or 3
        if self.ns is None:
            self.ns = (1, 16, 256, 4096) if self.device == "cuda" else (1, 16, 256)
        if self.modes is None:
            # on CPU the [V, H] weight gradient is a 1 GB memset per call: seconds that say nothing new
            self.modes = MODES if self.device == "cuda" else ("fwd", "fwd_bwd")
        self.warmup = (10 if self.device == "cuda" else 1) if self.warmup is None else self.warmup
        self.repeats = (50 if self.device == "cuda" else 5) if self.repeats is None else self.repeats
        if self.threads is None and self.device == "cpu":
            self.threads = 1
        for name, chosen, allowed in (("modes", self.modes, MODES), ("providers", self.providers, PROVIDERS)):
            unknown = set(chosen) - set(allowed)
            if unknown:
                raise ValueError(f"unknown {name} {sorted(unknown)}; choose from {allowed}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if any(not 1 <= k <= 32 for k in self.ks) or any(n < 1 for n in self.ns):
            raise ValueError(f"need 1 ≤ K ≤ 32 and N ≥ 1, got ks={self.ks}, ns={self.ns}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError("repeats must be ≥ 1 and warmup ≥ 0")
        for model in self.models:
            _model_shape(model)  # raises on unknown names


def _model_shape(model: str) -> tuple[int, int]:
    if model in MODELS:
        return MODELS[model]
    parts = model.split(":")
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    raise ValueError(f"unknown model {model!r}: use one of {sorted(MODELS)} or 'name:H:V'")


# --- providers -----------------------------------------------------------------------------------------

Head = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, torch.Tensor], tuple[torch.Tensor, ...]]


def eager_full_vocab(hidden: torch.Tensor, lm_head: torch.Tensor, values: torch.Tensor, temperature: float,
                     score_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Generic VLM scoring: ``[N, V]`` logits in the model dtype, then select, softmax and moments."""
    logits = hidden @ lm_head.t()
    z = logits[:, score_ids].float() / temperature
    probs = torch.softmax(z, dim=-1)
    mean = probs @ values
    var = (probs * (values - mean[:, None]).square()).sum(-1)
    return probs, mean, var


def _restricted(hidden, lm_head, values, temperature, score_ids):
    return tuple(score_head_ref(hidden, lm_head, values, temperature, score_ids)[:3])


def _triton(hidden, lm_head, values, temperature, score_ids):
    return tuple(score_head(hidden, lm_head, values, temperature, score_ids, backend="triton")[:3])


def _provider_fn(provider: str, cfg: ScoreHeadBenchConfig) -> tuple[Head | None, str]:
    """The provider's function, or ``None`` and the reason it is skipped."""
    if provider == "eager_full":
        return eager_full_vocab, ""
    if provider == "eager_restricted":
        return _restricted, ""
    if provider == "compiled_restricted":
        # CPU: one dynamic-shape graph (inductor's C++ compile per shape would dominate the run);
        # GPU: specialised per shape (the compiled cache is reset per shape, see _measure_shape)
        return torch.compile(_restricted, backend=cfg.compile_backend, dynamic=cfg.device == "cpu"), ""
    if cfg.device != "cuda":
        return None, "skipped: needs CUDA (on CPU the Triton interpreter would run it, which is not a timing)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return None, "skipped: triton is not installed"
    return _triton, ""


# --- measurement ---------------------------------------------------------------------------------------


def bytes_floor(mode: str, n: int, h: int, v: int, k: int, elem: int) -> int:
    """Bytes the operation must move (module docstring)."""
    fwd = n * h * elem + k * h * elem + 12 * k + 4 * n * k + 8 * n
    if mode == "fwd":
        return fwd
    bwd = 4 * n * k + 4 * n + 8 * n + k * h * elem + n * h * elem
    if mode == "fwd_bwd_w":
        bwd += n * h * elem + v * h * elem
    return fwd + bwd


def _step(
    fn: Head, mode: str, inputs: dict[str, torch.Tensor], cfg: ScoreHeadBenchConfig
) -> Callable[[], Any]:
    hidden, lm_head, values, ids = inputs["hidden"], inputs["lm_head"], inputs["values"], inputs["score_ids"]
    if mode == "fwd":

        def forward() -> Any:
            with torch.no_grad():
                return fn(hidden, lm_head, values, cfg.temperature, ids)

        return forward
    leaves = [hidden, lm_head] if mode == "fwd_bwd_w" else [hidden]
    g_mean, g_var = inputs["g_mean"], inputs["g_var"]

    def forward_backward() -> Any:
        _, mean, var = fn(hidden, lm_head, values, cfg.temperature, ids)
        return torch.autograd.grad((mean * g_mean).sum() + (var * g_var).sum(), leaves)

    return forward_backward


def _peak_gbps(cfg: ScoreHeadBenchConfig, env: dict[str, Any]) -> float | None:
    if cfg.peak_gbps is not None or cfg.device != "cuda":
        return cfg.peak_gbps
    name = env.get("gpu") or ""
    for key in sorted(PEAK_GBPS, key=len, reverse=True):
        if key in name:
            return PEAK_GBPS[key]
    return None


def _measure_shape(cfg, env, fns, model, h, v, lm_head, n, k, mode) -> list[dict[str, Any]]:
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed + n + 1000 * k)
    dt, dev = _DTYPES[cfg.dtype], cfg.device
    inputs = {
        "hidden": torch.randn(n, h, device=dev, dtype=dt, generator=gen).requires_grad_(mode != "fwd"),
        "lm_head": lm_head.requires_grad_(mode == "fwd_bwd_w"),
        "values": torch.linspace(1.0, 5.0, k, device=dev),
        # score tokens spread over the vocabulary, as digit tokens are
        "score_ids": torch.randperm(v, device=dev, generator=gen)[:k],
        "g_mean": torch.randn(n, device=dev, generator=gen),
        "g_var": torch.randn(n, device=dev, generator=gen),
    }
    elem = torch.empty((), dtype=dt).element_size()
    floor = bytes_floor(mode, n, h, v, k, elem)
    peak = _peak_gbps(cfg, env)
    steps = {p: _step(fns[p][0], mode, inputs, cfg) for p in cfg.providers if fns[p][0] is not None}
    if dev == "cuda":
        times = {}
        for provider, step in steps.items():
            if provider == "compiled_restricted":
                torch._dynamo.reset()  # a fresh specialised graph per shape; never the recompile-limit fallback
            times[provider] = time_cuda(step, warmup=cfg.warmup, repeats=cfg.repeats)
    else:
        # run by run in turn, so that load from other processes on a shared CPU hits every provider alike
        times = time_interleaved(steps, warmup=cfg.warmup, repeats=cfg.repeats)
    rows = []
    for provider in cfg.providers:
        row: dict[str, Any] = {
            "model": model, "H": h, "V": v, "N": n, "K": k, "mode": mode, "provider": provider,
            "dtype": cfg.dtype, "device": dev, "bytes_floor": floor, "status": fns[provider][1] or "ok",
            "threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0],
        }  # fmt: skip
        if provider in times:
            stats = summarize(times[provider])
            row.update(stats)
            row["gbps"] = floor / (stats["median_ms"] * 1e-3) / 1e9
            row["pct_peak_bw"] = 100 * row["gbps"] / peak if peak else None
        row["env"] = env
        rows.append(row)
    by_provider = {r["provider"]: r.get("median_ms") for r in rows}
    for row in rows:
        t = row.get("median_ms")
        for base, key in (("eager_full", "speedup_vs_full"), ("eager_restricted", "speedup_vs_restricted")):
            row[key] = by_provider[base] / t if t and by_provider.get(base) else None
    return rows


def run(cfg: ScoreHeadBenchConfig) -> list[dict[str, Any]]:
    """Measure every (model, mode, N, K, provider); returns the rows (also written under ``cfg.out``).
    Runs with ``cfg.threads`` torch threads and restores the caller's setting after."""
    with torch_threads(cfg.threads or 0):
        return _run(cfg)


def _run(cfg: ScoreHeadBenchConfig) -> list[dict[str, Any]]:
    env = environment()
    # built once: a torch.compile wrapper per shape would recompile on CPU, where one dynamic graph serves
    fns = {provider: _provider_fn(provider, cfg) for provider in cfg.providers}
    rows: list[dict[str, Any]] = []
    for model in cfg.models:
        h, v = _model_shape(model)
        gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
        # one lm_head per model, scaled like a trained one (logits O(1)); ~1 GB in bf16 at H=3584
        lm_head = (torch.randn(v, h, device=cfg.device, generator=gen) / h**0.5).to(_DTYPES[cfg.dtype])
        for mode in cfg.modes:
            for n in cfg.ns:
                for k in cfg.ks:
                    rows += _measure_shape(cfg, env, fns, model, h, v, lm_head, n, k, mode)
                    print(_progress(rows[-len(cfg.providers) :]), file=sys.stderr, flush=True)
        del lm_head
    return rows


def _progress(rows: Sequence[dict[str, Any]]) -> str:
    r0 = rows[0]
    times = ", ".join(f"{r['provider']}={r['median_ms']:.3g} ms" if "median_ms" in r else
                      f"{r['provider']}=skipped" for r in rows)  # fmt: skip
    return f"[{r0['model']} {r0['mode']} N={r0['N']} K={r0['K']}] {times}"


# --- report --------------------------------------------------------------------------------------------

_SHORT = {"eager_full": "a", "eager_restricted": "b", "compiled_restricted": "c", "triton": "d"}


def pivot(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (model, mode, N, K): ms and GB/s per provider, and the speedups the goals name."""
    table: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["model"], r["mode"], r["N"], r["K"])
        line = table.setdefault(key, {"model": r["model"], "mode": r["mode"], "N": r["N"], "K": r["K"],
                                      "floor MB": r["bytes_floor"] / 1e6})  # fmt: skip
        s = _SHORT[r["provider"]]
        line[f"{s} ms"] = r.get("median_ms", "skipped")
        line[f"{s} GB/s"] = r.get("gbps")
        line[f"{s} % peak"] = r.get("pct_peak_bw")
        line[f"{s} vs b"] = r.get("speedup_vs_restricted")
        line[f"{s} vs a"] = r.get("speedup_vs_full")
    return list(table.values())


def report(rows: Sequence[dict[str, Any]], cfg: ScoreHeadBenchConfig) -> str:
    """Markdown: the pivot table with the columns that carry numbers."""
    lines = pivot(rows)
    cols = ["model", "mode", "N", "K", "floor MB"]
    for s in (_SHORT[p] for p in cfg.providers):
        cols += [f"{s} ms", f"{s} GB/s"]
    cols += [f"{_SHORT[p]} % peak" for p in cfg.providers]
    cols += ["b vs a", "c vs b", "d vs b", "d vs a"]
    # a column with no number anywhere (GB/s of a skipped provider, % peak on CPU) only adds noise
    cols = [c for c in cols if c.endswith(" ms") or any(line.get(c) is not None for line in lines)]
    return markdown_table(lines, cols)


def markdown(rows: Sequence[dict[str, Any]], cfg: ScoreHeadBenchConfig, command: str) -> str:
    """The report: command, machine, versions, threads, load, and the table."""
    env = rows[0]["env"] if rows else environment()
    loads = [r["load_avg_1m"] for r in rows]
    threads = rows[0]["threads"] if rows else torch.get_num_threads()
    threads_note = f" ({_CPU_THREADS_WHY})" if cfg.device == "cpu" and threads == 1 else ""
    return (
        f"Command: `{command}`\n\n"
        f"Device: {env.get('gpu') or env.get('cpu')}; torch {env.get('torch')}, triton {env.get('triton')}, "
        f"transformers {env.get('transformers')}, python {env.get('python')}, git {env.get('git_sha')}; "
        f"dtype {cfg.dtype}; warm-up {cfg.warmup}, median of {cfg.repeats}.\n\n"
        f"Torch threads: {threads}{threads_note}. Load average (1 min) of the machine during the run: "
        f"{min(loads, default=0):.1f} to {max(loads, default=0):.1f}.\n\n{report(rows, cfg)}\n"
    )


def _parser() -> argparse.ArgumentParser:
    """Every field of :class:`ScoreHeadBenchConfig` as a flag (``zreward_deploy.cliargs``)."""
    from zreward_deploy.cliargs import add_dataclass_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataclass_arguments(parser, ScoreHeadBenchConfig, space_separated=True)  # --ns 1,16 (or 1 16)
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Parse flags, run, write ``bench_score_head.{jsonl,csv,md}`` under ``--out``; returns the rows."""
    from zreward_deploy.cliargs import dataclass_from_namespace

    parser = _parser()
    try:
        cfg = dataclass_from_namespace(ScoreHeadBenchConfig, parser.parse_args(argv))
    except ValueError as err:  # a bad list entry or value, CUDA asked of a CPU-only build: one line
        parser.error(str(err))
    rows = run(cfg)
    write_rows(rows, cfg.out, "bench_score_head")
    command = "python bench/bench_score_head.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(rows, cfg, command.strip())
    Path(cfg.out, "bench_score_head.md").write_text(md)
    print(md)
    return rows


if __name__ == "__main__":
    main()
