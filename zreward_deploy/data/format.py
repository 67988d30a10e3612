"""The dataset format (docs/design.md §5.2): a folder of JSONL splits plus the images they name.

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

- ``image`` must stay inside the dataset folder: absolute paths, ``..`` that leaves the folder and
  symlinks that resolve outside it are refused unless ``allow_outside_paths=True``.

:func:`validate_dataset` reports *every* problem in one pass, each naming the file, line and field, and
never raises for anything a file holds (lines split at ``\n`` only, decoded per line, every line's check
total); the loaders raise :class:`DatasetError` carrying the same list. The full contract is in
docs/data.md, "What `data check` refuses".
"""

from __future__ import annotations

import codecs
import json
import math
import os
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal

from ..config import Rubric, ScoreScale
from ..errors import ZRewardInputError
from ..fileio import is_within, open_regular_file

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
        text = f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"
        return _printable(text)  # field names come from the file: a key with a newline stays one line


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

        ``"auto"`` (evaluation, docs/design.md §7): the trimmed mean of the annotations where they exist
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

# Deeper than this is refused: a record needs three levels, and deep trees break later consumers (repr,
# pickling to data-loader workers) long before the JSON parser's own recursion limit.
MAX_JSON_DEPTH = 64
# Python refuses to convert longer digit strings (the conversion is quadratic); the parser keeps such a
# number as a placeholder so that it is reported on its field instead of aborting the line.
MAX_INT_DIGITS = 4300
_OUTSIDE_HINT = (
    "image paths must stay inside the dataset folder "
    "(allow others with --allow-outside-paths / allow_outside_paths=True)"
)

_REPR = reprlib.Repr()  # values quoted in messages stay short, however big or deep the input
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlevel = 60, 60, 40, 3


class _HugeInt:
    """A JSON integer with more than :data:`MAX_INT_DIGITS` digits, kept unconverted."""

    __slots__ = ("digits",)

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"<integer of {self.digits} digits>"


def _show(value: Any) -> str:
    """A short repr for messages (long strings, huge containers and deep nesting are abbreviated)."""
    try:
        return _REPR.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _printable(text: str) -> str:
    """``text`` with non-printable characters (control characters, lone surrogates, line separators)
    backslash-escaped: one problem stays one output line, and printing never fails on encoding."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, cut to a readable length; never raises itself."""
    try:
        return _cap(f"{type(exc).__name__}: {exc}", 300)
    except Exception:
        return type(exc).__name__


def _cap(name: str, limit: int) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def _join(path: str | None, key: str | int) -> str:
    """The field name of ``key`` (an object key, or a list index) inside ``path``: ``scores.alignment``,
    ``annotations.alignment[1]``. Long keys and deep paths are cut, so a message stays readable."""
    if isinstance(key, int):
        return _cap(f"{path}[{key}]", 120)
    name = _cap(key, 60)
    return name if path is None else _cap(f"{path}.{name}", 120)


