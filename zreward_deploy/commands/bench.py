"""``zreward bench parity|latency|native|resolution|serve|gpu|transfer``: exported runtimes against torch
(accuracy parity, latency), and a model's transfer from synthetic scenes to degraded photographs.

The options are the fields of the benchmarks' config dataclasses (``ParityBenchConfig``,
``LatencyBenchConfig``), turned into flags by :mod:`zreward_deploy.cliargs` as for every command, so the
CLI, ``python -m zreward_deploy.bench.bench_parity`` and the library take the same settings. The bench
modules import torch and the runtimes only inside their ``run`` functions. List flags take one
comma-separated value (``--batch-sizes 1,8,32``; ``1 8 32`` still works); a bad value, an empty list entry
or a device this build cannot use is one ``zreward: error:`` line, before any model is built.
"""

from __future__ import annotations

import argparse

from zreward_deploy.cliargs import add_dataclass_arguments, check_device, dataclass_from_namespace


def register(subparsers: argparse._SubParsersAction) -> None:
    from zreward_deploy.bench.bench_latency import LatencyBenchConfig
    from zreward_deploy.bench.bench_native import NativeBenchConfig
    from zreward_deploy.bench.bench_parity import ParityBenchConfig
    from zreward_deploy.bench.bench_resolution import ResolutionBenchConfig

    group = subparsers.add_parser("bench", help="benchmark the exported runtimes against torch")
    sub = group.add_subparsers(dest="bench_command", metavar="<command>", required=True)

    parity = sub.add_parser(
        "parity",
        help="accuracy of each backend against torch on a dataset split (Δprobs, Δmean, KL, HPA, agreement)",
    )
    add_dataclass_arguments(parity, ParityBenchConfig, space_separated=True)
    parity.set_defaults(func=run_parity)

    latency = sub.add_parser(
        "latency", help="p50/p95/p99 latency and images/s per backend and batch size, in one process"
    )
    add_dataclass_arguments(latency, LatencyBenchConfig, space_separated=True)
    latency.set_defaults(func=run_latency)

    native = sub.add_parser(
        "native",
        help="a native Qwen2.5-VL-shaped model: the HF generic path (one forward per dimension) vs one pass",
    )
    add_dataclass_arguments(native, NativeBenchConfig, space_separated=True)
    native.set_defaults(func=run_native)

    resolution = sub.add_parser(
        "resolution",
        help="a native Qwen-VL model: score shift of the fixed export resolution vs the model's dynamic one",
    )
    add_dataclass_arguments(resolution, ResolutionBenchConfig, space_separated=True)
    resolution.set_defaults(func=run_resolution)

    from zreward_deploy.bench.bench_serve import ServeBenchConfig

    serve = sub.add_parser(
        "serve",
        help="load on zreward serve: micro-batched vs per-request throughput and latency, then an overload run",
    )
    add_dataclass_arguments(serve, ServeBenchConfig)
    serve.set_defaults(func=run_serve)

    from zreward_deploy.bench.bench_gpu import GpuBenchConfig

    gpu = sub.add_parser(
        "gpu",
        help="every GPU measurement in one budgeted run (kernel tests, score head, end-to-end bf16 with MFU, "
        "ORT CUDA, TensorRT, serve); --dry-run: the same on the CPU, tiny",
    )
    add_dataclass_arguments(gpu, GpuBenchConfig, space_separated=True)
    gpu.set_defaults(func=run_gpu)

    from zreward_deploy.bench.bench_transfer import TransferBenchConfig

    transfer = sub.add_parser(
        "transfer",
        help="photographs clean vs blurred, noisy, pixelated at graded severities: does the model rank the "
        "clean one higher (pairwise accuracy, 95 %% CI)",
    )
    add_dataclass_arguments(transfer, TransferBenchConfig)
    transfer.set_defaults(func=run_transfer)


def run_parity(args: argparse.Namespace) -> int:
    from zreward_deploy.bench.bench_parity import ParityBenchConfig, report

    config = dataclass_from_namespace(ParityBenchConfig, args)
    check_device(config.device)  # before building a model or a dataset
    rows = report(config)
    return 0 if all(r["passed"] for r in rows) else 1


def run_latency(args: argparse.Namespace) -> int:
    from zreward_deploy.bench.bench_latency import LatencyBenchConfig, report

    config = dataclass_from_namespace(LatencyBenchConfig, args)
    check_device(config.device)  # before building a model or an export
    report(config)
    return 0


def run_native(args: argparse.Namespace) -> int:
    from zreward_deploy.bench.bench_native import NativeBenchConfig, report

    report(dataclass_from_namespace(NativeBenchConfig, args))
    return 0


def run_resolution(args: argparse.Namespace) -> int:
    from zreward_deploy.bench.bench_resolution import ResolutionBenchConfig, report

    report(dataclass_from_namespace(ResolutionBenchConfig, args))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from zreward_deploy.bench.bench_serve import ServeBenchConfig, report

    report(dataclass_from_namespace(ServeBenchConfig, args))
    return 0


def run_gpu(args: argparse.Namespace) -> int:
    from zreward_deploy.bench.bench_gpu import GpuBenchConfig, report

    report(dataclass_from_namespace(GpuBenchConfig, args))
    return 0


def run_transfer(args: argparse.Namespace) -> int:
    from zreward_deploy.bench.bench_transfer import TransferBenchConfig, report

    report(dataclass_from_namespace(TransferBenchConfig, args))
    return 0
