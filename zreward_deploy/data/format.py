"""The dataset format (DESIGN.md §5): a folder of JSONL splits plus the images they name.

Layout::

    DIR/train.jsonl  DIR/val.jsonl  DIR/test.jsonl  DIR/images/...

One line = one (prompt, image)::

    {"id": "p17_3", "prompt_id": "p17", "prompt": "two red cubes on a wooden table",
     "image": "images/p17_3.png",
     "scores": {"alignment": 3.5, "realism": 4.0},
     "annotations": {"alignment": [3.0, 3.5, 4.0, 3.5]},
     "meta": {...}}

- ``id`` is unique within the whole dataset (all splits); when absent it defaults to ``image``.
- ``scores`` (aggregated human scores) and ``annotations`` (raw annotator scores) may cover any subset of
  the rubric's dimensions, and both are optional (distillation data needs no scores).
- Scores and annotations are checked against the *range* of the score scale only (default [1, 5]). The
  paper's labels are half points, but an aggregated mean of annotations can be any real in the range, so
  a score that is not a multiple of 0.5 is accepted.
- ``meta`` is free-form (the synthetic generator puts its ground truth there); any other unknown field
  is an error, which catches typos such as ``"score"`` for ``"scores"``.
- A ``prompt_id`` lives in one split only and always carries the same prompt text.

:func:`validate_dataset` reports *every* problem in one pass, each naming the file, line and field;
the loaders raise :class:`DatasetError` carrying the same list.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import Rubric, ScoreScale
from ..errors import ZRewardInputError

SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_FIELDS: tuple[str, ...] = ("prompt_id", "prompt", "image")
OPTIONAL_FIELDS: tuple[str, ...] = ("id", "scores", "annotations", "meta")
# Human scores closer than this count as tied: trimmed means of half points (e.g. 11/3 - 10/3) are not
# exact in binary floating point, and a rounding residue must not turn a tie into a pair.
TIE_TOLERANCE = 1e-9

ScoreSource = Literal["auto", "scores", "annotations"]


class DatasetError(ZRewardInputError):
    """A dataset that does not follow the format; ``problems`` lists every problem found."""

    def __init__(self, item: Any, reason: str, problems: Sequence[Problem] = ()):
        self.problems = list(problems)
        super().__init__(item, reason)

    def __reduce__(self):  # keep the problem list when pickled (the base class keeps only item, reason)
        return (type(self), (self.item, self.reason, self.problems))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: where (file, 1-based line, field) and why."""

    file: str
    line: int | None
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


@dataclass(frozen=True)
class Record:
    """One (prompt, image) line of a split.

    Attributes:
        id: unique id within the dataset.
        prompt_id: items with the same prompt_id share a prompt and form pairs.
        prompt: the prompt text.
        image: the image path as written in the file (relative to the dataset folder).
        image_path: that path resolved against the dataset folder.
        scores: dimension -> aggregated human score.
        annotations: dimension -> raw annotator scores.
        meta: free-form extra data (e.g. the synthetic generator's ground truth).
        split: the split the record was read from; line: its 1-based line number.
    """

    id: str
    prompt_id: str
    prompt: str
    image: str
    image_path: Path
    scores: Mapping[str, float] = field(default_factory=dict)
    annotations: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    split: str = ""
    line: int = 0

    @property
    def dimensions(self) -> list[str]:
        """Dimensions with a human score or annotations, scores' order first."""
        return list(dict.fromkeys([*self.scores, *self.annotations]))

    def human_score(self, dimension: str, source: ScoreSource = "auto") -> float | None:
        """The human score ŝ of one dimension, or ``None`` when the record has none.

        ``"auto"`` (evaluation, DESIGN.md §6): the trimmed mean of the annotations where they exist
        (:func:`aggregate_annotations`), else ``scores``. ``"scores"``: the ``scores`` field only (training
        labels). ``"annotations"``: the trimmed mean only.
        """
        if source not in ("auto", "scores", "annotations"):
            raise ZRewardInputError("source", f"must be 'auto', 'scores' or 'annotations', got {source!r}")
        if source != "scores" and dimension in self.annotations:
            return aggregate_annotations(self.annotations[dimension])
        if source != "annotations" and dimension in self.scores:
            return float(self.scores[dimension])
        return None


