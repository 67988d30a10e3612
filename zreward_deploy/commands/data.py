"""``zreward data check DIR``, ``zreward data synth --out DIR ...`` and ``zreward data import FORMAT SRC
--out DIR`` (dataset format and importers: docs/data.md)."""

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
    _register_import(commands)
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])


# the importer registry's names, repeated here so that `zreward --help` imports no importer
IMPORT_FORMATS = (
    "agiqa-3k",
    "richhf-18k",
    "imagerewarddb",
    "evalmuse-40k",
    "pickapic-v2",
    "hpdv2",
    "scored-pairs",
)


def _register_import(commands: argparse._SubParsersAction) -> None:
    imp = commands.add_parser(
        "import",
        help="import a local copy of a public rating / preference set (docs/data.md, 'Importing public sets')",
        description="Import a public set into the package's dataset format: records on the rubric and the "
        "model's score scale, pairwise judgements in {split}.preferences.jsonl, images once each. Exit "
        "status: 0 imported (skipped rows are counted, printed and listed in DIR/import_report.json), "
        "1 nothing could be imported, 2 bad usage or a source that is not the set's format.",
    )
    imp.add_argument(
        "format", choices=IMPORT_FORMATS, metavar="FORMAT", help=f"one of {', '.join(IMPORT_FORMATS)}"
    )
    imp.add_argument(
        "src", metavar="SRC", help="the set's files as it ships them (a folder, or its main file)"
    )
    imp.add_argument("--out", required=True, help="dataset folder to write (new or empty unless --overwrite)")
    imp.add_argument(
        "--images",
        help="where the images are when not in SRC; richhf-18k: the local Pick-a-Pic copy (parquet or "
        "save_to_disk folder) that holds its images and prompts",
    )
    imp.add_argument(
        "--map",
        action="append",
        metavar="FIELD=DIM",
        help="send a set field to a rubric dimension (repeatable)",
    )
    imp.add_argument(
        "--drop", action="append", metavar="FIELD", help="do not import a set field (repeatable)"
    )
    imp.add_argument(
        "--source-range",
        action="append",
        metavar="FIELD=LO:HI",
        help="correct a field's scale in the set (repeatable; default: the set's documented scale)",
    )
    imp.add_argument("--scale-min", type=float, help="lowest score of the model's scale (default 1)")
    imp.add_argument("--scale-max", type=float, help="highest score of the model's scale (default 5)")
    imp.add_argument("--model", help="take the score scale and rubric from this model directory's config")
    imp.add_argument(
        "--split",
        action="append",
        choices=["train", "val", "test"],
        help="write only this split (repeatable)",
    )
    imp.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="sets without their own split: share of prompts in val",
    )
    imp.add_argument(
        "--test-fraction",
        type=float,
        default=0.15,
        help="sets without their own split: share of prompts in test",
    )
    imp.add_argument("--source-split", help="the split of a single source file whose name does not tell it")
    imp.add_argument("--max-rows", type=int, help="stop after this many source rows")
    imp.add_argument(
        "--resume", action="store_true", help="continue an interrupted import with the same options"
    )
    imp.add_argument(
        "--overwrite", action="store_true", help="replace the output folder and discard an interrupted import"
    )
    imp.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    imp.add_argument("--dimension", action="append", help="scored-pairs: pair on this dimension (repeatable)")
    imp.add_argument(
        "--min-gap", type=float, default=0.0, help="scored-pairs: least score difference of a pair"
    )
    imp.add_argument(
        "--ties", action="store_true", help="scored-pairs: also write pairs with equal scores, as ties"
    )
    imp.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    """Import, print one summary line and the first skipped rows; exit 0, or 1 when nothing was
    imported."""
    from ..data.importers import import_dataset
    from ..data.importers.mapping import parse_assignments
    from ..data.records import printable as _printable
    from ..errors import ZRewardInputError

    scale = None
    if args.scale_min is not None or args.scale_max is not None:
        if args.model:
            raise ZRewardInputError(
                "--model", "takes the scale from the model; do not also give --scale-min/--scale-max"
            )
        scale = (
            1.0 if args.scale_min is None else args.scale_min,
            5.0 if args.scale_max is None else args.scale_max,
        )
    report = import_dataset(
        args.format,
        args.src,
        args.out,
        mapping=parse_assignments(args.map, "--map"),
        drop=args.drop or (),
        source_ranges=args.source_range,
        scale=scale,
        model=args.model,
        splits=args.split,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        images=args.images,
        source_split=args.source_split,
        max_rows=args.max_rows,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        dimensions=args.dimension,
        min_gap=args.min_gap,
        ties=args.ties,
    )
    if report.format == "scored-pairs":
        written = report.extra["result"]["splits"]
        counts = ", ".join(
            f"{split}: {report.records.get(split, 0)} records, {n} preferences ({written[split]['ties']} ties)"
            for split, n in report.preferences.items()
        )
        _emit(
            f"wrote {_printable(args.out)} from {_printable(args.src)} ({counts or 'no split'}) "
            f"in {report.seconds:.1f} s"
        )
        return 0
    _emit(_printable(report.summary()))
    for note in report.extra.get("notes", []):
        _emit(_printable(f"  {note}"))
    for problem in report.problems[:10]:
        where = f"{problem['file']}:{problem['row']}"
        field = f" {problem['field']}:" if problem["field"] else ""
        _emit(_printable(f"  skipped ({problem['kind']}) {where}:{field} {problem['reason']}"))
    if report.problems_total > 10:
        _emit(f"  ... and {report.problems_total - 10} more in {_printable(report.out)}/import_report.json")
    return 0 if report.rows_imported else 1


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
    from ..data import build_pairs, read_preferences
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
    data, judgements, problems = read_preferences(
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
    judged = [j for split in judgements.values() for j in split]
    ties = sum(1 for j in judged if j.preferred == "tie")
    _emit(
        f"ok: {name}: {counts} records; {len({r.prompt_id for r in records})} prompts; "
        f"dimensions {dims or 'none'}; {n_pairs} same-prompt pairs; {annotated} records with annotations; "
        f"{len(judged)} judgements ({ties} ties)"
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
