"""``zreward demo``: the whole pipeline on a CPU in a few minutes (see zreward_deploy/demo.py)."""

from __future__ import annotations

import argparse
import json
import sys
import traceback


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole pipeline on a CPU (~4 min on 2 cores): synthetic data, GDSO teacher, RISD student, ONNX "
        "export, parity and latency, report.md",
        description="Synthetic data -> SFT teacher (warm start) -> GDSO teacher -> RISD student -> ONNX "
        "export -> parity and latency -> OUT/report.md with tables and plots. Progress on stderr; the "
        "example scores (or --json: the whole summary) on stdout. Exit status 1 if a stage fails or "
        "parity fails.",
    )
    p.add_argument(
        "--out",
        default="zreward-demo",
        help="output folder; files of an earlier demo there are replaced (default: ./zreward-demo)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the data, models and sampling (default: 0)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny budgets (~20 s): checks the stages, measures nothing",
    )
    p.add_argument("--json", action="store_true", help="print the summary (every number) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoStageError, run_demo
    from ..errors import MissingDependencyError, ZRewardInputError
    from .score import format_records

    try:
        summary = run_demo(args.out, seed=args.seed, quick=args.quick)
    except DemoStageError as exc:
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, (ZRewardInputError, MissingDependencyError)):
            traceback.print_exception(cause)  # an unexpected failure: keep the evidence
        print(f"zreward demo: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        ex = summary["examples"]
        print(f"\nThe exported student on a few images ({ex['dimension']}):\n")
        print(format_records(ex["records"], ex["values"]))
        verdict = "passed" if summary["parity"]["passed"] else "FAILED"
        print(f"\nparity torch vs ONNX Runtime: {verdict}; total {summary['total_s']:.0f} s")
        print(f"report: {summary['report']}")
    return 0 if summary["parity"]["passed"] else 1
