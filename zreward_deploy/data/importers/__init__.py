"""Importers for public rating and preference sets: ``zreward data import FORMAT SRC --out DIR`` and
:func:`import_dataset` (docs/data.md, "Importing public sets").

Each importer (one module per set) reads a local copy of its set in the set's own format and yields rows;
one writer (:mod:`.writer`) maps them onto the rubric and the score scale, writes the records, the
pairwise judgements (``{split}.preferences.jsonl``) and the images (once each, by content hash), and
checkpoints so that an interrupted import resumes. The dataset is built in a hidden sibling folder
(``.DIR.import-partial``) and renamed to ``DIR`` only when complete, so ``DIR`` is never half-written.

    >>> from zreward_deploy.data.importers import import_dataset
    >>> report = import_dataset("agiqa-3k", "AGIQA-3K/", "data/agiqa")   # doctest: +SKIP
    >>> report.records
    {'train': 2088, 'val': 447, 'test': 447}
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ZRewardInputError
from ...fileio import check_output_dir, fsync_tree
from .base import Importer, RowError, SourceOptions, SourceRow
from .mapping import FieldMap, Target, parse_ranges, resolve_fields
from .writer import REPORT_FILE, STATE_FILE, Counters, ImportState, ImportWriter, stderr_progress

# FORMAT -> "module:class" (imported on use: a format's dependencies load only when it is used)
FORMATS: dict[str, str] = {
    "agiqa-3k": "agiqa3k:Agiqa3kImporter",
    "richhf-18k": "richhf18k:RichHF18kImporter",
    "imagerewarddb": "imagerewarddb:ImageRewardDBImporter",
    "evalmuse-40k": "evalmuse:EvalMuseImporter",
    "pickapic-v2": "pickapic:PickAPicV2Importer",
    "hpdv2": "hpdv2:HPDv2Importer",
}
# Not a public set: same-prompt pairs from a scored dataset of this package, by helper P's
# zreward_deploy.data.preferences.write_preference_dataset.
SCORED_PAIRS = "scored-pairs"
ALL_FORMATS: tuple[str, ...] = (*FORMATS, SCORED_PAIRS)
LISTED_IN_RESULT = 1000  # problems returned in ImportReport.problems (all are in import_report.json)


def get_importer(format: str) -> type[Importer]:
    """The importer class of ``format``; ZRewardInputError listing the formats for an unknown one."""
    target = FORMATS.get(format)
    if target is None:
        raise ZRewardInputError(format, f"unknown format; the formats are {list(ALL_FORMATS)}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(f".{module}", __name__), name)


@dataclass(kw_only=True)
class ImportReport(Counters):
    """What an import did (the writer's :class:`Counters` and more); also written to
    ``DIR/import_report.json`` (with every problem listed).

    Attributes:
        format, source, out: what was imported from where to where.
        rows_read: source rows read; rows_imported: imported; skipped: skipped rows by kind
            (``malformed``, ``image``, ``cross-split``, a set's own kinds such as ``unlabelled``, and
            ``not-selected`` for rows of splits not asked for).
        records, preferences: lines written per split.
        images_written, images_reused: image files written, and images found already written (the
            same bytes earlier in the import).
        pairs_dropped: judgements not written because one of their images was skipped.
        problems: the skipped rows, ``{kind, file, row, field, reason}`` (the first 1000 here).
        problems_total: how many problems the report file lists.
        mapping: field -> ``{kind, dimension, source_range}``; target: ``{dimensions, low, high}``.
        resumed: the import continued an interrupted one; seconds: wall time of this run.
    """

    format: str
    source: str
    out: str
    problems: list[dict[str, Any]] = field(default_factory=list)
    problems_total: int = 0
    mapping: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line for the command's output."""
        records = sum(self.records.values())
        per_split = ", ".join(f"{n} {s}" for s, n in sorted(self.records.items(), key=_split_order))
        prefs = sum(self.preferences.values())
        skipped = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items()))
        text = (
            f"imported {self.format} into {self.out}: {records} records ({per_split or 'none'}), "
            f"{prefs} preferences, {self.images_written} images written ({self.images_reused} reused); "
            f"{self.rows_imported} of {self.rows_read} rows imported"
        )
        if skipped:
            text += f", skipped: {skipped} (listed in {Path(self.out) / REPORT_FILE})"
        if self.pairs_dropped:
            text += f"; {self.pairs_dropped} pairs dropped with a skipped image"
        return text + f" in {self.seconds:.1f} s"


