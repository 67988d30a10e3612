"""``zreward demo``: the whole pipeline on a CPU in a few minutes (see zreward_deploy/pipeline/demo.py)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import traceback

# Files a demo folder has from its first stage on (the dataset) or at its end (summary, report).
DEMO_MARKERS = ("summary.json", "report.md", "data/train.jsonl")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole pipeline on a CPU (durations: README): synthetic data, GDSO teacher, RISD student, ONNX "
        "export, parity and latency, report.md",
        description="Synthetic data -> SFT teacher (warm start) -> GDSO teacher -> RISD student -> ONNX "
        "export -> parity and latency -> OUT/report.md with tables and plots. Progress on stderr; the "
        "example scores (or --json: the whole summary) on stdout. Exit status 1 if a stage fails or "
        "parity fails.",
    )
    p.add_argument(
        "--out",
        default="zreward-demo",
        help="output folder, new or empty unless --overwrite (default: ./zreward-demo)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the folder of an earlier demo (it is deleted first)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the data, models and sampling (default: 0)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny budgets: checks the stages, measures nothing (a fraction of the full run)",
    )
    p.add_argument(
        "--synth-style",
        choices=("natural", "flat"),
        default="natural",
        help="style of the synthetic scenes (zreward data synth --style): natural (textured, lit; the "
        "default) or flat (the flat-coloured scenes of earlier reports)",
    )
    p.add_argument("--json", action="store_true", help="print the summary (every number) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import MissingDependencyError, ZRewardInputError
    from ..fileio import check_output_dir
    from ..pipeline.demo import DemoStageError, run_demo
    from .score import format_records

    # The one folder rule of every command: an earlier demo is replaced only when asked, and only a folder
    # that is one (a typo must not delete another folder); it is removed first so that no stage of the new
    # run resumes or mixes with the old one.
    out = check_output_dir(args.out, args.overwrite, marker=DEMO_MARKERS)
    if out.exists():
        shutil.rmtree(out)
    try:
        summary = run_demo(args.out, seed=args.seed, quick=args.quick, synth_style=args.synth_style)
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