@dataclass(frozen=True)
class Pair:
    """Two same-prompt records (indices ``a < b`` into the record list) with different human scores on
    ``dimension``."""

    a: int
    b: int
    dimension: str
    score_a: float
    score_b: float

    @property
    def gap(self) -> float:
        return self.score_a - self.score_b


# --------------------------------------------------------------------------------------------------
# Aggregation and pairs
# --------------------------------------------------------------------------------------------------


def aggregate_annotations(annotations: Sequence[float]) -> float:
    """Aggregate raw annotator scores as the paper does: drop one highest and one lowest, then the mean.

    With fewer than 3 annotations nothing can be dropped and the plain mean is returned. Raises
    :class:`ZRewardInputError` for an empty list.
    """
    values = sorted(float(a) for a in annotations)
    if not values:
        raise ZRewardInputError("annotations", "cannot aggregate an empty list of annotations")
    if len(values) >= 3:
        values = values[1:-1]
    return math.fsum(values) / len(values)


def build_pairs(
    records: Sequence[Record],
    dimensions: Iterable[str] | None = None,
    source: ScoreSource = "auto",
    min_gap: float = 0.0,
) -> list[Pair]:
    """Same-prompt pairs per dimension: same ``prompt_id``, both scored on the dimension, and
    ``|ŝ_a - ŝ_b| > min_gap`` (``min_gap=0``: any difference beyond :data:`TIE_TOLERANCE`).

    Args:
        records: the records (indices in the returned pairs refer to this sequence).
        dimensions: dimensions to pair on (default: every dimension any record is scored on, in order
            of first appearance).
        source: which human score to compare (see :meth:`Record.human_score`).
        min_gap: e.g. 0.5 for the margin-HPA pairs.

    Returns:
        Pairs ordered by dimension, then prompt (first appearance), then ``(a, b)`` with ``a < b``.
    """
    if dimensions is None:
        dimensions = dict.fromkeys(d for r in records for d in r.dimensions)
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(record.prompt_id, []).append(i)
    pairs = []
    for dim in dimensions:
        for members in groups.values():
            scored = [(i, s) for i in members if (s := records[i].human_score(dim, source)) is not None]
            for x, (i, s_i) in enumerate(scored):
                for j, s_j in scored[x + 1 :]:
                    if abs(s_i - s_j) > min_gap + TIE_TOLERANCE:
                        pairs.append(Pair(i, j, dim, s_i, s_j))
    return pairs


# --------------------------------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_score(value: Any, scale: ScoreScale) -> str | None:
    """Why ``value`` is not a valid score on ``scale``, or ``None``."""
    if not _is_number(value):
        return f"must be a number, got {type(value).__name__} {value!r}"
    if not math.isfinite(value):
        return f"must be finite, got {value}"
    if not scale.min <= value <= scale.max:
        return f"score {value} is outside the scale [{scale.min}, {scale.max}]"
    return None


