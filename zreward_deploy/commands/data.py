"""``zreward data check DIR`` and ``zreward data synth --out DIR ...`` (dataset format: docs/data.md)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("data", help="check or generate datasets (JSONL splits + images)")
    commands = group.add_subparsers(dest="data_command", metavar="<data command>")

    check = commands.add_parser(
        "check", help="validate a dataset folder; prints every problem (file:line: field: reason)"
    )
    check.add_argument("dir", help="dataset folder with train.jsonl / val.jsonl / test.jsonl and images")
    check.add_argument(
        "--split",
        action="append",
        choices=["train", "val", "test"],
        help="check only this split (repeatable; default: all present)",
    )
    check.add_argument("--model", help="take the score scale and rubric from this model directory's config")
    check.add_argument("--skip-images", action="store_true", help="do not check that the images exist")
    check.set_defaults(func=run_check)

    synth = commands.add_parser(
        "synth", help="write a procedurally generated dataset (shapes, defects, annotators)"
    )
    synth.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    synth.add_argument("--prompts", type=int, default=60, help="number of prompts (default 60)")
    synth.add_argument("--images-per-prompt", type=int, default=4, help="images per prompt (default 4)")
    synth.add_argument("--annotators", type=int, default=5, help="simulated annotators per image (default 5)")
    synth.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same bytes")
    synth.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    synth.set_defaults(func=run_synth)
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])


def run_check(args: argparse.Namespace) -> int:
    from ..data import build_pairs, read_dataset

    scale = rubric = None
    if args.model:
        from ..config import ZRewardConfig
        from ..errors import InvalidModelError

        try:
            config = ZRewardConfig.from_pretrained(args.model)
        except OSError as exc:
            raise InvalidModelError(args.model, f"cannot read the model config ({exc})") from None
        scale, rubric = config.get_score_scale(), config.get_rubric()
    data, problems = read_dataset(
        args.dir, args.split, scale=scale, rubric=rubric, check_images=not args.skip_images
    )
    if problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) in {args.dir}")
        return 1
    records = [r for split in data.values() for r in split]
    dims = list(dict.fromkeys(d for r in records for d in r.dimensions))
    counts = ", ".join(f"{len(rows)} {split}" for split, rows in data.items())
    n_pairs = sum(len(build_pairs(rows, dims)) for rows in data.values())
    annotated = sum(1 for r in records if r.annotations)
    print(
        f"ok: {args.dir}: {counts} records; {len({r.prompt_id for r in records})} prompts; "
        f"dimensions {dims or 'none'}; {n_pairs} same-prompt pairs; {annotated} records with annotations"
    )
    return 0


def run_synth(args: argparse.Namespace) -> int:
    import time

    from ..data.synth import SynthConfig, generate_dataset

    config = SynthConfig(
        prompts=args.prompts,
        images_per_prompt=args.images_per_prompt,
        annotators=args.annotators,
        image_size=args.image_size,
        seed=args.seed,
    )
    start = time.perf_counter()
    counts = generate_dataset(args.out, config, overwrite=args.overwrite)
    took = time.perf_counter() - start
    total = sum(counts.values())
    split_text = ", ".join(f"{n} {split}" for split, n in counts.items())
    print(f"wrote {total} images ({split_text}) to {args.out} in {took:.1f} s (seed {args.seed})")
    return 0