def _surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate in ``text`` (JSON's ``"\\ud800"`` escape makes one), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_score(value: Any, scale: ScoreScale) -> str | None:
    """Why ``value`` is not a valid score on ``scale``, or ``None``."""
    if isinstance(value, _HugeInt):
        return f"must be a number within float range, got an integer of {value.digits} digits"
    if not _is_number(value):
        return f"must be a number, got {type(value).__name__} {_show(value)}"
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:  # math.isfinite and every float consumer would raise on it
            return f"must be a number within float range, got an integer of {len(str(abs(value)))} digits"
    if not math.isfinite(value):
        return f"must be finite, got {value}"
    if not scale.min <= value <= scale.max:
        return f"score {value} is outside the scale [{scale.min}, {scale.max}]"
    return None


def _outside_reason(root: Path, image: str) -> str | None:
    """Why the image path ``image`` is refused by the path rule (it leaves ``root``), or ``None``."""
    if os.path.isabs(image):
        return f"absolute path {_show(image)} refused: {_OUTSIDE_HINT}"
    try:
        if is_within(root / image, root):
            return None
        resolved = (root / image).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, an unresolvable component
        return f"path {_show(image)} cannot be resolved ({_describe(exc)})"
    if ".." in PurePath(image).parts:
        return f"path {_show(image)} leaves the dataset folder through '..': {_OUTSIDE_HINT}"
    return (
        f"path {_show(image)} leads outside the dataset folder through a symlink (to {resolved}): "
        + _OUTSIDE_HINT
    )


def _check_image(path: Path, deep: bool = False) -> str | None:
    """Why the image at ``path`` cannot be used, or ``None``.

    Reads the header only (cheap), through the package's one image reader: only regular files are opened
    (a FIFO would block forever), bombs and zero sizes are refused. ``deep`` also decodes every pixel, so
    truncated pixel data and decoders that fail late (corrupt DDS, ...) are caught here rather than in the
    middle of a training run.
    """
    from ..errors import InvalidImageError
    from ..imagefile import load_image_file, probe_image_file

    try:
        probe_image_file(path)
        if deep:
            load_image_file(path).close()
    except InvalidImageError as exc:
        if not os.path.exists(path):  # unlike Path.exists, never raises (a too-long name, a loop)
            return f"missing image: no file at {path}"
        return exc.reason
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
        where = _join(key, dim)
        if dim not in rubric_names:
            problem(where, f"unknown dimension {_show(dim)}; the rubric has {list(rubric_names)}")
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


def _loads(text: str) -> tuple[Any, dict[int, list[str]], list[Any]]:
    """``json.loads`` that keeps what the standard parser hides: duplicate keys (``id(object) -> keys``)
    and integers too long to convert (kept as :class:`_HugeInt`). Also returns the objects with
    duplicates and the huge integers, which keeps them alive (no id is reused while the caller looks them
    up) and tells the caller whether there are any."""
    duplicates: dict[int, list[str]] = {}
    holders: list[Any] = []

    def parse_int(digits_text: str) -> int | _HugeInt:
        digits = len(digits_text.lstrip("-"))
        if digits <= MAX_INT_DIGITS:
            try:
                return int(digits_text)
            except ValueError:  # an interpreter configured with a lower int_max_str_digits
                pass
        holders.append(huge := _HugeInt(digits))
        return huge

    def hook(pairs: list[tuple[str, Any]]) -> dict:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            seen: set[str] = set()
            repeated: dict[str, None] = {}
            for key, _ in pairs:
                if key in seen:
                    repeated[key] = None
                seen.add(key)
            duplicates[id(obj)] = list(repeated)
            holders.append(obj)
        return obj

    # strict=False: raw control characters (\x0b, \x0c, tabs) inside strings are plain text, not errors
    obj = json.loads(text, object_pairs_hook=hook, parse_int=parse_int, strict=False)
    return obj, duplicates, holders


def _may_hide_structure_problems(text: str, holders: Sequence[Any]) -> bool:
    """False only when :func:`_structure_problems` cannot find anything in the line ``text`` (a
    conservative test on the raw text; it saves walking every value of every ordinary line)."""
    return bool(
        holders  # duplicate keys or over-long integers
        or "\\u" in text  # the only way to write a lone surrogate in UTF-8 JSON is an escape
        or "NaN" in text
        or "Infinity" in text
        or text.count("[") + text.count("{") >= MAX_JSON_DEPTH
        or _surrogate_at(text) is not None  # a str handed in directly, not decoded from a file
    )


def _structure_problems(
    obj: dict, duplicates: Mapping[int, list[str]], problem: Callable[[str | None, str], None]
) -> None:
    """Problems anywhere in a parsed line, whatever the field: duplicate keys, lone surrogates in keys or
    strings, nesting deeper than :data:`MAX_JSON_DEPTH`; inside ``meta`` (which no other check reads) also
    NaN/Infinity and over-long integers. Iterative, so no input depth can exhaust the stack."""
    stack: list[tuple[str | None, Any, int, bool]] = [(None, obj, 0, False)]
    while stack:
        path, value, depth, in_meta = stack.pop()
        if isinstance(value, (dict, list)) and depth >= MAX_JSON_DEPTH:
            problem(path, f"nested more than {MAX_JSON_DEPTH} levels deep")
            continue
        children: list[tuple[str | None, Any, int, bool]] = []
        if isinstance(value, dict):
            for key in duplicates.get(id(value), ()):
                problem(
                    _join(path, key), f"duplicate key {_show(key)}: each key may appear once in an object"
                )
            for key, item in value.items():
                where = _join(path, key)
                if (at := _surrogate_at(key)) is not None:
                    problem(where, f"the key has a lone surrogate at character {at + 1}: not valid Unicode")
                children.append((where, item, depth + 1, in_meta or (path is None and key == "meta")))
        elif isinstance(value, list):
            children = [(_join(path, i), item, depth + 1, in_meta) for i, item in enumerate(value)]
        elif isinstance(value, str):
            if (at := _surrogate_at(value)) is not None:
                problem(
                    path,
                    f"lone surrogate {value[at].encode('unicode_escape').decode()} at character {at + 1}: "
                    "not valid Unicode text (tokenizers and UTF-8 writers fail on it)",
                )
        elif in_meta and isinstance(value, _HugeInt):
            problem(path, f"integer of {value.digits} digits: longer than the {MAX_INT_DIGITS} allowed")
        elif in_meta and isinstance(value, float) and not math.isfinite(value):
            literal = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
            problem(path, f"{literal} is not valid JSON (NaN and Infinity are refused)")
        stack.extend(reversed(children))


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
    deep: bool = False,
    allow_outside_paths: bool = False,
) -> tuple[Record | None, list[Problem]]:
    """Parse and validate one JSONL line. Returns the record (``None`` when it is unusable) and every
    problem found on the line.

    Total: whatever the line holds, it returns; an unexpected exception while checking the line becomes a
    problem on that line ("internal error while checking this line"), never a crash of the whole run.
    ``deep`` decodes the image's pixels; ``allow_outside_paths`` lifts the path rule (see
    :func:`validate_dataset`).
    """
    problems: list[Problem] = []
    try:
        record = _parse_record(
            text,
            problems,
            root=root,
            file=file,
            line=line,
            split=split,
            scale=scale,
            rubric_names=rubric_names,
            check_images=check_images,
            deep=deep,
            allow_outside_paths=allow_outside_paths,
        )
    except Exception as exc:  # defence in depth: one line's failure must not lose the rest of the report
        problems.append(
            Problem(file, line, None, f"internal error while checking this line: {_describe(exc)}")
        )
        return None, problems
    return record, problems


