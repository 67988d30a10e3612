"""fp32 GEMM throughput of torch against ONNX Runtime on this CPU, at the exported model's shapes.

Why this exists: the exported scorer is GEMM-bound on a CPU (docs/benchmarks.md), so whether ONNX Runtime
or torch eager scores faster on a given machine is decided mostly by which library multiplies matrices
faster *there*. On an Intel Xeon (AVX-512, AMX) torch's MKL and ORT's MLAS were within ±30 % of each
other; on an AMD EPYC MLAS was ≈ 2.3× faster, and the whole scorer followed. Run this on the machine you
deploy to before choosing a backend; it takes seconds.

Providers, same process, taking turns by blocks of ``block`` runs (``time_blocks``: run by run interleaving
would put one library's spinning threads on the cores while the other is timed, which doubled both here):
  torch  ``torch.mm(x, w)`` with ``threads`` intra-op threads (0 = torch's default).
  onnx   a one-node ONNX graph ``MatMul(x, W)`` with ``W`` an initializer (as in the exported model), CPU
         execution provider, all graph optimizations, ``threads`` intra-op threads (0 = ORT's default).
Each row: shape ``M×K×N``, median / p95 ms and GFLOP/s (``2·M·K·N / median``); the ONNX row also has its
speed-up over torch (ratio of medians). ORT's time includes its per-call ``run`` overhead (a few µs),
which is part of what a real graph pays per node as well.

Default shapes: the ``bench-small`` preset's (LM width 512, MLP 1408; vision width 256, MLP 1024) at batch
1 (≈ 340 tokens through the LM, 196 through the vision tower) and batch 8 (≈ 2720 LM tokens).

Run:  python -m zreward_deploy.bench.bench_gemm --out runs/bench_gemm [--threads 2] [--shapes 340x512x1408 …]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zreward_deploy.bench.common import (
    environment,
    publish,
    summarize,
    time_blocks,
    torch_threads,
)

BENCH_SMALL_SHAPES = (
    "340x512x1408",
    "340x1408x512",
    "340x512x512",
    "196x256x1024",
    "2720x512x1408",
    "2720x1408x512",
)


@dataclass
class GemmBenchConfig:
    shapes: tuple[str, ...] = field(
        default=BENCH_SMALL_SHAPES, metadata={"help": "GEMM shapes as MxKxN (x[M,K] @ w[K,N])"}
    )
    warmup: int = field(default=3, metadata={"help": "untimed runs of each provider before measuring"})
    repeats: int = field(default=9, metadata={"help": "timed runs; the median is reported"})
    block: int = field(default=3, metadata={"help": "timed runs per block (providers take turns by blocks)"})
    threads: int = field(default=0, metadata={"help": "intra-op threads of both libraries (0 = defaults)"})
    seed: int = field(default=0, metadata={"help": "seed of the random operands"})
    out: str = field(default="runs/bench_gemm", metadata={"help": "output directory for JSONL/CSV/Markdown"})

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.block < 1 or self.warmup < 0 or self.threads < 0:
            raise ValueError("repeats >= 1, block >= 1, warmup >= 0 and threads >= 0 are required")
        if not self.shapes:
            raise ValueError("at least one shape is required")
        for shape in self.shapes:
            parse_shape(shape)


def parse_shape(text: str) -> tuple[int, int, int]:
    """``'340x512x1408'`` -> ``(340, 512, 1408)``; a clear error names a malformed shape."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"shape {text!r} is not MxKxN with three positive integers (e.g. 340x512x1408)")
    m, k, n = (int(p) for p in parts)
    return m, k, n


def _onnx_matmul_session(weight: Any, threads: int) -> Any:
    """An ORT session of the one-node graph ``y = MatMul(x, W)`` with ``W`` baked in as an initializer."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    # IR version 8 is opset 18's (onnx 1.13); onnx 1.23's default (14) is newer than ONNX Runtime 1.30 reads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _time_shape(m: int, k: int, n: int, config: GemmBenchConfig, rng: Any) -> dict[str, list[float]]:
    """Milliseconds of both providers on ``x[m,k] @ w[k,n]``, taking turns by blocks."""
    import numpy as np
    import torch

    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    session = _onnx_matmul_session(w, config.threads)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    # the same product, so that a broken provider cannot look fast
    np.testing.assert_allclose(session.run(None, {"x": x})[0], (xt @ wt).numpy(), rtol=1e-3, atol=1e-2)
    return time_blocks(
        {"torch": lambda: torch.mm(xt, wt), "onnx": lambda: session.run(None, {"x": x})},
        warmup=config.warmup,
        repeats=config.repeats,
        block=config.block,
    )


def run(config: GemmBenchConfig) -> list[dict[str, Any]]:
    """Measure both providers at every shape; returns one row per (shape, provider)."""
    import numpy as np

    rng = np.random.default_rng(config.seed)
    rows: list[dict[str, Any]] = []
    with torch_threads(config.threads):
        env = environment()  # inside, so that cpu_threads is the count the run used
        for shape in config.shapes:
            m, k, n = parse_shape(shape)
            stats = {name: summarize(t) for name, t in _time_shape(m, k, n, config, rng).items()}
            for name, s in stats.items():
                rows.append(
                    {
                        "bench": "gemm",
                        "provider": name,
                        "shape": f"{m}x{k}x{n}",
                        "m": m,
                        "k": k,
                        "n": n,
                        "dtype": "float32",
                        "threads": config.threads,  # 0: each library's default (env has torch's count)
                        **s,
                        "gflops": 2.0 * m * k * n / (s["median_ms"] * 1e6),
                        "speedup_vs_torch": stats["torch"]["median_ms"] / s["median_ms"],
                        "env": env,
                    }
                )
    return rows


COLUMNS = ("shape", "provider", "median_ms", "p95_ms", "gflops", "speedup_vs_torch")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse flags, run, write ``bench_gemm.{jsonl,csv,md}`` under ``--out``; returns the rows."""
    from zreward_deploy.cliargs import config_from_argv

    # list flags: 1,8,32 (or 1 8 32, as before)
    config = config_from_argv(GemmBenchConfig, argv, __doc__, space_separated=True)
    rows = run(config)
    publish(rows, config.out, "bench_gemm", COLUMNS, env=True)
    return rows


if __name__ == "__main__":
    main()
