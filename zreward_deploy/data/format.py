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
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..config import Rubric, ScoreScale
from ..errors import ZRewardInputError
from ..fileio import open_regular_file
from .parse import _show, parse_record
from .records import SPLITS, DatasetError, Problem, Record


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
