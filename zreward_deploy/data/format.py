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

Beside a split file, an optional ``DIR/{split}.preferences.jsonl`` holds judgements without scores, one
per line (:class:`~.records.Preference`)::

    {"id": "pp_000017", "a": "p17_0", "b": "p17_3", "dimension": "overall", "preferred": "a",
     "meta": {"source": "..."}}

``a`` and ``b`` are ids of two different records of the same split file with the same ``prompt_id``;
``dimension`` is a rubric dimension or ``"overall"``; ``preferred`` is ``"a"``, ``"b"`` or ``"tie"``; ``id``
(default ``"{a}|{b}|{dimension}"``) is unique over the dataset's preference files. The records need no
scores: a preference-only dataset is image records plus preference files.

:func:`validate_dataset` reports *every* problem in one pass, each naming the file, line and field, and
never raises for anything a file holds (lines split at ``\n`` only, decoded per line, every line's check
total), preference files included; the loaders raise :class:`DatasetError` carrying the same list. The full contract is in
docs/data.md, "What `data check` refuses".
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..config import Rubric, ScoreScale
from ..errors import ZRewardInputError
from ..fileio import open_regular_file
from .parse import _show, parse_preference, parse_record
from .records import SPLITS, DatasetError, Preference, Problem, Record, preferences_file


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
) -> tuple[dict[str, list[Record]], list[Problem], dict[str, list[Preference]]]:
    """Records, problems and preferences of the splits ``splits`` (see :func:`read_dataset`)."""
    root = Path(root)
    scale, names = _resolve(scale, rubric)
    if not root.is_dir():
        reason = "is not a folder" if root.exists() else "dataset folder does not exist"
        return {}, [Problem(str(root), None, None, reason)], {}
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
    unusable: dict[str, set[str]] = {}  # per split: ids of lines that name one but have problems
    for split, (lines, file_problems) in read.items():
        file = str(root / f"{split}.jsonl")
        problems.extend(file_problems)  # in file order, before that file's lines
        out[split], unusable[split] = [], set()
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
                elif (line_id := _line_id(text)) is not None:
                    unusable[split].add(line_id)
            done += 1
            if progress is not None:
                progress(done, total)
    problems.extend(_cross_record_problems((r for s in out for r in out[s]), root))
    preferences = _load_preferences(root, wanted, out, unusable, names, problems)
    return out, problems, preferences


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
    in one read: for tools that report problems and still use what is valid. The problems include those
    of the splits' preference files (:func:`read_preferences` also returns the judgements)."""
    records, _, problems = read_preferences(
        root,
        splits,
        scale,
        rubric,
        check_images,
        deep=deep,
        allow_outside_paths=allow_outside_paths,
        progress=progress,
    )
    return records, problems


