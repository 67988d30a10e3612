"""Latency and throughput of each runtime per batch size, in one process (docs/design.md §12).

Backends: ``torch`` (eager, the reference), ``onnx-fp32`` / ``onnx-fp16`` (ONNX Runtime) and
``tensorrt-fp32`` / ``tensorrt-fp16``. What is timed is one scorer forward, ``Scorer._forward`` on an already
tokenized and preprocessed micro-batch: the graph run plus each runtime's own input/output conversion
(torch ↔ numpy for ONNX Runtime on CPU). Image decoding and tokenization are the same code for every
backend and are left out, so the ratio compares the runtimes. All backends are loaded into one process and
timed in blocks of ``block`` consecutive runs, taking turns block by block (``time_blocks``): the turns let
a change in background load hit every backend alike, and the blocks (each after a short idle pause) keep
one runtime's spinning thread pool off the cores while the other is timed, which run-by-run interleaving
(``timing="interleaved"``, the behaviour before) does not: on a 2-core CPU it inflated torch's batch-1
time by ~14 % and ORT's small GEMMs by up to 2× (docs/benchmarks.md). The system load average before and
after is recorded with each row.

Each batch size's timings are judged by ``bench/common.py``'s ``StabilityRule`` (spread of the block
medians, p95/p50, load beside the CPUs the benchmark leaves free). An unstable batch is timed again, all
backends together, up to ``retries`` more times; a row still unstable is marked ``unreliable`` with the
reason, and no ``speedup_vs_torch`` is computed from it (the table says ``n/a (unstable: ...)``).

Reported per (backend, batch): p50 / p95 / p99 / min latency in ms over ``repeats`` timed runs after
``warmup`` runs (with 20 repeats p99 is the slowest run), images/s at p50, and ``speedup_vs_torch`` = torch
p50 / backend p50 measured in the same process. Written as JSONL/CSV, a Markdown table and a PNG plot.
When stderr is not a terminal, one progress line per step and per row goes to stderr as it is measured.

Run:  zreward bench latency --out runs/bench_latency   (or python -m zreward_deploy.bench.bench_latency)
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zreward_deploy.bench.bench_parity import BACKEND_VARIANTS, prepare_export, prepare_model
from zreward_deploy.bench.common import (
    MATPLOTLIB_MISSING,
    STABILITY_RULE,
    Measurement,
    Stability,
    has_matplotlib,
    markdown_table,
    percentile,
    progress,
    unstable_cell,
)

PROMPTS = (
    "three blue spheres to the left of a large yellow cone on a wooden table",
    "a red square",
    "two green triangles and a purple diamond on the right",
    "a yellow circle above a blue square",
)


@dataclass
class LatencyBenchConfig:
    """Settings of ``zreward bench latency``."""

    model: str | None = field(default=None, metadata={"help": "model directory (default: build --preset)"})
    preset: str = field(default="bench-small", metadata={"help": "preset to build when --model is not given"})
    text_model: str = field(default="qwen2", metadata={"help": "preset LM family: qwen2, qwen3 or llama"})
    backends: tuple[str, ...] = field(
        default=("torch", "onnx-fp32"),
        metadata={"help": f"backends to time: torch, {', '.join(BACKEND_VARIANTS)}"},
    )
    batch_sizes: tuple[int, ...] = field(default=(1, 8, 32), metadata={"help": "batch sizes to time"})
    warmup: int = field(default=2, metadata={"help": "untimed runs per backend and batch size"})
    repeats: int = field(default=20, metadata={"help": "timed runs per backend and batch size"})
    timing: str = field(
        default="blocks",
        metadata={
            "help": "blocks (backends take turns by blocks of --block runs) or interleaved (run by run)"
        },
    )
    block: int = field(
        default=5,
        metadata={"help": "timed runs per block with --timing blocks (and per block of the spread test)"},
    )
    retries: int = field(
        default=STABILITY_RULE.retries,
        metadata={"help": "re-measurements of a batch size whose timings are unstable (0 = none)"},
    )
    device: str = field(default="cpu", metadata={"help": "cpu or cuda (torch and ONNX Runtime)"})
    threads: int = field(
        default=0, metadata={"help": "torch threads and ORT intra-op threads (0 = each library's default)"}
    )
    ort_optimization: str = field(
        default="all", metadata={"help": "ORT graph optimization level: disable, basic, extended, all"}
    )
    exports: str | None = field(
        default=None, metadata={"help": "folder of ONNX exports to reuse or create (default: <out>/exports)"}
    )
    out: str = field(
        default="runs/bench_latency", metadata={"help": "output folder (JSONL, CSV, Markdown, PNG)"}
    )
    plot: bool = field(default=True, metadata={"help": "write bench_latency.png (needs matplotlib)"})

    def __post_init__(self) -> None:
        known = ("torch", *BACKEND_VARIANTS)
        unknown = [b for b in self.backends if b not in known]
        if unknown or not self.backends:
            raise ValueError(f"unknown backends {unknown}; choose from {known}")
        if not self.batch_sizes or min(self.batch_sizes) < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError("batch sizes >= 1, repeats >= 1 and warmup >= 0 are required")
        if self.timing not in ("blocks", "interleaved") or self.block < 1:
            raise ValueError(f"timing must be 'blocks' or 'interleaved' (got {self.timing!r}) and block >= 1")
        if self.retries < 0:
            raise ValueError("retries >= 0 is required")


def load_backend(model_dir: Path, exports: Path, name: str, config: LatencyBenchConfig) -> Any:
    """The scorer of one backend, with the ORT session settings of ``config``."""
    from zreward_deploy.scoring import load_scorer

    batch = max(config.batch_sizes)
    if name == "torch":
        return load_scorer(model_dir, backend="torch", device=config.device, max_batch_size=batch)
    if name.startswith("tensorrt"):
        from zreward_deploy.export.tensorrt import import_tensorrt

        import_tensorrt()  # fail with the install hint before exporting anything
    onnx_dir = prepare_export(model_dir, exports, name)
    if name.startswith("onnx"):
        from zreward_deploy.export.ort import OrtScorer, OrtSessionConfig

        session = OrtSessionConfig(
            graph_optimization_level=config.ort_optimization, intra_op_num_threads=config.threads
        )
        return OrtScorer.from_pretrained(
            onnx_dir, device=config.device, max_batch_size=batch, session_config=session
        )
    return load_scorer(onnx_dir, backend="tensorrt", device="cuda", max_batch_size=batch)


def make_inputs(processor: Any, batch: int, seed: int = 0) -> tuple[Any, Any, Any]:
    """A tokenized, preprocessed micro-batch: ``pixel_values [B, 3, S, S]``, ``input_ids``/``mask [B, L]``."""
    import torch

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    ids, mask = processor.encode_prompts(prompts)
    size = processor.config.image_size
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + batch))
    return processor.preprocess_tensor(images), ids, mask


def run(config: LatencyBenchConfig) -> list[dict[str, Any]]:
    """Time every backend at every batch size; one row per (backend, batch)."""
    from zreward_deploy.bench.common import torch_threads
    from zreward_deploy.cliargs import check_device

    check_device(config.device)  # one line for CUDA on a CPU-only build, before building anything
    with torch_threads(config.threads):  # the benchmark's thread setting ends with it
        return _run(config)


def _run(config: LatencyBenchConfig) -> list[dict[str, Any]]:
    import torch

    from zreward_deploy.bench.common import environment

    out = Path(config.out)
    exports = Path(config.exports) if config.exports else out / "exports"
    progress(f"latency: preparing the model ({config.model or 'preset ' + config.preset}) ...")
    model_dir = prepare_model(config.model, config.preset, config.text_model, out)
    scorers = {}
    for name in config.backends:
        progress(
            f"latency: loading {name}" + ("" if name == "torch" else f" (exporting to {exports} if needed)")
        )
        scorers[name] = load_backend(model_dir, exports, name, config)
    first = next(iter(scorers.values()))
    dims = first.config.get_rubric().names
    env = environment()
    rows = []
    for batch in config.batch_sizes:
        pixel_values, ids, mask = make_inputs(first.processor, batch)
        providers = {
            name: (lambda s=s, pv=pixel_values, i=ids, m=mask: s.forward_batch(pv, i, m, dims))
            for name, s in scorers.items()
        }
        with torch.inference_mode():
            measured = _measure(providers, batch, config)
        fixed = {
            "text_length": int(ids.shape[1]),
            "dimensions": len(dims),
            "preset": config.preset if config.model is None else None,
            "model": str(model_dir),
            "torch_threads": torch.get_num_threads(),
            "env": env,
        }
        rows += _batch_rows(measured, scorers, batch, config, fixed)
    return rows


def own_threads(config: LatencyBenchConfig) -> int:
    """Threads the benchmark itself keeps runnable while timing, for the stability rule's load test:
    the intra-op threads of the runtime being timed (torch's setting; ORT gets the same with --threads),
    times the number of backends when they run interleaved (their pools then spin at the same time)."""
    import torch

    threads = torch.get_num_threads()
    return threads * (len(config.backends) if config.timing == "interleaved" else 1)


def _measure(providers: dict[str, Any], batch: int, config: LatencyBenchConfig) -> Measurement:
    """Time ``providers`` at one batch size until stable (at most ``config.retries`` more tries)."""
    from dataclasses import replace

    from zreward_deploy.bench import common

    def measure() -> dict[str, list[float]]:
        if config.timing == "blocks":
            return common.time_blocks(providers, config.warmup, config.repeats, block=config.block)
        return common.time_interleaved(providers, config.warmup, config.repeats)

    def on_retry(next_try: int, verdicts: dict[str, Stability]) -> None:
        why = ", ".join(f"{n}: {v.reason}" for n, v in verdicts.items() if not v.reliable)
        progress(f"latency: batch {batch} unstable ({why}); measuring again, try {next_try} of {tries}")

    tries = config.retries + 1
    progress(f"latency: batch {batch}: timing {', '.join(providers)} ({config.repeats} runs each) ...")
    rule = replace(common.STABILITY_RULE, retries=config.retries)
    return common.measure_until_stable(measure, config.block, own_threads(config), rule, on_retry)


def _batch_rows(
    measured: Measurement,
    scorers: dict[str, Any],
    batch: int,
    config: LatencyBenchConfig,
    fixed: dict[str, Any],
) -> list[dict[str, Any]]:
    """One row per backend of one batch size; no speed-up from an unreliable row (or torch row)."""
    p50 = {name: percentile(samples, 50) for name, samples in measured.times.items()}
    verdicts = measured.stability
    torch_verdict = verdicts.get("torch")
    rows = []
    for name, samples in measured.times.items():
        scorer, verdict = scorers[name], verdicts[name]
        speedup, note = (p50["torch"] / p50[name], None) if "torch" in p50 else (None, None)
        if not verdict.reliable:
            speedup, note = None, verdict.reason
        elif torch_verdict is not None and not torch_verdict.reliable:
            speedup, note = None, f"torch: {torch_verdict.reason}"
        row = {
            "bench": "latency",
            "backend": name,
            "batch": batch,
            "text_length": fixed["text_length"],
            "dimensions": fixed["dimensions"],
            "preset": fixed["preset"],
            "model": fixed["model"],
            "device": config.device,
            "p50_ms": p50[name],
            "p95_ms": percentile(samples, 95),
            "p99_ms": percentile(samples, 99),
            "min_ms": min(samples),
            "repeats": len(samples),
            "timing": config.timing,
            "images_per_s": batch / p50[name] * 1e3,
            "speedup_vs_torch": speedup,
            "speedup_note": note,
            "unreliable": not verdict.reliable,
            "unreliable_reason": verdict.reason,
            "spread": verdict.spread,
            "p95_over_p50": verdict.tail,
            "tries": measured.tries,
            "runtime": scorer.describe() if hasattr(scorer, "describe") else {"backend": name},
            "torch_threads": fixed["torch_threads"],
            "load_avg_1min_before": measured.load_before,
            "load_avg_1min_after": measured.load_after,
            "env": fixed["env"],
        }
        rows.append(row)
        flag = f" (UNRELIABLE: {verdict.reason})" if not verdict.reliable else ""
        progress(f"latency: {name} batch {batch} ... done {p50[name]:.3g} ms p50{flag}")
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """p50 latency and images/s against batch size, one line per backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # its own Agg canvas: no pyplot state, no global backend switch
    left, right = fig.subplots(1, 2)
    for name in dict.fromkeys(r["backend"] for r in rows):
        mine = sorted((r for r in rows if r["backend"] == name), key=lambda r: r["batch"])
        batches = [r["batch"] for r in mine]
        left.plot(batches, [r["p50_ms"] for r in mine], marker="o", label=name)
        right.plot(batches, [r["images_per_s"] for r in mine], marker="o", label=name)
    all_batches = sorted({r["batch"] for r in rows})
    for ax, label in ((left, "p50 latency (ms)"), (right, "images / s (at p50)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_batches, [str(b) for b in all_batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    left.set_yscale("log")
    left.legend()
    env = rows[0]["env"]
    fig.suptitle(f"{rows[0]['model']} on {env.get('gpu') or env.get('cpu')}", fontsize=8)
    fig.savefig(path)
    return path


COLUMNS = (
    "backend",
    "batch",
    "text_length",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "images_per_s",
    "speedup_vs_torch",
    "stability",
)


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` as shown in a table: ``speedup_vs_torch`` reads ``n/a (unstable: ...)`` where it was not
    computed because a row was unreliable, and ``stability`` says ok, or unreliable and why."""
    shown = []
    for r in rows:
        cell = dict(r)
        if r.get("speedup_vs_torch") is None and r.get("speedup_note"):
            cell["speedup_vs_torch"] = unstable_cell(r["speedup_note"])
        tries = r.get("tries")
        after = f" after {tries} tries" if tries and tries > 1 else ""
        if "unreliable" not in r:  # a row from before the stability rule
            cell["stability"] = "not judged"
        elif r["unreliable"]:
            cell["stability"] = f"UNRELIABLE{after}: {r['unreliable_reason']}"
        else:
            cell["stability"] = f"ok{after}"
        shown.append(cell)
    return shown


def markdown(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of ``rows`` (:data:`COLUMNS`), unreliable rows marked, no ratio from them."""
    return markdown_table(table_rows(rows), COLUMNS)


def stability_note(rows: list[dict[str, Any]]) -> str | None:
    """A sentence on the unreliable rows, or None when every row is stable."""
    bad = [r for r in rows if r.get("unreliable")]
    if not bad:
        return None
    rule = STABILITY_RULE
    cells = ", ".join(f"{r['backend']} batch {r['batch']} ({r['unreliable_reason']})" for r in bad)
    return (
        f"**{len(bad)} of {len(rows)} rows are unreliable** and give no speed-up: {cells}. Their timings "
        f"were still unstable after re-measuring (block medians spread over {rule.max_spread:.0%}, p95/p50 "
        f"over {rule.max_tail:g}, or a 1-min load above the CPUs the benchmark leaves free by more than "
        f"{rule.load_margin:g}: other jobs shared the CPU). Re-run on an idle machine."
    )


def write_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """:func:`plot`, or one line on stderr saying that matplotlib is missing and how to install it."""
    if not has_matplotlib():
        print(MATPLOTLIB_MISSING, file=sys.stderr)
        return None
    return plot(rows, path)


def report(config: LatencyBenchConfig) -> list[dict[str, Any]]:
    """:func:`run`, then write ``bench_latency.{jsonl,csv,md,png}`` under ``config.out`` and print the table."""
    from zreward_deploy.bench.common import write_rows

    rows = run(config)
    jsonl, csv_path = write_rows(rows, config.out, "bench_latency")
    table = markdown(rows)
    loads = [r[k] for r in rows for k in ("load_avg_1min_before", "load_avg_1min_after") if r[k] is not None]
    notes = [
        f"1-min load average during the runs: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} CPUs"
        if loads
        else "1-min load average: not available on this system",
        stability_note(rows),
    ]
    note = "\n\n".join(n for n in notes if n)
    Path(config.out, "bench_latency.md").write_text(table + "\n\n" + note + "\n")
    print(table)
    print(note)
    if config.plot:
        png = write_plot(rows, Path(config.out) / "bench_latency.png")
        if png is not None:
            print(f"wrote {png}", file=sys.stderr)
    print(f"environment: {json.dumps(rows[0]['env'])}\nwrote {jsonl} and {csv_path}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from zreward_deploy.cliargs import config_from_argv

    # list flags: 1,8,32 (or 1 8 32, as before)
    config = config_from_argv(LatencyBenchConfig, argv, __doc__, space_separated=True)
    return report(config)


if __name__ == "__main__":
    main()
