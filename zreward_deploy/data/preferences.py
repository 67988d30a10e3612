"""Preference datasets made from scored ones: human-scored same-prompt pairs become judgements "a preferred
to b on dimension d" (:func:`preferences_from_scores`), and a scored dataset becomes a preference-only
copy: the same images and records without scores or annotations, plus a ``{split}.preferences.jsonl`` per
split (:func:`write_preference_dataset`). The format: docs/data.md, "Preference records".
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config import Rubric, ScoreScale
from ..errors import ZRewardInputError
from ..fileio import atomic_directory, check_output_dir
from .records import (
    OVERALL,
    SPLITS,
    TIE_TOLERANCE,
    Preference,
    Record,
    ScoreSource,
    build_pairs,
    preferences_file,
)

# build_pairs keeps |ŝ_a − ŝ_b| > min_gap + TIE_TOLERANCE; with this gap it keeps every pair scored on
# both sides, ties included, which are then sorted into judgements, ties and pairs left out
_EVERY_PAIR = -1.0


def _overall_records(records: Sequence[Record], rubric: Rubric, source: ScoreSource) -> list[Record]:
    """``records`` with one score, ``overall`` = Σ_d w_d ŝ_d over the whole rubric (normalised weights),
    on the records scored on every rubric dimension (the others get no score)."""
    weights = rubric.weights().tolist()
    out = []
    for r in records:
        scores = [r.human_score(d, source) for d in rubric.names]
        overall = None if None in scores else sum(w * s for w, s in zip(weights, scores, strict=True))
        out.append(
            dataclasses.replace(r, scores={} if overall is None else {OVERALL: overall}, annotations={})
        )
    return out


def preferences_from_scores(
    records: Sequence[Record],
    dimensions: Sequence[str] | None = None,
    min_gap: float = 0.0,
    source: ScoreSource = "scores",
    *,
    ties: bool = False,
    rubric: Rubric | None = None,
) -> list[Preference]:
    """Judgements from human scores: every same-prompt pair scored on a dimension (:func:`build_pairs`)
    with ``|ŝ_a − ŝ_b| > min_gap`` becomes "the higher-scored one preferred"; with ``ties``, pairs with
    ``|ŝ_a − ŝ_b| ≤`` :data:`~.records.TIE_TOLERANCE` (equal scores) become ``"tie"``. Pairs in between
    (``0 < |Δ| ≤ min_gap``) are left out.

    Args:
        records: the records of one split (``a`` is the earlier of the two in this order).
        dimensions: dimensions to compare on (default: every dimension a record is scored on); may include
            ``"overall"``: the reward Σ_d w_d ŝ_d over the whole ``rubric`` (default :class:`Rubric`:
            the mean), for records scored on every rubric dimension.
        min_gap: e.g. 0.5 keeps only clear preferences.
        source: which human score is compared (:meth:`Record.human_score`; ``"scores"``: the training
            labels).
        ties: also emit ties.
        rubric: the rubric of ``"overall"``.

    Returns:
        Judgements ordered by dimension, then prompt, then pair; ``meta`` holds the two scores and the
        score source. Their ids are the default ``"{a}|{b}|{dimension}"``.
    """
    if min_gap < 0:
        raise ZRewardInputError("min_gap", f"must be >= 0, got {min_gap}")
    if dimensions is None:
        dimensions = list(dict.fromkeys(d for r in records for d in r.dimensions))
    out: list[Preference] = []
    for dim in dimensions:
        if dim == OVERALL and (rubric is None or OVERALL not in rubric.names):
            pool, key = _overall_records(records, rubric or Rubric(), source), "scores"
        else:
            pool, key = records, source
        for pair in build_pairs(pool, [dim], source=key, min_gap=_EVERY_PAIR):
            gap = abs(pair.gap)
            if gap > min_gap + TIE_TOLERANCE:
                preferred = "a" if pair.score_a > pair.score_b else "b"
            elif ties and gap <= TIE_TOLERANCE:
                preferred = "tie"
            else:
                continue
            a, b = records[pair.a].id, records[pair.b].id
            out.append(
                Preference(
                    id=f"{a}|{b}|{dim}",
                    a=a,
                    b=b,
                    dimension=dim,
                    preferred=preferred,
                    meta={
                        "source": "scored-pairs",
                        "score_source": source,
                        "scores": [pair.score_a, pair.score_b],
                    },
                    split=records[pair.a].split,
                )
            )
    return out


def preference_line(pref: Preference) -> str:
    """One line of a preference file (``id`` left out when it is the default)."""
    row: dict[str, Any] = {}
    if pref.id != f"{pref.a}|{pref.b}|{pref.dimension}":
        row["id"] = pref.id
    row.update(a=pref.a, b=pref.b, dimension=pref.dimension, preferred=pref.preferred)
    if pref.meta:
        row["meta"] = dict(pref.meta)
    return json.dumps(row, ensure_ascii=False, allow_nan=False)


def _record_line(record: Record) -> str:
    """A record's line without its scores and annotations (``id`` always written)."""
    row: dict[str, Any] = {
        "id": record.id,
        "prompt_id": record.prompt_id,
        "prompt": record.prompt,
        "image": record.image,
    }
    if record.meta:
        row["meta"] = dict(record.meta)
    return json.dumps(row, ensure_ascii=False, allow_nan=False)


