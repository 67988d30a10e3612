"""Parsing one JSONL line into a :class:`~.records.Record` (a split file) or a :class:`~.records.Preference`
(a preference file), total: every problem a line holds is reported on its field (never an exception),
however malformed, deep, huge or hostile the input (docs/data.md, "What `data check` refuses")."""

from __future__ import annotations

import json
import math
import os
import reprlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from ..config import ScoreScale
from ..fileio import is_within
from .records import (
    OPTIONAL_FIELDS,
    OVERALL,
    PREFERENCE_OPTIONAL_FIELDS,
    PREFERENCE_REQUIRED_FIELDS,
    PREFERRED_VALUES,
    REQUIRED_FIELDS,
    Preference,
    Problem,
    Record,
)

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
    return _total(
        lambda problems: _parse_record(
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
        ),
        file,
        line,
    )


def _total(parse: Callable[[list[Problem]], Any], file: str, line: int) -> tuple[Any, list[Problem]]:
    """``parse(problems)`` and the problems it appended; an unexpected exception becomes a problem on the
    line (defence in depth: one line's failure must not lose the rest of the report)."""
    problems: list[Problem] = []
    try:
        return parse(problems), problems
    except Exception as exc:
        problems.append(
            Problem(file, line, None, f"internal error while checking this line: {_describe(exc)}")
        )
        return None, problems


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

    obj = _parse_object(text, problem)
    if obj is None:
        return None
    strings = _string_fields(obj, REQUIRED_FIELDS, OPTIONAL_FIELDS, problem)
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


def _parse_object(text: str, problem: Callable[[str | None, str], None]) -> dict | None:
    """The JSON object of one line, with the problems of its structure reported (duplicate keys, lone
    surrogates, depth, NaN in ``meta``); ``None`` when the line is not a JSON object."""
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
    return obj


def _string_fields(
    obj: dict[str, Any],
    required: Sequence[str],
    optional: Sequence[str],
    problem: Callable[[str | None, str], None],
) -> dict[str, str]:
    """Report the fields of a line's object that are not in ``required`` or ``optional``, and the
    required ones (and an ``id``, if given) that are missing or not non-empty strings; returns the valid
    string fields among them."""
    allowed = [*required, *optional]
    for name in obj:
        if name not in allowed:
            problem(_join(None, name), f"unknown field; allowed: {allowed}")
    strings = {}
    for name in ("id", *required):
        if name not in obj:
            if name != "id":
                problem(name, "missing required field")
            continue
        value = obj[name]
        if not isinstance(value, str) or not value.strip():
            problem(name, f"must be a non-empty string, got {_show(value)}")
        elif _surrogate_at(value) is None:  # a lone surrogate was reported above
            strings[name] = value
    return strings


def parse_preference(
    text: str, *, file: str, line: int, split: str, rubric_names: Sequence[str]
) -> tuple[Preference | None, list[Problem]]:
    """Parse and validate one line of a preference file (docs/data.md, "Preference records"). Returns
    the judgement (``None`` when it is unusable) and every problem found on the line.

    Checked here: JSON and its structure (as for records), unknown fields, ``a`` / ``b`` / ``dimension``
    / ``preferred`` present and non-empty strings (``id`` too when given), ``a`` ≠ ``b``, ``dimension`` in
    the rubric or ``"overall"``, ``preferred`` one of ``"a"``, ``"b"``, ``"tie"``, ``meta`` an object.
    What needs the split's records (the ids exist, same prompt) and uniqueness of ids are checked by the
    caller (:func:`~.format.read_dataset`). Total, like :func:`parse_record`.
    """
    return _total(
        lambda problems: _parse_preference(text, problems, file, line, split, rubric_names), file, line
    )


def _parse_preference(
    text: str, problems: list[Problem], file: str, line: int, split: str, rubric_names: Sequence[str]
) -> Preference | None:
    def problem(field_name: str | None, reason: str) -> None:
        problems.append(Problem(file, line, field_name, reason))

    obj = _parse_object(text, problem)
    if obj is None:
        return None
    strings = _string_fields(obj, PREFERENCE_REQUIRED_FIELDS, PREFERENCE_OPTIONAL_FIELDS, problem)
    if "a" in strings and strings.get("b") == strings["a"]:
        problem("b", f"is the same record as a ({_show(strings['a'])}); a judgement compares two records")
        del strings["b"]
    dimension = strings.get("dimension")
    if dimension is not None and dimension not in rubric_names and dimension != OVERALL:
        problem(
            "dimension",
            f"unknown dimension {_show(dimension)}; the rubric has {list(rubric_names)}, or use {OVERALL!r} "
            "(the model's reward over the whole rubric)",
        )
    preferred = strings.get("preferred")
    if preferred is not None and preferred not in PREFERRED_VALUES:
        problem("preferred", f"must be one of {list(PREFERRED_VALUES)}, got {_show(preferred)}")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        problem("meta", "must be an object")
    if problems:
        return None
    a, b = strings["a"], strings["b"]
    return Preference(
        id=strings.get("id", f"{a}|{b}|{dimension}"),
        a=a,
        b=b,
        dimension=strings["dimension"],
        preferred=strings["preferred"],  # type: ignore[arg-type]  (checked above)
        meta=meta,
        split=split,
        line=line,
    )
