"""``zreward demo``: the main job on a fresh machine (see zreward_deploy/demo.py)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="build a tiny model, score generated images, print distributions")
    p.add_argument("--out", default="zreward-demo", help="working directory (default: ./zreward-demo)")
    p.add_argument("--seed", type=int, default=0, help="seed for the model and images (default: 0)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from .score import format_records

    print("building the tiny preset model (random weights: the scores are not meaningful yet) ...")
    summary = run_demo(args.out, seed=args.seed)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"model saved to {summary['model_dir']}\n")
        print(format_records(summary["records"], summary["values"]))
    return 0
