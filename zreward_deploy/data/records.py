"""The records of a dataset (:class:`Record`, one JSONL line), the preference judgements beside them
(:class:`Preference`, one line of a ``{split}.preferences.jsonl``), the problems found in either
(:class:`Problem`), and the preference pairs built from human scores (:func:`build_pairs`). The format
itself: :mod:`.format` and docs/data.md."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import UnknownDimensionError, ZRewardInputError

SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_FIELDS: tuple[str, ...] = ("prompt_id", "prompt", "image")
OPTIONAL_FIELDS: tuple[str, ...] = ("id", "scores", "annotations", "meta")
# Human scores closer than this count as tied: trimmed means of half points (e.g. 11/3 - 10/3) are not
# exact in binary floating point, and a rounding residue must not turn a tie into a pair.
TIE_TOLERANCE = 1e-9

ScoreSource = Literal["auto", "scores", "annotations"]

# A preference file's line: {"id", "a", "b", "dimension", "preferred", "meta"} (docs/data.md, "Preference
# records"). "overall" compares the model's scalar reward R = sum_d w_d mu_d over the whole rubric.
PREFERENCE_REQUIRED_FIELDS: tuple[str, ...] = ("a", "b", "dimension", "preferred")
PREFERENCE_OPTIONAL_FIELDS: tuple[str, ...] = ("id", "meta")
PREFERRED_VALUES: tuple[str, ...] = ("a", "b", "tie")
OVERALL = "overall"
Preferred = Literal["a", "b", "tie"]


def preferences_file(split: str) -> str:
    """The name of a split's preference file: ``test`` -> ``test.preferences.jsonl``."""
    return f"{split}.preferences.jsonl"


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
        return printable(text)  # field names come from the file: a key with a newline stays one line


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
class Preference:
    """One judgement of a split's preference file: record ``a`` preferred to record ``b`` (or the
    other way round, or a tie) on ``dimension``.

    Attributes:
        id: unique within the dataset's preference files (default ``"{a}|{b}|{dimension}"``).
        a, b: ids of two different records of the same split file with the same ``prompt_id``.
        dimension: a rubric dimension, or ``"overall"`` (the model's reward R = Σ_d w_d μ_d over the
            whole rubric, with the rubric's normalised weights) unless the rubric itself has a dimension of
            that name.
        preferred: ``"a"``, ``"b"`` or ``"tie"``.
        meta: free-form extra data (e.g. the source set and its original row).
        split: the split the judgement belongs to; line: its 1-based line in the preference file.
    """

    id: str
    a: str
    b: str
    dimension: str
    preferred: Preferred
    meta: Mapping[str, Any] = field(default_factory=dict)
    split: str = ""
    line: int = 0

    @property
    def target(self) -> float:
        """P(a ≻ b) as the judgement states it: 1 (a), 0 (b) or 0.5 (tie)."""
        return {"a": 1.0, "b": 0.0, "tie": 0.5}[self.preferred]

    @property
    def is_tie(self) -> bool:
        return self.preferred == "tie"


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


def overall_is_reward(rubric: Any) -> bool:
    """``"overall"`` names the reward unless ``rubric`` (anything with ``names``) has a dimension of that
    name."""
    return OVERALL not in rubric.names


def preference_dimensions(preferences: Iterable[Preference], rubric: Any) -> list[str]:
    """The rubric dimensions a model must score to evaluate (or train on) ``preferences``, in rubric
    order: each judged dimension, and every rubric dimension when one judgement is on ``"overall"`` (the
    reward). A dimension the rubric lacks raises :class:`UnknownDimensionError`."""
    judged = dict.fromkeys(p.dimension for p in preferences)
    reward = OVERALL in judged and overall_is_reward(rubric)
    unknown = [d for d in judged if d not in rubric.names and not (reward and d == OVERALL)]
    if unknown:
        raise UnknownDimensionError(
            unknown[0], f"a judgement is on it but the model's rubric has only {list(rubric.names)}"
        )
    return list(rubric.names) if reward else [d for d in rubric.names if d in judged]


def printable(text: str) -> str:
    """``text`` with non-printable characters (control characters, lone surrogates, line separators)
    backslash-escaped: one problem stays one output line, and printing never fails on encoding."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
