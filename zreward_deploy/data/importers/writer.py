"""The one writer behind every importer: rows in, a dataset folder out (docs/data.md, "Importing public
sets").

* **Records** are appended to ``{split}.jsonl`` and **judgements** to ``{split}.preferences.jsonl``; a row
  is planned and checked completely before anything of it is written, so it is imported whole or
  skipped whole (and reported with its file and row number).
* **Images** are written once, as ``images/<2 hex>/<sha256>.<ext>`` with the original encoded bytes: the
  same bytes twice are one file. Each new file is written under a temporary name, checked through the
  package's image reader (:func:`~zreward_deploy.imagefile.probe_image_file`: corrupt files and
  decompression bombs are refused) and renamed into place, so an image file is always complete.
* **State** lives in an SQLite file in the staging folder: the records and prompts seen (for reuse, the
  one-split-per-prompt rule and conflicts), the problems, and the last checkpoint (rows done, the byte
  length of every JSONL file, the counters). A checkpoint flushes and fsyncs the JSONL files, then
  commits all of it in one transaction. After a crash, ``--resume`` truncates each JSONL file to its
  checkpointed length (so no half-written line survives) and continues after the checkpointed row;
  images written after the checkpoint are complete files and are simply found again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ...errors import InvalidImageError, ZRewardInputError
from ...fileio import open_regular_file
from ..records import aggregate_annotations
from .base import ImageItem, Importer, RowError, SourceRow, text_hash
from .mapping import FieldMap, as_number

STATE_FILE = ".import-state.sqlite"
REPORT_FILE = "import_report.json"
# Largest image file read from a source folder: one image is held in memory while it is checked.
MAX_IMAGE_BYTES = 256 << 20
# Problem kinds listed in full in the report; the others (a set's own "unlabelled" rows, prompts kept in
# another split) are counted exactly and listed up to LISTED_PER_KIND times each.
ALWAYS_LISTED = ("malformed", "image")
LISTED_PER_KIND = 100

ProgressFn = Callable[[int, "int | None"], None]

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"GIF8", 0, "gif"),
    (b"WEBP", 8, "webp"),
    (b"BM", 0, "bmp"),
    (b"II*\x00", 0, "tif"),
    (b"MM\x00*", 0, "tif"),
)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


class ImageStore:
    """Content-addressed image files under ``root/images``; which digests are already part of the
    import is the state's ``images`` table (committed with the records that use them)."""

    def __init__(self, root: Path, state: ImportState):
        self.root, self.state = root, state
        (root / "images").mkdir(exist_ok=True)
        self._folders: set[str] = set()  # the images/<2 hex> folders known to exist

    def put(self, data: bytes, row_images: dict[str, str]) -> tuple[str, str, str]:
        """Store ``data`` once; return ``(path relative to root, digest, status)``, status ``"reused"``
        (already in the import, or earlier in the same row: ``row_images`` maps digests to paths),
        ``"found"`` (a complete file left by an interrupted run) or ``"written"``.

        Raises :class:`RowError` (field ``image``) when the bytes are not a readable image, are a
        decompression bomb or have a zero size; nothing is left on disk then.
        """
        digest = hashlib.sha256(data).hexdigest()
        known = row_images.get(digest) or self.state.image(digest)
        if known is not None:
            return known, digest, "reused"
        folder = self.root / "images" / digest[:2]
        ext = _sniff(data)
        if ext is not None and (folder / f"{digest}.{ext}").is_file():
            return f"images/{digest[:2]}/{digest}.{ext}", digest, "found"
        if digest[:2] not in self._folders:
            folder.mkdir(exist_ok=True)
            self._folders.add(digest[:2])
        tmp = folder / f".tmp-{digest}-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            ext = _check(tmp, ext)  # every new file is checked, whatever its magic bytes say
            os.replace(tmp, folder / f"{digest}.{ext}")
        except InvalidImageError as exc:
            raise RowError("image", exc.reason) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return f"images/{digest[:2]}/{digest}.{ext}", digest, "written"

    def remove(self, rel: str) -> None:
        with contextlib.suppress(OSError):
            (self.root / rel).unlink()


def _sniff(data: bytes) -> str | None:
    for magic, offset, ext in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return ext
    return None


