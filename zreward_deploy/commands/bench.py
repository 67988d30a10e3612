"""``zreward bench parity|latency``: exported runtimes against torch (accuracy parity, latency).

The options are the fields of the benchmarks' config dataclasses (``ParityBenchConfig``,
``LatencyBenchConfig``), so the CLI, ``python -m zreward_deploy.bench.bench_parity`` and the library take
the same settings. The bench modules import torch and the runtimes only inside their ``run`` functions.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--option`` per field of the dataclass ``cls``, with its help text and default.

    ``tuple[...]`` fields take several values; ``bool`` fields become ``--name`` (default False) or
    ``--no-name`` (default True); ``X | None`` fields default to None.
    """
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = f.metadata.get("help", "")
        if kind == "bool":
            if default:
                parser.add_argument(
                    "--no-" + f.name.replace("_", "-"),
                    dest=f.name,
                    action="store_false",
                    help=f"do not: {text}",
                )
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=text)
            continue
        scalar = (
            int if kind.startswith("int") or "[int" in kind else float if kind.startswith("float") else str
        )
        kwargs: dict[str, Any] = {"dest": f.name, "type": scalar, "default": default}
        if kind.startswith("tuple"):
            kwargs["nargs"] = "+"
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs["help"] = text if default is None else f"{text} (default: {shown})"
        parser.add_argument(flag, **kwargs)


def dataclass_from_namespace(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` from the parsed options (lists become tuples)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def register(subparsers: argparse._SubParsersAction) -> None:
    from zreward_deploy.bench.bench_latency import LatencyBenchConfig
    from zreward_deploy.bench.bench_parity import ParityBenchConfig

    group = subparsers.add_parser("bench", help="benchmark the exported runtimes against torch")
    sub = group.add_subparsers(dest="bench_command", metavar="<command>", required=True)

    parity = sub.add_parser(
        "parity",
        help="accuracy of each backend against torch on a dataset split (Δprobs, Δmean, KL, HPA, agreement)",
    )
    add_dataclass_arguments(parity, ParityBenchConfig)
    parity.set_defaults(func=run_parity)

    latency = sub.add_parser(
        "latency", help="p50/p95/p99 latency and images/s per backend and batch size, in one process"
    )
    add_dataclass_arguments(latency, LatencyBenchConfig)
    latency.set_defaults(func=run_latency)


def run_parity(args: argparse.Namespace) -> int:
    from zreward_deploy.bench.bench_parity import ParityBenchConfig, report

    rows = report(dataclass_from_namespace(ParityBenchConfig, args))
    return 0 if all(r["passed"] for r in rows) else 1


def run_latency(args: argparse.Namespace) -> int:
    from zreward_deploy.bench.bench_latency import LatencyBenchConfig, report

    report(dataclass_from_namespace(LatencyBenchConfig, args))
    return 0
