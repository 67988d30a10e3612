"""``zreward eval --model DIR --data DIR``: score a split and report HPA, correlations, distribution and
calibration metrics, and the preference HPA of the split's judgements when it has a preference file
(docs/data.md)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on a dataset split (HPA, PLCC, SRCC, ...)")
    p.add_argument("--model", required=True, help="model directory (or exported model, with --backend)")
    p.add_argument("--data", required=True, help="dataset folder (see `zreward data check`)")
    p.add_argument(
        "--split", default="test", choices=["train", "val", "test"], help="split to evaluate (default test)"
    )
    p.add_argument("--backend", default="torch", help="scoring runtime (default torch; export adds others)")
    p.add_argument(
        "--allow-failed-validation",
        action="store_true",
        help="onnx/tensorrt: load an export whose validation failed (refused otherwise; docs/export.md)",
    )
    p.add_argument("--device", default="cpu", help="device for the torch backend (default cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="images per scoring call (default 32)")
    p.add_argument(
        "--dimensions",
        help="comma-separated dimensions to evaluate (default: the labelled ones the model was trained on)",
    )
    p.add_argument(
        "--limit",
        type=int,
        help="evaluate only the first N records of the split (and the judgements between them)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument(
        "--per-item", metavar="FILE.jsonl", help="write per-item predictions and human scores here"
    )
    p.add_argument("--plots", metavar="DIR", help="write PNG plots (needs matplotlib) to this folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    import sys

    from ..cliargs import check_device, parse_list
    from ..data import load_preferences, load_split
    from ..errors import ZRewardInputError
    from ..evaluation import evaluate, format_table, metrics_json, write_per_item, write_plots
    from ..scoring import load_scorer

    if args.batch_size < 1:
        raise ZRewardInputError("--batch-size", f"must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ZRewardInputError("--limit", f"must be >= 1, got {args.limit}")
    check_device(args.device)
    extra = {"allow_failed_validation": True} if args.allow_failed_validation else {}
    if extra and args.backend == "torch":
        raise ZRewardInputError(
            "--allow-failed-validation", "applies to exported models (--backend onnx/tensorrt)"
        )
    scorer = load_scorer(
        args.model, backend=args.backend, device=args.device, max_batch_size=args.batch_size, **extra
    )
    config = scorer.config
    records = load_split(args.data, args.split, scale=config.get_score_scale(), rubric=config.get_rubric())
    preferences = load_preferences(
        args.data, args.split, config.get_score_scale(), config.get_rubric(), records=records
    )
    if args.limit is not None:
        records = records[: args.limit]
    progress = not args.quiet and sys.stderr.isatty()
    dims = parse_list(args.dimensions, "--dimensions")
    ev = evaluate(
        scorer,
        records,
        batch_size=args.batch_size,
        progress=progress,
        dimensions=dims,
        preferences=preferences,
    )
    if args.per_item:
        write_per_item(ev, args.per_item)
    plots = write_plots(ev, args.plots) if args.plots else []
    if args.json:
        print(metrics_json(ev.metrics, split=args.split, backend=args.backend))
    else:
        judged = f", {len(preferences)} judgements" if preferences else ""
        print(
            f"{args.data} [{args.split}]: {len(records)} items{judged}, model {args.model}, "
            f"backend {args.backend}"
        )
        print(format_table(ev.metrics))
        for path in ([args.per_item] if args.per_item else []) + [str(p) for p in plots]:
            print(f"wrote {path}")
    return 0