def _check(path: Path, ext: str | None) -> str:
    """Check ``path`` through the package's image reader (its header: bombs, zero sizes, corrupt files)
    and return its extension: ``ext`` (from the magic bytes) or, for a rarer format, PIL's name of it."""
    from ...imagefile import probe_image_file

    probe_image_file(path)
    if ext is not None:
        return ext
    from PIL import Image

    with Image.open(path) as image:  # the header was just accepted: the format is known and safe
        return (image.format or "img").lower().replace("jpeg", "jpg")


def read_image_file(path: Path) -> bytes:
    """The bytes of an image file of a source folder (RowError when missing, not a regular file or
    larger than :data:`MAX_IMAGE_BYTES`)."""
    try:
        with open_regular_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_IMAGE_BYTES:
                raise RowError(
                    "image", f"{path}: {size} bytes, more than the {MAX_IMAGE_BYTES} read per image"
                )
            return f.read()
    except ZRewardInputError as exc:
        if exc.reason == "file does not exist":
            raise RowError("image", f"missing image: no file at {path}") from None
        raise RowError("image", f"{path}: {exc.reason}") from None


# --------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------


class ImportState:
    """The SQLite state of one import (see the module docstring). All writes of a checkpoint interval
    are one transaction: a crash loses them all, and the JSONL files are cut back to match."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=DELETE")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, id TEXT, prompt_id TEXT, split TEXT)
                WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS prompts (prompt_id TEXT PRIMARY KEY, split TEXT, text_hash TEXT,
                first TEXT) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS images (digest TEXT PRIMARY KEY, path TEXT) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS problems (seq INTEGER PRIMARY KEY, kind TEXT, file TEXT, row TEXT,
                field TEXT, reason TEXT);
            """
        )
        self.db.execute("BEGIN")

    def get(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, json.dumps(value)))

    def commit(self) -> None:
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def record(self, key: str) -> tuple[str, str, str] | None:
        return self.db.execute("SELECT id, prompt_id, split FROM records WHERE key = ?", (key,)).fetchone()

    def add_record(self, key: str, record_id: str, prompt_id: str, split: str) -> None:
        self.db.execute("INSERT INTO records VALUES (?, ?, ?, ?)", (key, record_id, prompt_id, split))

    def prompt(self, prompt_id: str) -> tuple[str, str, str] | None:
        return self.db.execute(
            "SELECT split, text_hash, first FROM prompts WHERE prompt_id = ?", (prompt_id,)
        ).fetchone()

    def add_prompt(self, prompt_id: str, split: str, hash_: str, first: str) -> None:
        self.db.execute("INSERT INTO prompts VALUES (?, ?, ?, ?)", (prompt_id, split, hash_, first))

    def image(self, digest: str) -> str | None:
        row = self.db.execute("SELECT path FROM images WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else row[0]

    def add_image(self, digest: str, path: str) -> None:
        self.db.execute("INSERT INTO images VALUES (?, ?)", (digest, path))

    def add_problem(self, kind: str, file: str, row: str, field: str | None, reason: str) -> None:
        self.db.execute(
            "INSERT INTO problems (kind, file, row, field, reason) VALUES (?, ?, ?, ?, ?)",
            (kind, file, row, field, reason),
        )

    def problems(self) -> Iterator[dict[str, Any]]:
        for kind, file, row, field_, reason in self.db.execute(
            "SELECT kind, file, row, field, reason FROM problems ORDER BY seq"
        ):
            yield {"kind": kind, "file": file, "row": row, "field": field_, "reason": reason}

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("ROLLBACK")
        self.db.close()


# --------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------


class ImportProgress:
    """Rows done on ``stream`` (stderr): a self-overwriting line on a terminal; when redirected, a line
    per 10 % of a known total, or per ``every`` rows (with rows/s) when the total is unknown."""

    def __init__(self, stream: TextIO, label: str, every: int = 10000):
        self.stream, self.label, self.every = stream, label, every
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.start = self.last = time.monotonic()
        self.decile = 0
        self.drawn = False

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        elapsed = max(now - self.start, 1e-9)
        rate = f"{done / elapsed:.0f} rows/s"
        if total:
            text = f"{self.label}: {done}/{total} rows ({100 * done // total}%), {rate}, {elapsed:.0f} s"
        else:
            text = f"{self.label}: {done} rows, {rate}, {elapsed:.0f} s"
        if self.tty:
            if now - self.last >= 0.2:
                self.last = now
                self.drawn = True
                print(f"\r{text}\x1b[K", end="", file=self.stream, flush=True)
        elif total:
            if (decile := 10 * done // total) > self.decile:
                self.decile = decile
                print(text, file=self.stream, flush=True)
        elif done % self.every == 0:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty and self.drawn:
            print(file=self.stream, flush=True)


def stderr_progress(label: str) -> ImportProgress:
    return ImportProgress(sys.stderr, label)


# --------------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------------


@dataclass
class Counters:
    rows_read: int = 0
    rows_imported: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)
    preferences: dict[str, int] = field(default_factory=dict)
    images_written: int = 0
    images_reused: int = 0
    pairs_dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Skip(Exception):
    def __init__(self, kind: str, field: str | None, reason: str):
        self.kind, self.field, self.reason = kind, field, reason


@dataclass
class _Planned:
    item: ImageItem
    record_id: str
    prompt_id: str
    split: str
    data: bytes
    scores: dict[str, float]
    annotations: dict[str, list[float]]
    std: dict[str, float]
    original: dict[str, Any]


class ImportWriter:
    """Turns :class:`SourceRow` objects into lines and image files in the folder ``root``."""

    def __init__(
        self,
        root: Path,
        importer: Importer,
        fields: FieldMap,
        state: ImportState,
        splits: tuple[str, ...],
        val_fraction: float,
        test_fraction: float,
    ):
        self.root, self.importer, self.fields, self.state = root, importer, fields, state
        self.splits, self.val_fraction, self.test_fraction = splits, val_fraction, test_fraction
        self.store = ImageStore(root, state)
        self.counters = Counters()
        self.step = 0
        self._files: dict[str, Any] = {}
        self._listed: dict[str, int] = {}

    # ----- checkpoints -----------------------------------------------------------------------------

    def restore(self) -> int:
        """Return to the last checkpoint: counters back, JSONL files cut to their checkpointed length
        (files created after it removed). Returns the number of rows already done."""
        saved = self.state.get("checkpoint") or {"step": 0, "offsets": {}, "counters": {}, "listed": {}}
        offsets = saved["offsets"]
        for path in self.root.glob("*.jsonl"):
            keep = offsets.get(path.name, 0)
            if keep:
                with open(path, "r+b") as f:
                    f.truncate(keep)
            else:
                path.unlink()
        self.counters = Counters(**saved["counters"]) if saved["counters"] else Counters()
        self._listed = dict(saved.get("listed", {}))
        self.step = int(saved["step"])
        return self.step

    def checkpoint(self) -> None:
        offsets = {}
        for name, f in self._files.items():
            f.flush()
            os.fsync(f.fileno())
            offsets[name] = f.tell()
        for path in self.root.glob("*.jsonl"):  # files of earlier runs not reopened in this one
            offsets.setdefault(path.name, path.stat().st_size)
        self.state.put(
            "checkpoint",
            {
                "step": self.step,
                "offsets": offsets,
                "counters": self.counters.as_dict(),
                "listed": self._listed,
            },
        )
        self.state.commit()

    def close(self) -> None:
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        self._files.clear()

    # ----- rows ------------------------------------------------------------------------------------

    def process(self, row: SourceRow) -> None:
        """Import one row whole, or skip it whole and record why."""
        self.step += 1
        self.counters.rows_read += 1
        if row.error is not None:
            kind = "image" if row.error.field == "image" else "malformed"
            self._problem(kind, row, row.error.field, row.error.reason)
            return
        if row.skip is not None:
            self._problem(row.skip[0], row, None, row.skip[1])
            return
        try:
            planned, ids = self._plan(row)
            judgements, dropped = self._judgements(row, ids)
        except RowError as exc:
            self._problem("image" if exc.field == "image" else "malformed", row, exc.field, exc.reason)
            return
        except _Skip as skip:
            self._problem(skip.kind, row, skip.field, skip.reason)
            return
        row_images: dict[str, str] = {}  # digest -> path of the images new to the import in this row
        written: list[str] = []  # files this row wrote (removed again if the row fails)
        try:
            lines = []
            for plan in planned:
                rel, digest, status = self.store.put(plan.data, row_images)
                if status != "reused":
                    row_images[digest] = rel
                if status == "written":
                    written.append(rel)
                lines.append((f"{plan.split}.jsonl", self._record_line(row, plan, rel)))
            lines += [(f"{split}.preferences.jsonl", line) for split, line in judgements]
        except RowError as exc:
            for rel in written:
                self.store.remove(rel)
            self._problem("image" if exc.field == "image" else "malformed", row, exc.field, exc.reason)
            return
        for digest, rel in row_images.items():
            self.state.add_image(digest, rel)
        self.counters.pairs_dropped += dropped
        self.counters.images_written += len(row_images)
        self.counters.images_reused += len(planned) - len(row_images)
        for name, line in lines:
            self._file(name).write(line)
        for plan in planned:
            self.state.add_record(plan.item.key, plan.record_id, plan.prompt_id, plan.split)
            if self.state.prompt(plan.prompt_id) is None:
                self.state.add_prompt(
                    plan.prompt_id, plan.split, text_hash(plan.item.prompt), f"{row.file}:{row.row}"
                )
            _bump(self.counters.records, plan.split)
        for split, _ in judgements:
            _bump(self.counters.preferences, split)
        self.counters.rows_imported += 1

    def _file(self, name: str) -> Any:
        f = self._files.get(name)
        if f is None:
            # kept open across rows and closed by close(): one handle per split file
            f = self._files[name] = open(self.root / name, "ab")  # noqa: SIM115
        return f

    def _problem(self, kind: str, row: SourceRow, field_: str | None, reason: str) -> None:
        _bump(self.counters.skipped, kind)
        if kind == "not-selected":
            return  # rows of splits not asked for: counted only
        listed = self._listed.get(kind, 0)
        if kind in ALWAYS_LISTED or listed < LISTED_PER_KIND:
            self._listed[kind] = listed + 1
            self.state.add_problem(kind, row.file, str(row.row), field_, reason)

    def _split_of(self, prompt_id: str) -> str:
        digest = hashlib.sha256(f"split:{prompt_id}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        if u < self.test_fraction:
            return "test"
        if u < self.test_fraction + self.val_fraction:
            return "val"
        return "train"

    def _plan(self, row: SourceRow) -> tuple[list[_Planned], dict[str, tuple[str, str, str]]]:
        """Check every image of ``row`` and map its values, without writing anything. Returns the new
        records and ``key -> (record id, prompt id, split)`` for every image of the row."""
        prefix = self.importer.prefix
        planned: list[_Planned] = []
        ids: dict[str, tuple[str, str, str]] = {}
        prompts: dict[str, tuple[str, str, str]] = {}  # prompts first met in this row
        for item in row.images:
            if item.key in ids:
                continue
            prompt = _check_text(item.prompt, "prompt")
            prompt_id = f"{prefix}-{item.prompt_key}" if item.prompt_key else f"{prefix}-{text_hash(prompt)}"
            split = item.split or self._split_of(prompt_id)
            if split not in self.splits:
                raise _Skip("not-selected", None, f"split {split} not selected")
            seen = prompts.get(prompt_id) or self.state.prompt(prompt_id)
            if seen is not None:
                seen_split, seen_hash, first = seen
                if seen_hash != text_hash(prompt):
                    raise RowError("prompt", f"prompt id {prompt_id!r} has another prompt text at {first}")
                if seen_split != split:
                    raise _Skip(
                        "cross-split",
                        None,
                        f"its prompt is already in {seen_split} (first at {first}); a prompt stays in one split",
                    )
            prompts.setdefault(prompt_id, (split, text_hash(prompt), f"{row.file}:{row.row}"))
            record = self.state.record(item.key)
            if record is not None:
                if record[1] != prompt_id or record[2] != split:
                    raise RowError(
                        None,
                        f"image {item.key!r} was imported before with prompt id {record[1]} in {record[2]}",
                    )
                ids[item.key] = record
                continue
            record_id = f"{prefix}-{item.key}"
            ids[item.key] = (record_id, prompt_id, split)
            scores, annotations, std, original = self._map_values(item)
            data = item.image if isinstance(item.image, bytes) else read_image_file(item.image)
            if not data:
                raise RowError("image", "empty image data")
            planned.append(
                _Planned(item, record_id, prompt_id, split, data, scores, annotations, std, original)
            )
        return planned, ids

    def _map_values(
        self, item: ImageItem
    ) -> tuple[dict[str, float], dict[str, list[float]], dict[str, float], dict[str, Any]]:
        fields = self.fields
        original: dict[str, Any] = {}
        scores: dict[str, float] = {}
        annotations: dict[str, list[float]] = {}
        std: dict[str, float] = {}
        for name, value in item.scores.items():
            original[name] = _original_number(value)
            dim = fields.dimension(name)
            if dim is not None:
                try:
                    scores[dim] = fields.to_target(name, value)
                except ValueError as exc:
                    raise RowError(name, str(exc)) from None
        for name, values in item.annotations.items():
            original[name] = (
                [_original_number(v) for v in values]
                if isinstance(values, (list, tuple))
                else _jsonable(values)
            )
            dim = fields.dimension(name)
            if dim is None:
                continue
            if not isinstance(values, (list, tuple)) or not values:
                raise RowError(name, f"must be a non-empty list of ratings, got {_short(values)}")
            try:
                annotations[dim] = [fields.to_target(name, v) for v in values]
            except ValueError as exc:
                raise RowError(name, str(exc)) from None
            # a set with per-annotator ratings only: the aggregated label is the package's aggregate
            scores.setdefault(dim, aggregate_annotations(annotations[dim]))
        for name, value in item.std.items():
            original[name] = _original_number(value)
            dim = fields.dimension(name)
            if dim is not None and value not in (None, ""):
                try:
                    std[dim] = fields.std_to_target(name, value)
                except ValueError as exc:
                    raise RowError(name, str(exc)) from None
        original.update({k: _jsonable(v) for k, v in item.original.items()})
        return scores, annotations, std, original

    def _record_line(self, row: SourceRow, plan: _Planned, image: str) -> bytes:
        record: dict[str, Any] = {
            "id": plan.record_id,
            "prompt_id": plan.prompt_id,
            "prompt": plan.item.prompt,
            "image": image,
        }
        if plan.scores:
            record["scores"] = plan.scores
        if plan.annotations:
            record["annotations"] = plan.annotations
        meta: dict[str, Any] = {"source": self.importer.name, "source_file": row.file, "source_row": row.row}
        if plan.std:
            meta["std"] = plan.std
        meta["original"] = plan.original
        record["meta"] = meta
        return _dumps(record)

    def _judgements(
        self, row: SourceRow, ids: dict[str, tuple[str, str, str]]
    ) -> tuple[list[tuple[str, bytes]], int]:
        """The preference lines of ``row`` as ``(split, line)``, and how many pairs were dropped because an
        image of theirs was skipped in an earlier row (that row is in the report)."""
        lines: list[tuple[str, bytes]] = []
        dropped = 0
        for judgement in row.judgements:
            dimension = self.fields.dimension(judgement.field)
            if dimension is None:
                continue  # the preference field was dropped
            a = ids.get(judgement.a) or self.state.record(judgement.a)
            b = ids.get(judgement.b) or self.state.record(judgement.b)
            if a is None or b is None or a[1] != b[1] or a[2] != b[2]:
                dropped += 1
                continue
            if a[0] == b[0]:
                raise _Skip(
                    "identical", None, f"both images of the pair are the same image ({judgement.a!r})"
                )
            number = sum(self.counters.preferences.values()) + len(lines)
            line = {
                "id": f"{self.importer.prefix}-pref-{number:08d}",
                "a": a[0],
                "b": b[0],
                "dimension": dimension,
                "preferred": judgement.preferred,
                "meta": {
                    "source": self.importer.name,
                    "source_file": row.file,
                    "source_row": row.row,
                    "original": {k: _jsonable(v) for k, v in judgement.original.items()},
                },
            }
            lines.append((a[2], _dumps(line)))
        return lines, dropped


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def _check_text(value: Any, field_: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RowError(field_, f"must be a non-empty string, got {_short(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(field_, "is not valid Unicode text (a lone surrogate)") from None
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _original_number(value: Any) -> Any:
    """A set's value as it was, except numeric text (CSV cells) as a number."""
    if isinstance(value, str):
        try:
            return as_number(value)
        except ValueError:
            pass
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    """An original value as JSON can hold it: non-finite floats and bytes become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _dumps(obj: dict[str, Any]) -> bytes:
    try:
        return (json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode(
            "utf-8"
        )
    except UnicodeEncodeError:
        raise RowError(None, "holds text that is not valid Unicode (a lone surrogate)") from None
