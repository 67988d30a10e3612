"""``zreward score``: score images against prompts with a saved model."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("score", help="score images against prompts", description=__doc__)
    p.add_argument("--model", required=True, help="model directory (config.json, *.safetensors, tokenizer)")
    p.add_argument("--image", action="append", required=True, help="image file; repeat for several")
    p.add_argument(
        "--prompt", action="append", required=True, help="prompt; one for all images or one per image"
    )
    p.add_argument(
        "--dimensions",
        default=None,
        help="comma-separated rubric dimensions (default: those the model was trained on, else all)",
    )
    p.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx", "tensorrt"],
        help="runtime: torch (model dir), onnx or tensorrt (an export folder; docs/export.md) (default: torch)",
    )
    p.add_argument(
        "--allow-failed-validation",
        action="store_true",
        help="onnx/tensorrt: load an export whose validation failed (refused otherwise; docs/export.md)",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=32, help="micro-batch size (default: 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cliargs import check_device, parse_list
    from ..errors import ZRewardInputError
    from ..scoring import load_scorer

    dims = parse_list(args.dimensions, "--dimensions")
    check_device(args.device)
    if args.batch_size < 1:
        raise ZRewardInputError("--batch-size", f"must be >= 1, got {args.batch_size}")
    extra = {"allow_failed_validation": True} if args.allow_failed_validation else {}
    if extra and args.backend == "torch":
        raise ZRewardInputError(
            "--allow-failed-validation", "applies to exported models (--backend onnx/tensorrt)"
        )
    scorer = load_scorer(
        args.model, backend=args.backend, device=args.device, max_batch_size=args.batch_size, **extra
    )
    prompts = args.prompt if len(args.prompt) > 1 else args.prompt[0]
    result = scorer.score(args.image, prompts, dimensions=dims, errors="collect")
    records = result.to_records()
    for rec in records:
        rec["image"] = args.image[rec["index"]]
        rec["prompt"] = args.prompt[rec["index"]] if len(args.prompt) > 1 else args.prompt[0]
    training = scorer.config.training
    if args.json:
        out = {
            "values": result.values,
            "dimensions": result.dimensions,
            "untrained_dimensions": result.untrained,
            "training": training,
            "items": records,
        }
        print(json.dumps(out, indent=2))
    else:
        note = training_note(training, result.untrained, result.dimensions)
        print(format_records(records, result.values) + (f"\n{note}" if note else ""))
    return 1 if result.errors else 0


def training_note(training: dict | None, untrained: list[str], dimensions: list[str]) -> str:
    """One line saying which scored dimensions carry no learned signal ('' when all were trained)."""
    if training is None:
        return "note: this model carries no training record; which dimensions were trained is unknown"
    if not untrained:
        return ""
    if training["method"] in ("none", "compose"):
        what = "randomly initialised" if training["method"] == "none" else "composed, projector untrained"
        return f"note: this model was never trained ({what}): its scores are not meaningful"
    return (
        f"note: {', '.join(untrained)} marked (untrained): this model was trained ({training['method']}) on "
        f"{', '.join(d for d in dimensions if d not in untrained) or 'other dimensions'} only"
    )


def format_records(records: list[dict], values: list[float]) -> str:
    """Human-readable table: per item, per dimension, mean ± std and the distribution as bars."""
    lines = []
    for rec in records:
        lines.append(f"{rec['image']}  prompt: {rec['prompt']!r}")
        if "error" in rec:
            lines.append(f"  error: {rec['error']}")
            continue
        lines.append(f"  reward {rec['reward']:.3f}")
        for name, d in rec["dimensions"].items():
            bars = "  ".join(f"{k}:{'#' * round(p * 20):<20s}{p:5.2f}" for k, p in d["probs"].items())
            mark = "" if d.get("trained", True) else "  (untrained)"
            lines.append(f"  {name:<13s} {d['mean']:.3f} ± {d['std']:.3f}   {bars}{mark}")
    return "\n".join(lines)
