"""Latency and throughput of each runtime per batch size, in one process (DESIGN.md §10).

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

Reported per (backend, batch): p50 / p95 / p99 / min latency in ms over ``repeats`` timed runs after
``warmup`` runs (with 20 repeats p99 is the slowest run), images/s at p50, and ``speedup_vs_torch`` = torch
p50 / backend p50 measured in the same process. Written as JSONL/CSV, a Markdown table and a PNG plot.

Run:  zreward bench latency --out runs/bench_latency   (or python -m zreward_deploy.bench.bench_latency)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zreward_deploy.bench.bench_parity import BACKEND_VARIANTS, prepare_export, prepare_model

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
    block: int = field(default=5, metadata={"help": "timed runs per block with --timing blocks"})
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


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile of ``samples`` (p in [0, 100])."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


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

    with torch_threads(config.threads):  # the benchmark's thread setting ends with it
        return _run(config)


def _run(config: LatencyBenchConfig) -> list[dict[str, Any]]:
    import torch

    from zreward_deploy.bench.common import environment, time_blocks, time_interleaved

    out = Path(config.out)
    exports = Path(config.exports) if config.exports else out / "exports"
    model_dir = prepare_model(config.model, config.preset, config.text_model, out)
    scorers = {name: load_backend(model_dir, exports, name, config) for name in config.backends}
    first = next(iter(scorers.values()))
    dims = first.config.get_rubric().names
    env = environment()
    rows = []
    for batch in config.batch_sizes:
        pixel_values, ids, mask = make_inputs(first.processor, batch)
        providers = {
            name: (lambda s=s, pv=pixel_values, i=ids, m=mask: s._forward(pv, i, m, dims))
            for name, s in scorers.items()
        }
        load_before = os.getloadavg()[0]
        with torch.inference_mode():
            if config.timing == "blocks":
                times = time_blocks(providers, config.warmup, config.repeats, block=config.block)
            else:
                times = time_interleaved(providers, config.warmup, config.repeats)
        load_after = os.getloadavg()[0]
        p50 = {name: percentile(samples, 50) for name, samples in times.items()}
        for name, samples in times.items():
            scorer = scorers[name]
            rows.append(
                {
                    "bench": "latency",
                    "backend": name,
                    "batch": batch,
                    "text_length": int(ids.shape[1]),
                    "dimensions": len(dims),
                    "preset": config.preset if config.model is None else None,
                    "model": str(model_dir),
                    "device": config.device,
                    "p50_ms": p50[name],
                    "p95_ms": percentile(samples, 95),
                    "p99_ms": percentile(samples, 99),
                    "min_ms": min(samples),
                    "repeats": len(samples),
                    "timing": config.timing,
                    "images_per_s": batch / p50[name] * 1e3,
                    "speedup_vs_torch": p50["torch"] / p50[name] if "torch" in p50 else None,
                    "runtime": scorer.describe() if hasattr(scorer, "describe") else {"backend": name},
                    "torch_threads": torch.get_num_threads(),
                    "load_avg_1min_before": load_before,
                    "load_avg_1min_after": load_after,
                    "env": env,
                }
            )
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
)


def report(config: LatencyBenchConfig) -> list[dict[str, Any]]:
    """:func:`run`, then write ``bench_latency.{jsonl,csv,md,png}`` under ``config.out`` and print the table."""
    from zreward_deploy.bench.common import markdown_table, write_rows

    rows = run(config)
    jsonl, csv_path = write_rows(rows, config.out, "bench_latency")
    table = markdown_table(rows, COLUMNS)
    loads = [r["load_avg_1min_before"] for r in rows] + [r["load_avg_1min_after"] for r in rows]
    note = (
        f"1-min load average during the runs: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} CPUs"
    )
    Path(config.out, "bench_latency.md").write_text(table + "\n\n" + note + "\n")
    print(table)
    print(note)
    if config.plot:
        print(f"wrote {plot(rows, Path(config.out) / 'bench_latency.png')}", file=sys.stderr)
    print(f"environment: {json.dumps(rows[0]['env'])}\nwrote {jsonl} and {csv_path}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from zreward_deploy.commands.bench import add_dataclass_arguments, dataclass_from_namespace

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dataclass_arguments(parser, LatencyBenchConfig)
    return report(dataclass_from_namespace(LatencyBenchConfig, parser.parse_args(argv)))


if __name__ == "__main__":
    main()