def _split_order(item: tuple[str, int]) -> int:
    return {"train": 0, "val": 1, "test": 2}.get(item[0], 3)


def import_dataset(
    format: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    mapping: Mapping[str, str] | None = None,
    drop: Iterable[str] = (),
    source_ranges: Mapping[str, tuple[float, float]] | Iterable[str] | None = None,
    scale: Any = None,
    rubric: Any = None,
    model: str | os.PathLike | None = None,
    splits: Sequence[str] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    images: str | os.PathLike | None = None,
    source_split: str | None = None,
    max_rows: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | Callable[[int, int | None], None] = True,
    checkpoint_rows: int = 2000,
    dimensions: Sequence[str] | None = None,
    min_gap: float = 0.0,
    ties: bool = False,
) -> ImportReport:
    """Import a local copy of a public set into the package's dataset format at ``out``.

    Args:
        format: one of :data:`ALL_FORMATS` (``agiqa-3k``, ``richhf-18k``, ``imagerewarddb``,
            ``evalmuse-40k``, ``pickapic-v2``, ``hpdv2``, ``scored-pairs``).
        src: the set's files as it ships them (a folder, or its main file).
        out: the dataset folder to write; must be new or empty unless ``overwrite``.
        mapping: set field -> rubric dimension (or ``"overall"`` for a preference field), overriding the
            set's defaults; drop: set fields not to import (their values stay in ``meta.original``).
        source_ranges: set field -> ``(low, high)``, correcting a field's source scale.
        scale: the target score range, a :class:`~zreward_deploy.config.ScoreScale` or ``(low, high)``
            (default [1, 5]); rubric: a :class:`~zreward_deploy.config.Rubric` or dimension names
            (default the package's four); model: read both from this model folder's config instead.
        splits: the splits to write (default all three).
        val_fraction, test_fraction: for sets without their own splits, the share of prompts in val and
            test (a deterministic split by a hash of the prompt id).
        images: where the images are when not in ``src`` (RichHF-18K: a local Pick-a-Pic copy).
        source_split: the split of a single source file whose name does not tell it.
        max_rows: stop after this many source rows (counted across resumed runs).
        resume: continue the interrupted import of the same settings; overwrite: replace ``out`` and
            discard an interrupted import.
        progress: True for a progress line on stderr, False for none, or ``fn(rows_done, total)``.
        checkpoint_rows: rows between checkpoints.
        dimensions, min_gap, ties: for ``scored-pairs`` only (``ties``: also write the same-prompt pairs
            whose scores are equal, as ties).

    Returns:
        The :class:`ImportReport` (also written to ``out/import_report.json``).

    Raises:
        ZRewardInputError: bad options, a source that is not the set's format, an output folder that may
            not be written, or a ``resume`` whose settings differ from the interrupted import's.
    """
    if format == SCORED_PAIRS:
        return _scored_pairs(src, out, dimensions, min_gap, ties, overwrite, progress, scale, rubric, model)
    importer_cls = get_importer(format)
    if checkpoint_rows < 1:
        raise ZRewardInputError("checkpoint_rows", f"must be at least 1, got {checkpoint_rows}")
    if max_rows is not None and max_rows < 1:
        raise ZRewardInputError("--max-rows", f"must be at least 1, got {max_rows}")
    wanted = _check_splits(splits)
    _check_fractions(val_fraction, test_fraction)
    target = _target(scale, rubric, model)
    fields = resolve_fields(
        importer_cls.fields, target, mapping, drop, parse_ranges(source_ranges), importer_cls.title
    )
    src_path = Path(src)
    images_path = Path(images) if images is not None else None
    protect = [src_path] + ([images_path] if images_path is not None else [])
    final = check_output_dir(out, overwrite, marker=["*.jsonl", REPORT_FILE], protect=protect)
    staging = final.parent / f".{final.name}.import-partial"
    if images_path is not None and not importer_cls.takes_images:
        raise ZRewardInputError("--images", f"{format} holds its images in SRC; --images is not used by it")
    if source_split is not None and not importer_cls.takes_source_split:
        raise ZRewardInputError(
            "--source-split", f"{format}'s files name their splits; --source-split is not used by it"
        )
    importer = importer_cls(src_path, SourceOptions(images_path, source_split, wanted))
    settings = {
        "format": format,
        "source": str(src_path.resolve()),
        "images": str(images_path.resolve()) if images_path else None,
        "source_split": source_split,
        "mapping": fields.as_dict(),
        "target": asdict(target),
        "splits": list(wanted),
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
    }
    settings = json.loads(json.dumps(settings))  # as the state file stores it (tuples become lists)
    state, resumed = _open_state(staging, settings, resume, overwrite, final)
    writer = ImportWriter(staging, importer, fields, state, wanted, val_fraction, test_fraction)
    shown = stderr_progress(f"import {format}") if progress is True else None
    report_progress = shown if shown is not None else (progress if callable(progress) else None)
    start = time.perf_counter()
    try:
        done = writer.restore()
        total = importer.total_rows()
        if max_rows is not None:
            total = min(total, max_rows) if total is not None else max_rows
        if max_rows is None or done < max_rows:
            for row in importer.rows(skip=done):
                writer.process(row)
                if report_progress is not None:
                    report_progress(writer.step, total)
                if writer.step % checkpoint_rows == 0:
                    writer.checkpoint()
                if max_rows is not None and writer.step >= max_rows:
                    break
        writer.checkpoint()
    except BaseException:
        # the checkpointed part stays in the staging folder for --resume; nothing after it counts
        writer.close()
        state.close()
        if shown is not None:
            shown.close()
        if progress is not False:
            print(
                f"import {format} stopped after {writer.step} rows; the part up to the last checkpoint is kept in "
                f"{staging}: the same command with --resume continues it",
                file=sys.stderr,
            )
        raise
    if shown is not None:
        shown.close()
    writer.close()
    _sync(staging, writer.counters.images_written)
    report = _report(format, src_path, final, writer, fields, target, resumed, time.perf_counter() - start)
    report.extra["notes"] = importer.notes()
    _write_report(staging / REPORT_FILE, report, state)
    state.close()
    for name in (STATE_FILE, STATE_FILE + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            (staging / name).unlink()
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise ZRewardInputError(str(final), "appeared while importing; the import stays in " + str(staging))
    _publish(staging, final)
    return report


# Up to this many new files an import fsyncs each; beyond, one os.sync() (see _publish).
FSYNC_EACH_UP_TO = 2000


def _sync(staging: Path, images_written: int) -> None:
    """Write every file of the import back to disk before the report says it is done: one fsync per file
    for a small import (no wait on other processes' writes), one ``os.sync()`` for a large one."""
    if images_written <= FSYNC_EACH_UP_TO or not hasattr(os, "sync"):
        fsync_tree(staging)
    else:
        os.sync()


def _publish(staging: Path, final: Path) -> None:
    """Rename the finished ``staging`` folder to ``final`` (replacing it); the files were synced before.

    :func:`~zreward_deploy.fileio.replace_dir` fsyncs every file first; with a million images that is a
    million fsyncs (~4 ms each on a VM disk: an hour). :func:`_sync` before the report is written writes
    them back (one ``os.sync()`` in bulk for a large import), with the same guarantee that the rename never
    survives a power loss without the files' data. The rename is :func:`replace_dir`'s: ``final`` is the old folder, absent, or
    the new one, never a mix.
    """
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists() or final.is_symlink():
        os.replace(final, old)
    os.replace(staging, final)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists() or old.is_symlink():
        old.unlink()


def _check_splits(splits: Sequence[str] | None) -> tuple[str, ...]:
    from ..records import SPLITS

    if splits is None:
        return tuple(SPLITS)
    wanted = tuple(dict.fromkeys(splits))
    for split in wanted:
        if split not in SPLITS:
            raise ZRewardInputError("--split", f"unknown split {split!r}; the splits are {list(SPLITS)}")
    if not wanted:
        raise ZRewardInputError("--split", "name at least one split")
    return wanted


def _check_fractions(val: float, test: float) -> None:
    for name, value in (("--val-fraction", val), ("--test-fraction", test)):
        if not 0.0 <= value < 1.0:
            raise ZRewardInputError(name, f"must be in [0, 1), got {value}")
    if val + test >= 1.0:
        raise ZRewardInputError(
            "--val-fraction/--test-fraction", f"their sum must be below 1, got {val + test}"
        )


def _target(scale: Any, rubric: Any, model: str | os.PathLike | None) -> Target:
    """The rubric and score range to map onto: from a model folder, or the arguments, or the defaults."""
    if model is not None:
        if scale is not None or rubric is not None:
            raise ZRewardInputError(
                "--model", "takes the scale and rubric from the model; do not also give them"
            )
        score_scale, model_rubric = _model_config(model)
        return Target(tuple(model_rubric.names), score_scale.min, score_scale.max)
    default = Target()
    names = default.dimensions
    if rubric is not None:
        names = tuple(rubric.names) if hasattr(rubric, "names") else tuple(rubric)
    low, high = default.low, default.high
    if scale is not None:
        if hasattr(scale, "min") and hasattr(scale, "max"):
            low, high = float(scale.min), float(scale.max)
        else:
            try:
                low, high = (float(v) for v in scale)
            except (TypeError, ValueError):
                raise ZRewardInputError(
                    "scale", f"expected a ScoreScale or (low, high), got {scale!r}"
                ) from None
    return Target(names, low, high)


def _model_config(model: str | os.PathLike) -> tuple[Any, Any]:
    """``(ScoreScale, Rubric)`` of a model folder (a native checkpoint or a zreward model)."""
    from ...config import ZRewardConfig
    from ...errors import InvalidModelError
    from ...native import is_native_dir, read_native_config

    try:
        config = read_native_config(model) if is_native_dir(model) else ZRewardConfig.from_pretrained(model)
    except OSError as exc:
        raise InvalidModelError(str(model), f"cannot read the model config ({exc})") from None
    return config.get_score_scale(), config.get_rubric()


def _open_state(
    staging: Path, settings: dict[str, Any], resume: bool, overwrite: bool, final: Path
) -> tuple[ImportState, bool]:
    """The state of the import in ``staging``: a new one, or (with ``resume``) the interrupted one, whose
    settings must be the same."""
    if staging.exists() and not resume:
        if not overwrite:
            raise ZRewardInputError(
                str(final),
                f"an interrupted import into it is kept in {staging}; pass --resume to continue it or "
                "--overwrite to start over",
            )
        shutil.rmtree(staging)
    resumed = staging.is_dir() and (staging / STATE_FILE).is_file()
    staging.mkdir(parents=True, exist_ok=True)
    state = ImportState(staging / STATE_FILE)
    saved = state.get("settings")
    if saved is None:
        state.put("settings", settings)
        state.commit()
        resumed = False
    elif saved != settings:
        state.close()
        differs = sorted(k for k in settings if saved.get(k) != settings[k])
        raise ZRewardInputError(
            "--resume",
            f"the interrupted import in {staging} was started with other settings (they differ in "
            f"{', '.join(differs)}); give the same options, or --overwrite to start over",
        )
    return state, resumed


def _report(
    format: str,
    src: Path,
    final: Path,
    writer: ImportWriter,
    fields: FieldMap,
    target: Target,
    resumed: bool,
    seconds: float,
) -> ImportReport:
    counts = {k: dict(v) if isinstance(v, dict) else v for k, v in writer.counters.as_dict().items()}
    return ImportReport(
        format=format,
        source=str(src),
        out=str(final),
        **counts,
        mapping=fields.as_dict(),
        target={**asdict(target), "dimensions": list(target.dimensions)},
        resumed=resumed,
        seconds=seconds,
    )


def _write_report(path: Path, report: ImportReport, state: ImportState) -> None:
    """Write the report with every problem, streamed (an import can skip a million rows); keep the first
    :data:`LISTED_IN_RESULT` in ``report.problems``."""
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        head = {k: v for k, v in asdict(report).items() if k not in ("problems", "problems_total")}
        f.write(json.dumps(head, indent=2, ensure_ascii=False)[:-2] + ',\n  "problems": [')
        for problem in state.problems():
            f.write(("\n    " if count == 0 else ",\n    ") + json.dumps(problem, ensure_ascii=False))
            if count < LISTED_IN_RESULT:
                report.problems.append(problem)
            count += 1
        f.write(("\n  " if count else "") + f'],\n  "problems_total": {count}\n}}\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    report.problems_total = count


def _scored_pairs(
    src: str | os.PathLike,
    out: str | os.PathLike,
    dimensions: Sequence[str] | None,
    min_gap: float,
    ties: bool,
    overwrite: bool,
    progress: bool | Callable[[int, int | None], None],
    scale: Any,
    rubric: Any,
    model: str | os.PathLike | None,
) -> ImportReport:
    """``scored-pairs``: same-prompt preference pairs from a scored dataset of this package, written by
    :func:`zreward_deploy.data.preferences.write_preference_dataset`."""
    from ...config import Dimension, Rubric, ScoreScale
    from ..preferences import write_preference_dataset

    if model is not None:
        if scale is not None or rubric is not None:
            raise ZRewardInputError(
                "--model", "takes the scale and rubric from the model; do not also give them"
            )
        scale, rubric = _model_config(model)
    elif scale is not None and not isinstance(scale, ScoreScale):
        target = _target(scale, None, None)
        scale = ScoreScale(values=(target.low, target.high), tokens=("lo", "hi"))  # only the range is checked
    if rubric is not None and not isinstance(rubric, Rubric):
        rubric = Rubric(tuple(Dimension(name=n, instruction=n) for n in rubric))
    shown = stderr_progress(f"import {SCORED_PAIRS}") if progress is True else None
    callback = shown if shown is not None else (progress if callable(progress) else None)
    start = time.perf_counter()
    try:
        result = write_preference_dataset(
            src,
            out,
            dimensions,
            min_gap=min_gap,
            ties=ties,
            overwrite=overwrite,
            scale=scale,
            rubric=rubric,
            progress=callback,
        )
    finally:
        if shown is not None:
            shown.close()
    splits = result.get("splits", {}) if isinstance(result, dict) else {}
    return ImportReport(
        format=SCORED_PAIRS,
        source=str(src),
        out=str(out),
        records={s: int(v.get("records", 0)) for s, v in splits.items()},
        preferences={s: int(v.get("preferences", 0)) for s, v in splits.items()},
        seconds=time.perf_counter() - start,
        extra={"result": result},
    )


__all__ = [
    "ALL_FORMATS",
    "FORMATS",
    "ImportReport",
    "Importer",
    "RowError",
    "SourceOptions",
    "SourceRow",
    "get_importer",
    "import_dataset",
]
