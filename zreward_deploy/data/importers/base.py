"""What an importer produces (:class:`SourceRow`: images and judgements of one source row) and the
interface every importer implements (:class:`Importer`).

An importer only reads and interprets its set's files; everything else (the mapping onto the rubric and
scale, splits, image writing and deduplication, checkpoints, the report) is the writer's
(:mod:`.writer`), the same for every set. A row is imported whole or skipped whole.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from ...errors import ZRewardInputError
from .mapping import FieldSpec

Preferred = Literal["a", "b", "tie"]


class RowError(Exception):
    """A source row that cannot be imported: ``field`` is the set's field at fault (None: the whole
    row), ``reason`` says why. Raised by importers while parsing a row and by the writer while mapping
    it; the row is skipped and reported with its file and row number."""

    def __init__(self, field: str | None, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclass
class ImageItem:
    """One (prompt, image) of a source row; becomes one record (or reuses the record of the same ``key``).

    Attributes:
        key: the image's identity within the set (an image uid, a file name); the record id is
            ``<prefix>-<key>``. The same key in another row means the same record.
        prompt: the prompt text.
        image: the encoded image bytes, or the path of the image file.
        prompt_key: the set's own prompt id (None: the prompt id is a hash of the prompt text).
        split: the set's own split (``train``/``val``/``test``), or None for a split by prompt hash.
        scores: set field -> aggregated value, in the set's scale.
        annotations: set field -> per-annotator ratings, in the set's scale.
        std: set ``std`` field -> value (the spread of a score field).
        original: extra original values kept in ``meta.original`` (score fields are added by the writer).
    """

    key: str
    prompt: str
    image: bytes | Path
    prompt_key: str | None = None
    split: str | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)
    std: dict[str, Any] = field(default_factory=dict)
    original: dict[str, Any] = field(default_factory=dict)


@dataclass
class Judgement:
    """A pairwise human judgement between the images ``a`` and ``b`` (keys of :class:`ImageItem`)."""

    a: str
    b: str
    field: str
    preferred: Preferred
    original: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceRow:
    """What one source row holds, or why it is skipped.

    Attributes:
        file: the source file (as shown in reports); row: its 1-based row, line, element or record number
            (or a range of them, e.g. ``"10-18"`` for a group).
        images: the row's images (empty for a row of judgements about earlier rows' images).
        judgements: pairwise judgements about images of this row or earlier rows.
        error: why the row is malformed (then nothing of it is imported).
        skip: ``(kind, reason)`` for a well-formed row the set itself marks as unusable (e.g. Pick-a-Pic
            rows without a label): skipped and counted by kind.
    """

    file: str
    row: int | str
    images: list[ImageItem] = field(default_factory=list)
    judgements: list[Judgement] = field(default_factory=list)
    error: RowError | None = None
    skip: tuple[str, str] | None = None

    @classmethod
    def malformed(cls, file: str, row: int | str, field: str | None, reason: str) -> SourceRow:
        return cls(file, row, error=RowError(field, reason))


@dataclass(frozen=True)
class SourceOptions:
    """What an importer needs besides its source folder.

    Attributes:
        images: where the images are when they are not inside ``src`` (RichHF-18K: the Pick-a-Pic copy).
        source_split: the split of a single source file whose name does not tell it.
        splits: the package splits wanted (an importer may skip whole files of other splits).
    """

    images: Path | None = None
    source_split: str | None = None
    splits: tuple[str, ...] = ("train", "val", "test")


class Importer(ABC):
    """One public set's reader. Subclasses set the class attributes and implement :meth:`rows`.

    ``rows(skip)`` must yield the same sequence of rows on every call for the same source, minus the
    first ``skip`` of them (resume depends on it); the default resume path simply drops them, an
    importer may skip faster (whole parquet row groups) when it has no state across rows.
    """

    name: ClassVar[str]  # the FORMAT of ``zreward data import``
    prefix: ClassVar[str]  # record and prompt ids start with it
    title: ClassVar[str]  # the set's name for messages and docs
    fields: ClassVar[tuple[FieldSpec, ...]]
    own_splits: ClassVar[bool]  # the set ships its own splits (else a split by prompt hash)
    source_doc: ClassVar[str]  # where the format was read from (docs/data.md cites it)
    takes_images: ClassVar[bool] = True  # --images means something for this set
    takes_source_split: ClassVar[bool] = False  # --source-split means something for this set

    def __init__(self, src: Path, options: SourceOptions):
        self.src = src
        self.options = options

    @abstractmethod
    def rows(self, skip: int = 0) -> Iterator[SourceRow]:
        """The source rows in a fixed order, after the first ``skip``."""

    def total_rows(self) -> int | None:
        """The number of rows :meth:`rows` will yield, when it is cheap to know (for progress)."""
        return None

    def notes(self) -> list[str]:
        """What the import leaves out of the source on purpose (files not read, and why): printed and
        put in the report."""
        return []


def text_hash(text: str) -> str:
    """A stable id from text: the first 16 hex digits of its SHA-256 (collisions need ~2^32 prompts)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def require_path(path: Path, what: str) -> Path:
    if not path.exists():
        raise ZRewardInputError(str(path), f"{what} does not exist")
    return path


def find_file(root: Path, names: Sequence[str], what: str) -> Path:
    """``root`` itself when it is a file, else the first of ``names`` inside it."""
    if root.is_file():
        return root
    require_path(root, "the source folder")
    for name in names:
        if (root / name).is_file():
            return root / name
    raise ZRewardInputError(str(root), f"holds no {what} (looked for {', '.join(names)})")


def resolve_image(candidates: Sequence[Path]) -> Path | None:
    """The first candidate path that exists (an importer's guesses at where a set's image lives)."""
    for path in candidates:
        if path.is_file():
            return path
    return None


def group_label(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"