def _check_image(path: Path) -> str | None:
    """Why the image at ``path`` cannot be used, or ``None``. Reads the header only (cheap); a file whose
    pixel data is truncated is caught when it is scored."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        return f"missing image: no file at {path}"
    if path.is_dir():
        return f"missing image: {path} is a directory"
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"not a readable image ({type(exc).__name__}: {exc})"
    if width <= 0 or height <= 0:
        return f"image has zero size ({width}x{height})"
    return None


def _parse_dimension_map(
    obj: dict, key: str, rubric_names: Sequence[str], scale: ScoreScale, problem: Callable[[str, str], None]
) -> dict[str, Any]:
    """Validate ``obj[key]`` as a mapping dimension -> score (``scores``) or -> list of scores
    (``annotations``); report problems through ``problem(field, reason)`` and return the valid entries."""
    raw = obj.get(key, {})
    if not isinstance(raw, dict):
        problem(
            key, f"must be an object mapping dimension -> {'score' if key == 'scores' else 'list of scores'}"
        )
        return {}
    out: dict[str, Any] = {}
    for dim, value in raw.items():
        where = f"{key}.{dim}"
        if dim not in rubric_names:
            problem(where, f"unknown dimension {dim!r}; the rubric has {list(rubric_names)}")
            continue
        if key == "scores":
            reason = _check_score(value, scale)
            if reason:
                problem(where, reason)
            else:
                out[dim] = float(value)
            continue
        if not isinstance(value, list) or not value:
            problem(where, "must be a non-empty list of annotator scores")
            continue
        reasons = [(k, r) for k, v in enumerate(value) if (r := _check_score(v, scale))]
        for k, reason in reasons:
            problem(f"{where}[{k}]", reason)
        if not reasons:
            out[dim] = tuple(float(v) for v in value)
    return out


def parse_record(
    text: str,
    *,
    root: Path,
    file: str,
    line: int,
    split: str,
    scale: ScoreScale,
    rubric_names: Sequence[str],
    check_images: bool = True,
) -> tuple[Record | None, list[Problem]]:
    """Parse and validate one JSONL line. Returns the record (``None`` when it is unusable) and every
    problem found on the line."""
    problems: list[Problem] = []

    def problem(field_name: str | None, reason: str) -> None:
        problems.append(Problem(file, line, field_name, reason))

    try:
        obj = json.loads(text)  # accepts NaN / Infinity; _check_score refuses them below
    except json.JSONDecodeError as exc:
        problem(None, f"malformed JSON: {exc.msg} (column {exc.colno})")
        return None, problems
    if not isinstance(obj, dict):
        problem(None, f"a line must be a JSON object, got {type(obj).__name__}")
        return None, problems

    for name in obj:
        if name not in REQUIRED_FIELDS and name not in OPTIONAL_FIELDS:
            problem(name, f"unknown field; allowed: {[*REQUIRED_FIELDS, *OPTIONAL_FIELDS]}")
    strings = {}
    for name in ("id", *REQUIRED_FIELDS):
        if name not in obj:
            if name != "id":
                problem(name, "missing required field")
            continue
        value = obj[name]
        if not isinstance(value, str) or not value.strip():
            problem(name, f"must be a non-empty string, got {value!r}")
        else:
            strings[name] = value
    image_path = None
    if "image" in strings:
        image_path = root / strings["image"]
        if check_images and (reason := _check_image(image_path)):
            problem("image", reason)
    scores = _parse_dimension_map(obj, "scores", rubric_names, scale, problem)
    annotations = _parse_dimension_map(obj, "annotations", rubric_names, scale, problem)
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        problem("meta", "must be an object")
    if problems or image_path is None:
        return None, problems
    record = Record(
        id=strings.get("id", strings["image"]),
        prompt_id=strings["prompt_id"],
        prompt=strings["prompt"],
        image=strings["image"],
        image_path=image_path,
        scores=scores,
        annotations=annotations,
        meta=meta,
        split=split,
        line=line,
    )
    return record, problems


def _read_split(
    root: Path, split: str, scale: ScoreScale, rubric_names: Sequence[str], check_images: bool
) -> tuple[list[Record], list[Problem]]:
    path = root / f"{split}.jsonl"
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return [], [Problem(file, None, None, f"not UTF-8 text ({exc})")]
    records, problems = [], []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue  # blank lines (e.g. a trailing newline pair) carry nothing
        record, found = parse_record(
            raw,
            root=root,
            file=file,
            line=line,
            split=split,
            scale=scale,
            rubric_names=rubric_names,
            check_images=check_images,
        )
        problems.extend(found)
        if record is not None:
            records.append(record)
    return records, problems


def _cross_record_problems(records: Iterable[Record], root: Path) -> list[Problem]:
    """Problems between lines: duplicate ids, a prompt_id in two splits or with two prompt texts."""
    problems = []
    first_id: dict[str, Record] = {}
    first_prompt: dict[str, Record] = {}
    for r in records:
        file = str(root / f"{r.split}.jsonl")
        if r.id in first_id:
            f = first_id[r.id]
            problems.append(
                Problem(file, r.line, "id", f"duplicate id {r.id!r} (first at {f.split}.jsonl:{f.line})")
            )
        else:
            first_id[r.id] = r
        if r.prompt_id not in first_prompt:
            first_prompt[r.prompt_id] = r
            continue
        f = first_prompt[r.prompt_id]
        if f.split != r.split:
            problems.append(
                Problem(
                    file,
                    r.line,
                    "prompt_id",
                    f"prompt_id {r.prompt_id!r} is also in {f.split}.jsonl:{f.line}; a prompt must stay in one split",
                )
            )
        elif f.prompt != r.prompt:
            problems.append(
                Problem(
                    file,
                    r.line,
                    "prompt",
                    f"prompt_id {r.prompt_id!r} has a different prompt text than at line {f.line} ({f.prompt!r})",
                )
            )
    return problems


def _resolve(scale: ScoreScale | None, rubric: Rubric | Sequence[str] | None) -> tuple[ScoreScale, list[str]]:
    scale = scale if scale is not None else ScoreScale()
    if rubric is None:
        rubric = Rubric()
    names = rubric.names if isinstance(rubric, Rubric) else list(rubric)
    return scale, names


def _load(
    root: str | os.PathLike,
    splits: Sequence[str] | None,
    scale: ScoreScale | None,
    rubric: Rubric | Sequence[str] | None,
    check_images: bool,
    require: bool,
) -> tuple[dict[str, list[Record]], list[Problem]]:
    root = Path(root)
    scale, names = _resolve(scale, rubric)
    if not root.is_dir():
        return {}, [Problem(str(root), None, None, "dataset folder does not exist")]
    wanted = list(splits) if splits is not None else list(SPLITS)
    for split in wanted:
        if split not in SPLITS:
            raise ZRewardInputError(split, f"unknown split; the splits are {list(SPLITS)}")
    present = [s for s in wanted if (root / f"{s}.jsonl").is_file()]
    problems: list[Problem] = []
    missing = [s for s in wanted if s not in present]
    if require:
        problems.extend(
            Problem(str(root / f"{s}.jsonl"), None, None, "split file not found") for s in missing
        )
    elif not present:
        names = ", ".join(f"{s}.jsonl" for s in wanted)
        problems.append(Problem(str(root), None, None, f"no split file found (expected {names})"))
    out: dict[str, list[Record]] = {}
    for split in present:
        out[split], found = _read_split(root, split, scale, names, check_images)
        problems.extend(found)
    problems.extend(_cross_record_problems((r for s in present for r in out[s]), root))
    return out, problems


def read_dataset(
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    scale: ScoreScale | None = None,
    rubric: Rubric | Sequence[str] | None = None,
    check_images: bool = True,
) -> tuple[dict[str, list[Record]], list[Problem]]:
    """The valid records of each split present and every problem found (see :func:`validate_dataset`),
    in one read: for tools that report problems and still use what is valid."""
    return _load(root, splits, scale, rubric, check_images, require=splits is not None)


def validate_dataset(
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    scale: ScoreScale | None = None,
    rubric: Rubric | Sequence[str] | None = None,
    check_images: bool = True,
) -> list[Problem]:
    """Every problem in a dataset folder, in file and line order (an empty list means it is valid).

    Checks each line (JSON, fields and their types, image present and readable, scores and annotations
    on the scale, dimensions in the rubric) and across lines (duplicate ids anywhere in the dataset, a
    prompt_id in two splits or with two prompt texts). A split named in ``splits`` must exist; with
    ``splits=None`` a missing split file is a problem only when no split file exists at all.

    Args:
        root: the dataset folder.
        splits: the splits to check (default: train, val, test).
        scale: the score scale (default :class:`ScoreScale`, range [1, 5]).
        rubric: a :class:`Rubric` or dimension names (default: the default rubric's four dimensions).
        check_images: also check that every image exists and has a readable header.
    """
    return read_dataset(root, splits, scale, rubric, check_images)[1]


def load_dataset(
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    scale: ScoreScale | None = None,
    rubric: Rubric | Sequence[str] | None = None,
    check_images: bool = True,
) -> dict[str, list[Record]]:
    """Load the split files present in ``root`` (or ``splits``, which must then exist): split -> records.

    Raises :class:`DatasetError` with every problem (see :func:`validate_dataset`) if any is found.
    """
    data, problems = read_dataset(root, splits, scale, rubric, check_images)
    _raise_if(root, problems)
    return data


def load_split(
    root: str | os.PathLike,
    split: str = "test",
    scale: ScoreScale | None = None,
    rubric: Rubric | Sequence[str] | None = None,
    check_images: bool = True,
) -> list[Record]:
    """Load one split (cross-split checks are not made; use :func:`load_dataset` for those).

    Raises :class:`DatasetError` listing every problem in the split file.
    """
    data, problems = _load(root, [split], scale, rubric, check_images, require=True)
    _raise_if(root, problems)
    return data[split]


def _raise_if(root: str | os.PathLike, problems: Sequence[Problem], shown: int = 10) -> None:
    if not problems:
        return
    lines = [str(p) for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"... and {len(problems) - shown} more (run `zreward data check {root}` to see all)")
    raise DatasetError(str(root), f"{len(problems)} problem(s):\n  " + "\n  ".join(lines), problems)
