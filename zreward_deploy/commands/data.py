"""``zreward data check DIR`` and ``zreward data synth --out DIR ...`` (dataset format: docs/data.md)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from ..cliargs import ArgumentParser, dataclass_from_namespace, defer_dataclass_arguments


def _synth_config() -> type:
    from ..data.synth_config import SynthConfig

    return SynthConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("data", help="check or generate datasets (JSONL splits + images)")
    commands = group.add_subparsers(
        dest="data_command", metavar="<data command>", parser_class=ArgumentParser
    )

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
    check.add_argument(
        "--deep",
        action="store_true",
        help="decode every image's pixels (catches truncated or corrupt image data; slower)",
    )
    check.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="accept image paths that are absolute or leave the dataset folder (.. or a symlink); "
        "refused by default",
    )
    check.set_defaults(func=run_check)

    synth = commands.add_parser(
        "synth", help="write a procedurally generated dataset (shapes, defects, annotators)"
    )
    synth.add_argument("--out", required=True, help="output folder (must be empty or new unless --overwrite)")
    synth.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty output folder (its content is deleted)"
    )
    # --prompts, --images-per-prompt, --annotators, --image-size, --seed, --val-fraction, --test-fraction:
    # the fields of SynthConfig (zreward_deploy.data.synth_config, light), added when `data synth` is parsed
    defer_dataclass_arguments(synth, _synth_config)
    synth.set_defaults(func=run_synth)
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])


class _Progress:
    """Progress of a long check on stderr (stdout carries the report): a self-overwriting line on a
    terminal; when redirected, one line per 10 % so that a log shows the run is alive."""

    def __init__(self, stream: TextIO, label: str):
        self.stream, self.label = stream, label
        self.tty = stream.isatty()
        self.start = self.last_draw = time.monotonic()
        self.decile = 0

    def __call__(self, done: int, total: int) -> None:
        if total <= 0:
            return
        now = time.monotonic()
        text = f"{self.label}: {done}/{total} lines ({100 * done // total}%), {now - self.start:.0f} s"
        if self.tty:
            if done == total or now - self.last_draw >= 0.2:
                self.last_draw = now
                end = "\n" if done == total else ""
                print(f"\r{text}", end=end, file=self.stream, flush=True)
        elif (decile := 10 * done // total) > self.decile:
            self.decile = decile
            print(text, file=self.stream, flush=True)


def _emit(text: str) -> None:
    """Print a report line; on a stdout that cannot encode it (e.g. ASCII), escape rather than fail."""
    try:
        print(text)
    except UnicodeEncodeError:
        encoding = sys.stdout.encoding or "ascii"
        print(text.encode(encoding, "backslashreplace").decode(encoding))


def run_check(args: argparse.Namespace) -> int:
    """Print every problem and exit 1, or one summary line and exit 0; nothing a dataset file holds
    makes it raise (the validator turns each line's failures into problems on that line)."""
    from ..data import build_pairs, read_dataset
    from ..data.records import printable as _printable
    from ..errors import ZRewardInputError

    if args.deep and args.skip_images:
        raise ZRewardInputError("--deep", "decodes the images; it cannot be combined with --skip-images")
    scale = rubric = None
    if args.model:
        from ..config import ZRewardConfig
        from ..errors import InvalidModelError
        from ..native import is_native_dir, read_native_config

        try:  # a native checkpoint's rubric and scale are in its zreward_native.json
            config = (
                read_native_config(args.model)
                if is_native_dir(args.model)
                else ZRewardConfig.from_pretrained(args.model)
            )
        except OSError as exc:
            raise InvalidModelError(args.model, f"cannot read the model config ({exc})") from None
        scale, rubric = config.get_score_scale(), config.get_rubric()
    data, problems = read_dataset(
        args.dir,
        args.split,
        scale=scale,
        rubric=rubric,
        check_images=not args.skip_images,
        deep=args.deep,
        allow_outside_paths=args.allow_outside_paths,
        progress=_Progress(sys.stderr, "deep check") if args.deep else None,
    )
    name = _printable(str(args.dir))  # a folder name need not be printable or encodable
    if problems:
        for problem in problems:
            _emit(str(problem))
        _emit(f"{len(problems)} problem(s) in {name}")
        return 1
    records = [r for split in data.values() for r in split]
    dims = list(dict.fromkeys(d for r in records for d in r.dimensions))
    counts = ", ".join(f"{len(rows)} {split}" for split, rows in data.items())
    n_pairs = sum(len(build_pairs(rows, dims)) for rows in data.values())
    annotated = sum(1 for r in records if r.annotations)
    _emit(
        f"ok: {name}: {counts} records; {len({r.prompt_id for r in records})} prompts; "
        f"dimensions {dims or 'none'}; {n_pairs} same-prompt pairs; {annotated} records with annotations"
    )
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from ..data.synth import SynthConfig, generate_dataset

    config = dataclass_from_namespace(SynthConfig, args)
    start = time.perf_counter()
    counts = generate_dataset(args.out, config, overwrite=args.overwrite)
    took = time.perf_counter() - start
    total = sum(counts.values())
    split_text = ", ".join(f"{n} {split}" for split, n in counts.items())
    print(f"wrote {total} images ({split_text}) to {args.out} in {took:.1f} s (seed {config.seed})")
    return 0
