"""``zreward bench parity|latency``: exported runtimes against torch (accuracy parity, latency).

The options are the fields of the benchmarks' config dataclasses (``ParityBenchConfig``,
``LatencyBenchConfig``), so the CLI, ``python -m zreward_deploy.bench.bench_parity`` and the library take
the same settings. The bench modules import torch and the runtimes only inside their ``run`` functions.
List flags take one comma-separated value (``--batch-sizes 1,8,32``; ``1 8 32`` still works); a bad
value, an empty list entry or a device this build cannot use is one ``zreward: error:`` line, before any
model is built.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--option`` per field of the dataclass ``cls``, with its help text and default.

    ``tuple[...]`` fields are list flags: one comma-separated value (``--batch-sizes 1,8,32``, the
    convention of every ``zreward`` command); space-separated values (``--batch-sizes 1 8 32``) are still
    accepted, so that older command lines keep working. They are parsed by :func:`list_flag_values`
    (called by :func:`dataclass_from_namespace`), where an empty entry is a one-line error naming the
    flag. ``bool`` fields become ``--name`` (default False) or ``--no-name`` (default True); ``X | None``
    fields default to None.
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
            # raw strings here; list_flag_values casts them after joining with commas
            kwargs.update(type=str, nargs="+", metavar="LIST")
            text = f"{text}; comma-separated" if text else "comma-separated"
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs["help"] = text if default is None else f"{text} (default: {shown})"
        parser.add_argument(flag, **kwargs)


def list_flag_values(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each list flag of ``cls`` given on the command line (a list of strings) parsed by
    :func:`~zreward_deploy.commands.args.parse_list` into a tuple: the strings are joined with commas
    first, so ``1,8,32`` and ``1 8 32`` give the same ``(1, 8, 32)``. Defaults (tuples, None) pass
    through. Raises :class:`~zreward_deploy.errors.ZRewardInputError` naming the flag for an empty entry
    (``1,,8``) or a value that is not of the field's type."""
    from .args import parse_list

    out = dict(values)
    for f in dataclasses.fields(cls):
        kind, value = str(f.type), out.get(f.name)
        if not kind.startswith("tuple") or not isinstance(value, list):
            continue
        cast = int if "[int" in kind else float if "[float" in kind else str
        flag = "--" + f.name.replace("_", "-")
        out[f.name] = tuple(parse_list(",".join(value), flag, cast) or ())
    return out


def dataclass_from_namespace(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` from the parsed options (list flags parsed by :func:`list_flag_values`)."""
    from zreward_deploy.errors import ZRewardInputError

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    parsed = list_flag_values(cls, values)
    try:
        return cls(**parsed)
    except ZRewardInputError:
        raise
    except ValueError as err:  # the config's own checks: one line from the CLI, not a traceback
        raise ZRewardInputError(None, str(err)) from None


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

    from .args import check_device

    config = dataclass_from_namespace(ParityBenchConfig, args)
    check_device(config.device)  # before building a model or a dataset
    rows = report(config)
    return 0 if all(r["passed"] for r in rows) else 1


def run_latency(args: argparse.Namespace) -> int:
    from zreward_deploy.bench.bench_latency import LatencyBenchConfig, report

    from .args import check_device

    config = dataclass_from_namespace(LatencyBenchConfig, args)
    check_device(config.device)  # before building a model or an export
    report(config)
    return 0