def _parse_record(
    text: str,
    problems: list[Problem],
    *,
    root: Path,
    file: str,
    line: int,
    split: str,
    scale: ScoreScale,
    rubric_names: Sequence[str],
    check_images: bool,
    deep: bool,
    allow_outside_paths: bool,
) -> Record | None:
    def problem(field_name: str | None, reason: str) -> None:
        problems.append(Problem(file, line, field_name, reason))

    try:
        # NaN / Infinity are accepted here so that the check that reads the field names it
        obj, duplicates, holders = _loads(text)
    except json.JSONDecodeError as exc:
        problem(None, f"malformed JSON: {exc.msg} (column {exc.colno})")
        return None
    except RecursionError:
        problem(None, f"malformed JSON: nested too deeply to parse (the limit is {MAX_JSON_DEPTH} levels)")
        return None
    if not isinstance(obj, dict):
        problem(None, f"a line must be a JSON object, got {type(obj).__name__}")
        return None
    if _may_hide_structure_problems(text, holders):
        _structure_problems(obj, duplicates, problem)

    for name in obj:
        if name not in REQUIRED_FIELDS and name not in OPTIONAL_FIELDS:
            problem(_join(None, name), f"unknown field; allowed: {[*REQUIRED_FIELDS, *OPTIONAL_FIELDS]}")
    strings = {}
    for name in ("id", *REQUIRED_FIELDS):
        if name not in obj:
            if name != "id":
                problem(name, "missing required field")
            continue
        value = obj[name]
        if not isinstance(value, str) or not value.strip():
            problem(name, f"must be a non-empty string, got {_show(value)}")
        elif _surrogate_at(value) is None:  # a lone surrogate was reported above
            strings[name] = value
    image_path = None
    if "image" in strings:
        image = strings["image"]
        image_path = root / image if "\0" not in image else None
        if image_path is None:
            problem("image", "the path contains a NUL character")
        elif not allow_outside_paths and (reason := _outside_reason(root, image)):
            problem("image", reason)  # refused before anything is opened
        elif check_images and (reason := _check_image(image_path, deep)):
            problem("image", reason)
    scores = _parse_dimension_map(obj, "scores", rubric_names, scale, problem)
    annotations = _parse_dimension_map(obj, "annotations", rubric_names, scale, problem)
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        problem("meta", "must be an object")
    if problems or image_path is None:
        return None
    return Record(
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


def _read_lines(path: Path) -> tuple[list[tuple[int, str | Problem]], list[Problem]]:
    """The non-blank lines of a split file as ``(line number, text)``, or ``(line number, problem)`` for
    a line that is not valid UTF-8; plus file-level problems.

    Lines end at ``\\n`` only (a CRLF's ``\\r`` is dropped): ``str.splitlines`` would also split at
    U+2028, U+2029, U+0085, ``\\x0b``, ``\\x0c`` ..., which are legal inside JSON strings. Decoding is per
    line, so one bad byte costs one line, not the file.
    """
    file = str(path)
    try:
        with open_regular_file(path) as f:  # a FIFO named train.jsonl would block a plain open forever
            data = f.read()
    except ZRewardInputError as exc:
        return [], [Problem(file, None, None, exc.reason)]
    except OSError as exc:
        return [], [Problem(file, None, None, f"cannot be read ({exc.strerror or exc})")]
    lines: list[tuple[int, str | Problem]] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if number == 1 and raw.startswith(codecs.BOM_UTF8):  # written by some Windows editors
            raw = raw[len(codecs.BOM_UTF8) :]
        raw = raw.removesuffix(b"\r")
        if not raw.strip():
            continue  # blank lines (e.g. a trailing newline pair) carry nothing
        try:
            lines.append((number, raw.decode("utf-8")))
        except UnicodeDecodeError as exc:
            reason = f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line"
            lines.append((number, Problem(file, number, None, f"{reason} ({exc.reason})")))
    return lines, []


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
                Problem(file, r.line, "id", f"duplicate id {_show(r.id)} (first at {f.split}.jsonl:{f.line})")
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
                    f"prompt_id {_show(r.prompt_id)} is also in {f.split}.jsonl:{f.line}; "
                    "a prompt must stay in one split",
                )
            )
        elif f.prompt != r.prompt:
            problems.append(
                Problem(
                    file,
                    r.line,
                    "prompt",
                    f"prompt_id {_show(r.prompt_id)} has a different prompt text than at line {f.line} "
                    f"({_show(f.prompt)})",
                )
            )
    return problems