def _place_image(source: Path, target: Path, linked: dict[str, int]) -> None:
    """Hard-link ``source`` to ``target`` (same file system), else copy it; counts each in ``linked``."""
    if target.exists():  # two spellings of one path ("images/a.png", "images/./a.png")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        linked["linked"] += 1
    except OSError:  # another file system, or links not allowed there
        shutil.copyfile(source, target)
        linked["copied"] += 1


def write_preference_dataset(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dimensions: Sequence[str] | None = None,
    *,
    min_gap: float = 0.0,
    source: ScoreSource = "scores",
    ties: bool = False,
    overwrite: bool = False,
    scale: ScoreScale | None = None,
    rubric: Rubric | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write a preference-only copy of the scored dataset ``src_dir`` to ``out_dir``.

    Every split present is loaded and checked (:func:`~.format.load_dataset`: a dataset with problems is
    refused with all of them). Each split's records are written without ``scores`` and ``annotations``
    (``id``, ``prompt_id``, ``prompt``, ``image`` and ``meta`` kept, the images at the same relative paths,
    hard-linked when the file system allows it, else copied), and its judgements
    (:func:`preferences_from_scores` with ``dimensions``, ``min_gap``, ``source``, ``ties``) go to
    ``{split}.preferences.jsonl``. The copy is built in a hidden sibling folder and renamed into place when
    complete; ``out_dir`` must be new or empty unless ``overwrite`` (then it must look like a dataset).

    Args:
        progress: called as ``progress(images_done, images_total)`` after each image.

    Returns:
        ``{"out": path, "splits": {split: {"records", "preferences", "ties"}}, "images": {"linked",
        "copied"}}``.
    """
    from .format import load_dataset

    src = Path(src_dir)
    known = (rubric or Rubric()).names
    for dim in dimensions or ():
        if dim not in known and dim != OVERALL:
            raise ZRewardInputError(dim, f"unknown dimension; the rubric has {known}, or use {OVERALL!r}")
    final = check_output_dir(out_dir, overwrite, protect=[src], marker=[f"{s}.jsonl" for s in SPLITS])
    data = load_dataset(src, scale=scale, rubric=rubric)
    preferences = {
        split: preferences_from_scores(records, dimensions, min_gap, source, ties=ties, rubric=rubric)
        for split, records in data.items()
    }
    images = {r.image: r.image_path for records in data.values() for r in records}
    summary: dict[str, Any] = {"out": str(final), "splits": {}, "images": {"linked": 0, "copied": 0}}
    with atomic_directory(final) as out:
        for done, (name, path) in enumerate(sorted(images.items()), start=1):
            _place_image(path, out / name, summary["images"])
            if progress is not None:
                progress(done, len(images))
        for split, records in data.items():
            (out / f"{split}.jsonl").write_text(
                "".join(_record_line(r) + "\n" for r in records), encoding="utf-8"
            )
            prefs = preferences[split]
            (out / preferences_file(split)).write_text(
                "".join(preference_line(p) + "\n" for p in prefs), encoding="utf-8"
            )
            summary["splits"][split] = {
                "records": len(records),
                "preferences": len(prefs),
                "ties": sum(p.is_tie for p in prefs),
            }
    return summary