def read_preferences(
    root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    scale: ScoreScale | None = None,
    rubric: Rubric | Sequence[str] | None = None,
    check_images: bool = True,
    *,
    deep: bool = False,
    allow_outside_paths: bool = False,
    progress: Progress | None = None,
) -> tuple[dict[str, list[Record]], dict[str, list[Preference]], list[Problem]]:
    """:func:`read_dataset` that also returns the valid judgements of each split's preference file
    (``split -> []`` where a split has none): ``(records, preferences, problems)``."""
    records, problems, preferences = _load(
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
    return records, preferences, problems


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
    prompt texts). Then each checked split's preference file, if there is one (:func:`read_preferences`):
    each line as :func:`~.parse.parse_preference` says, and across lines: ``a`` and ``b`` name records of
    that split (not unknown, not of another split) with the same ``prompt_id``, and no preference id
    repeats in the dataset's preference files. A split named in ``splits`` must exist; with ``splits=None`` a missing split file is a
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

    Raises :class:`DatasetError` listing every problem in the split file and in its preference file, if
    there is one (:func:`load_preferences` returns the judgements).
    """
    data, problems, _ = _load(
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


def load_preferences(
    root: str | os.PathLike,
    split: str = "test",
    scale: ScoreScale | None = None,
    rubric: Rubric | Sequence[str] | None = None,
    check_images: bool = True,
    *,
    records: Sequence[Record] | None = None,
    deep: bool = False,
    allow_outside_paths: bool = False,
) -> list[Preference]:
    """The judgements of ``split``'s preference file (``[]`` when the split has none), in file order.

    With ``records`` (the split's records, e.g. from :func:`load_split`), the file is checked against
    them and the split file is not read again; otherwise the split is loaded and checked as
    :func:`load_split` does. Raises :class:`DatasetError` listing every problem.
    """
    if records is None:
        _, problems, preferences = _load(
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
        return preferences.get(split, [])
    if split not in SPLITS:
        raise ZRewardInputError(split, f"unknown split; the splits are {list(SPLITS)}")
    _, names = _resolve(scale, rubric)
    problems: list[Problem] = []
    preferences = _load_preferences(
        Path(root), [split], {split: list(records)}, {split: set()}, names, problems
    )
    _raise_if(root, problems)
    return preferences.get(split, [])


# --------------------------------------------------------------------------------------------------
# Preference files
# --------------------------------------------------------------------------------------------------


def _line_id(text: str) -> str | None:
    """The id a record line names (``id``, else ``image``) even when the line has problems, or ``None``:
    a judgement pointing to such a line is not reported again (the line's own problems are)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    value = obj.get("id", obj.get("image"))
    return value if isinstance(value, str) else None


def _split_ids(root: Path, split: str) -> set[str]:
    """The ids named by the lines of a split file that was not loaded (for one message: "this record is
    in another split"); unreadable files and lines give nothing."""
    lines, _ = _read_lines(root / f"{split}.jsonl") if os.path.lexists(root / f"{split}.jsonl") else ([], [])
    return {i for _, text in lines if isinstance(text, str) and (i := _line_id(text)) is not None}


def _load_preferences(
    root: Path,
    splits: Sequence[str],
    records: dict[str, list[Record]],
    unusable: dict[str, set[str]],
    rubric_names: Sequence[str],
    problems: list[Problem],
) -> dict[str, list[Preference]]:
    """Parse and check the preference file of each split in ``splits`` that has one, against that split's
    valid ``records`` (ids in ``unusable`` name lines with problems of their own: judgements pointing to
    them are dropped without a second report). Appends the problems; returns the valid judgements."""
    out: dict[str, list[Preference]] = {}
    first_id: dict[str, Preference] = {}
    other_ids: dict[str, set[str]] = {}  # split -> ids, read only when a judgement names an unknown id

    def split_of(record_id: str, split: str) -> str | None:
        for other in SPLITS:
            if other == split:
                continue
            if other not in other_ids:
                other_ids[other] = (
                    {r.id for r in records[other]} | unusable.get(other, set())
                    if other in records
                    else _split_ids(root, other)
                )
            if record_id in other_ids[other]:
                return other
        return None

    for split in splits:
        path = root / preferences_file(split)
        if not os.path.lexists(path):
            continue
        file = str(path)
        out[split] = []
        if split not in records:
            problems.append(
                Problem(
                    file, None, None, f"there is no {split}.jsonl: a preference file compares its records"
                )
            )
            continue
        by_id = {r.id: r for r in records[split]}
        lines, file_problems = _read_lines(path)
        problems.extend(file_problems)
        for number, text in lines:
            if isinstance(text, Problem):
                problems.append(text)
                continue
            pref, found = parse_preference(
                text, file=file, line=number, split=split, rubric_names=rubric_names
            )
            problems.extend(found)
            if pref is None:
                continue
            found = _preference_problems(pref, by_id, unusable.get(split, set()), split, split_of, file)
            if pref.id in first_id:
                f = first_id[pref.id]
                found.append(
                    Problem(
                        file,
                        number,
                        "id",
                        f"duplicate preference id {_show(pref.id)} (first at {preferences_file(f.split)}:{f.line})",
                    )
                )
            else:
                first_id[pref.id] = pref
            problems.extend(found)
            if not found and pref.a in by_id and pref.b in by_id:
                out[split].append(pref)
    return out


def _preference_problems(
    pref: Preference,
    by_id: dict[str, Record],
    unusable: set[str],
    split: str,
    split_of: Callable[[str, str], str | None],
    file: str,
) -> list[Problem]:
    """What is wrong between a judgement and its split's records: unknown ids, ids of another split, a
    and b of different prompts."""
    found = []
    for side in ("a", "b"):
        record_id = getattr(pref, side)
        if record_id in by_id or record_id in unusable:
            continue
        other = split_of(record_id, split)
        reason = (
            f"record {_show(record_id)} is in {other}.jsonl, not {split}.jsonl: a judgement compares "
            "records of its own split"
            if other is not None
            else f"unknown record id {_show(record_id)}: no line of {split}.jsonl has it"
        )
        found.append(Problem(file, pref.line, side, reason))
    a, b = by_id.get(pref.a), by_id.get(pref.b)
    if a is not None and b is not None and a.prompt_id != b.prompt_id:
        found.append(
            Problem(
                file,
                pref.line,
                "b",
                f"record {_show(b.id)} has prompt_id {_show(b.prompt_id)}, but a ({_show(a.id)}) has "
                f"{_show(a.prompt_id)}: a judgement compares two images of one prompt",
            )
        )
    return found


def _raise_if(root: str | os.PathLike, problems: Sequence[Problem], shown: int = 10) -> None:
    if not problems:
        return
    lines = [str(p) for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"... and {len(problems) - shown} more (run `zreward data check {root}` to see all)")
    raise DatasetError(str(root), f"{len(problems)} problem(s):\n  " + "\n  ".join(lines), problems)