def _resolve(scale: ScoreScale | None, rubric: Rubric | Sequence[str] | None) -> tuple[ScoreScale, list[str]]:
    scale = scale if scale is not None else ScoreScale()
    if rubric is None:
        rubric = Rubric()
    names = rubric.names if isinstance(rubric, Rubric) else list(rubric)
    return scale, names


Progress = Callable[[int, int], None]


def _load(
    root: str | os.PathLike,
    splits: Sequence[str] | None,
    scale: ScoreScale | None,
    rubric: Rubric | Sequence[str] | None,
    check_images: bool,
    require: bool,
    deep: bool = False,
    allow_outside_paths: bool = False,
    progress: Progress | None = None,
) -> tuple[dict[str, list[Record]], list[Problem]]:
    root = Path(root)
    scale, names = _resolve(scale, rubric)
    if not root.is_dir():
        reason = "is not a folder" if root.exists() else "dataset folder does not exist"
        return {}, [Problem(str(root), None, None, reason)]
    wanted = list(splits) if splits is not None else list(SPLITS)
    for split in wanted:
        if split not in SPLITS:
            raise ZRewardInputError(split, f"unknown split; the splits are {list(SPLITS)}")
    # lexists, not is_file: a split that is a FIFO, a folder or a dangling link is reported, not skipped
    present = [s for s in wanted if os.path.lexists(root / f"{s}.jsonl")]
    problems: list[Problem] = []
    missing = [s for s in wanted if s not in present]
    if require:
        problems.extend(
            Problem(str(root / f"{s}.jsonl"), None, None, "split file not found") for s in missing
        )
    elif not present:
        expected = ", ".join(f"{s}.jsonl" for s in wanted)
        problems.append(Problem(str(root), None, None, f"no split file found (expected {expected})"))
    # every file is read before any line is checked, so that progress knows the total
    read = {split: _read_lines(root / f"{split}.jsonl") for split in present}
    total, done = sum(len(lines) for lines, _ in read.values()), 0
    out: dict[str, list[Record]] = {}
    for split, (lines, file_problems) in read.items():
        file = str(root / f"{split}.jsonl")
        problems.extend(file_problems)  # in file order, before that file's lines
        out[split] = []
        for number, text in lines:
            if isinstance(text, Problem):
                problems.append(text)
            else:
                record, found = parse_record(
                    text,
                    root=root,
                    file=file,
                    line=number,
                    split=split,
                    scale=scale,
                    rubric_names=names,
                    check_images=check_images,
                    deep=deep,
                    allow_outside_paths=allow_outside_paths,
                )
                problems.extend(found)
                if record is not None:
                    out[split].append(record)
            done += 1
            if progress is not None:
                progress(done, total)
    problems.extend(_cross_record_problems((r for s in out for r in out[s]), root))
    return out, problems


def read_dataset(
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    scale: ScoreScale | None = None,
    rubric: Rubric | Sequence[str] | None = None,
    check_images: bool = True,
    *,
    deep: bool = False,
    allow_outside_paths: bool = False,
    progress: Progress | None = None,
) -> tuple[dict[str, list[Record]], list[Problem]]:
    """The valid records of each split present and every problem found (see :func:`validate_dataset`),
    in one read: for tools that report problems and still use what is valid."""
    return _load(
        root,
        splits,
        scale,
        rubric,
        check_images,
        require=splits is not None,
        deep=deep,
        allow_outside_paths=allow_outside_paths,
        progress=progress,
    )


def validate_dataset(
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    scale: ScoreScale | None = None,
    rubric: Rubric | Sequence[str] | None = None,
    check_images: bool = True,
    *,
    deep: bool = False,
    allow_outside_paths: bool = False,
    progress: Progress | None = None,
) -> list[Problem]:
    """Every problem in a dataset folder, in file and line order (an empty list means it is valid).

    Checks each line (UTF-8, JSON, duplicate keys, lone surrogates, fields and their types, image path
    inside the folder, image present and readable, scores and annotations on the scale, dimensions in the
    rubric) and across lines (duplicate ids anywhere in the dataset, a prompt_id in two splits or with two
    prompt texts). A split named in ``splits`` must exist; with ``splits=None`` a missing split file is a
    problem only when no split file exists at all. Never raises for anything in the files: whatever a line
    holds becomes problems on that line (docs/data.md, "What `data check` refuses").

    Args:
        root: the dataset folder.
        splits: the splits to check (default: train, val, test).
        scale: the score scale (default :class:`ScoreScale`, range [1, 5]).
        rubric: a :class:`Rubric` or dimension names (default: the default rubric's four dimensions).
        check_images: also check that every image is a regular file with a readable header (no bomb).
        deep: with ``check_images``, also decode every image's pixels (catches truncated files; slower).
        allow_outside_paths: accept image paths that are absolute, or leave the folder through ``..`` or
            a symlink; refused by default.
        progress: called as ``progress(lines_done, lines_total)`` after each line.
    """
    return read_dataset(
        root,
        splits,
        scale,
        rubric,
        check_images,
        deep=deep,
        allow_outside_paths=allow_outside_paths,
        progress=progress,
    )[1]


def load_dataset(
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    scale: ScoreScale | None = None,
    rubric: Rubric | Sequence[str] | None = None,
    check_images: bool = True,
    *,
    deep: bool = False,
    allow_outside_paths: bool = False,
) -> dict[str, list[Record]]:
    """Load the split files present in ``root`` (or ``splits``, which must then exist): split -> records.

    Raises :class:`DatasetError` with every problem (see :func:`validate_dataset`) if any is found.
    """
    data, problems = read_dataset(
        root, splits, scale, rubric, check_images, deep=deep, allow_outside_paths=allow_outside_paths
    )
    _raise_if(root, problems)
    return data


def load_split(
    root: str | os.PathLike,
    split: str = "test",
    scale: ScoreScale | None = None,
    rubric: Rubric | Sequence[str] | None = None,
    check_images: bool = True,
    *,
    deep: bool = False,
    allow_outside_paths: bool = False,
) -> list[Record]:
    """Load one split (cross-split checks are not made; use :func:`load_dataset` for those).

    Raises :class:`DatasetError` listing every problem in the split file.
    """
    data, problems = _load(
        root,
        [split],
        scale,
        rubric,
        check_images,
        require=True,
        deep=deep,
        allow_outside_paths=allow_outside_paths,
    )
    _raise_if(root, problems)
    return data[split]


def _raise_if(root: str | os.PathLike, problems: Sequence[Problem], shown: int = 10) -> None:
    if not problems:
        return
    lines = [str(p) for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"... and {len(problems) - shown} more (run `zreward data check {root}` to see all)")
    raise DatasetError(str(root), f"{len(problems)} problem(s):\n  " + "\n  ".join(lines), problems)
