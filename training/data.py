"""Training views of a dataset (``zreward_deploy.data`` records): student items, teacher pairs and
distillation items, each turned into tensors by index so that a trainer can ask for any global batch.

* :class:`StudentData`: one item per record, all dimensions at once (the student's one-pass layout):
  ``pixel_values [B, 3, S, S]``, the prompt ids, and per dimension a label, a mask (is it labelled?) and
  the soft target (``ScoreScale.soft_target``) ``[B, D, K]``. Distillation swaps the labels for
  teacher distributions (``targets=``).
* :class:`PairData`: one item per same-prompt pair on one dimension (``build_pairs``), oriented so that
  ``w`` is the higher-scored image: the GDSO/GRPO training instance (p, I_w, I_l, ŝ_w, ŝ_l, d).
* :class:`ItemData`: one item per (record, dimension), labels not needed: the RISD cache and OPD.
* :class:`PreferenceData`: the judgements of a preference file (docs/data.md, "Preference records") as
  pairs of rows of a :class:`StudentData`; :func:`joint_batch` puts a step's items and judged images into
  one student batch (the SFT / RISD pairwise term).

Images are decoded once, when a view is built, and kept resized to the model's resolution, still in
[0, 1] (:class:`ImageCache`); normalising them later gives exactly the pixels of the scoring path
(``ZRewardProcessor.pixel_values``: resize, then normalise). The datasets here are small (the synthetic
set is a few hundred 64-px images); a large real dataset would stream instead.

Decoding everything up front is also what makes one bad file cost one item instead of the run: an image
that ``zreward data check`` accepts (its header is fine) may still fail to decode (truncated pixel data).
Such a record is left out before pairs or items are built, and listed in :attr:`ImageCache.skipped`; the
training loop logs and counts it (:meth:`~.loop.TrainLoop.start`). Every view (and the RISD teacher
cache, which takes the cache's records) goes through :class:`ImageCache`, so every trainer behaves alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from zreward_deploy.data import OVERALL, Preference, Record, build_pairs
from zreward_deploy.data.records import preference_dimensions
from zreward_deploy.errors import InvalidImageError, ZRewardInputError
from zreward_deploy.processing import ZRewardProcessor
from zreward_deploy.scoring import item_call


@dataclass(frozen=True)
class SkippedItem:
    """A record left out of training because its image cannot be decoded."""

    id: str
    image: str
    reason: str

    def __str__(self) -> str:
        return f"{self.id} ({self.image}): {self.reason}"


class ImageCache:
    """The records of a split whose images decode, each image resized to the model's resolution,
    ``[3, S, S]`` in [0, 1]; indexed by position in :attr:`records`.

    Every image is decoded when the cache is built. A record whose image fails
    (``processor.model_image`` fails: truncated pixel data, a corrupt or unreadable file, whatever the
    decoder raises) is dropped from :attr:`records` and listed in
    :attr:`skipped` with the reason; the others keep their order. Decoding lazily would instead stop the
    run at whichever step first drew the bad item.

    Raises:
        ZRewardInputError: when records were given and not one image decodes (nothing to train on).
    """

    def __init__(self, records: Sequence[Record], processor: ZRewardProcessor):
        self.processor = processor
        self.total = len(records)
        self.records: list[Record] = []
        self.skipped: list[SkippedItem] = []
        self._images: list[torch.Tensor] = []
        for record in records:
            try:
                # resized as decoded (the normalisation happens in pixel_values()): the cache holds S x S
                # images only, and a large source image never exists in float at full resolution
                image = item_call(processor.model_image, record.image_path, record.id, InvalidImageError)
            except ZRewardInputError as exc:
                self.skipped.append(SkippedItem(record.id, str(record.image_path), exc.reason))
                continue
            self.records.append(record)
            self._images.append(image)
        if self.total and not self.records:
            raise ZRewardInputError(
                "data",
                f"none of the {self.total} records has an image that can be decoded, e.g. {self.skipped[0]}",
            )

    def __len__(self) -> int:
        return len(self.records)

    def describe_skipped(self) -> str:
        """One line saying how many records were skipped, then one line per skipped record."""
        head = f"skipped {len(self.skipped)} of {self.total} items with undecodable images:"
        return "\n".join([head, *(f"  {item}" for item in self.skipped)])

    def get(self, index: int) -> torch.Tensor:
        return self._images[index]

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """``[B, 3, S, S]`` in [0, 1]."""
        return torch.stack([self._images[i] for i in indices])

    def pixel_values(self, indices: Sequence[int]) -> torch.Tensor:
        """``[B, 3, S, S]`` normalised model inputs."""
        return self.processor.preprocess_tensor(self.images(indices))


def decoded(records: Sequence[Record] | ImageCache, processor: ZRewardProcessor) -> ImageCache:
    """``records`` as an :class:`ImageCache` (decoded now, unless they already are one: RISD decodes
    before building its teacher cache and hands the same cache to :class:`StudentData`)."""
    return records if isinstance(records, ImageCache) else ImageCache(records, processor)


def resolve_dimensions(
    processor: ZRewardProcessor,
    records: Sequence[Record] | None,
    dimensions: Sequence[str] | None,
    preferences: Sequence[Preference] = (),
) -> list[str]:
    """The dimensions to train on, in rubric order: ``dimensions`` if given (each must be in the
    rubric), else every rubric dimension the records label or the ``preferences`` judge ("overall":
    every rubric dimension), and all rubric dimensions when ``records`` is ``None`` (distillation needs
    no labels)."""
    rubric = processor.config.get_rubric()
    if dimensions is not None:
        return [d.name for d in rubric.select(list(dimensions))]
    if records is None:
        return rubric.names
    labelled = {d for r in records for d in r.dimensions} | set(preference_dimensions(preferences, rubric))
    names = [n for n in rubric.names if n in labelled]
    if not names:
        what = "label or judge" if preferences else "label"
        raise ZRewardInputError("dimensions", f"the training records {what} none of the rubric's dimensions")
    return names


# --------------------------------------------------------------------------------------------------
# Student items
# --------------------------------------------------------------------------------------------------


@dataclass
class StudentBatch:
    """B student items over D dimensions.

    Attributes:
        ids: record ids.
        pixel_values: ``[B, 3, S, S]``.
        input_ids, attention_mask: ``[B, L]`` the student prompt part, right-padded.
        labels: ``[B, D]`` human scores (NaN where unlabelled; NaN everywhere for distillation).
        mask: ``[B, D]`` bool, True where the item has a target on that dimension.
        targets: ``[B, D, K]`` soft targets (label two-hots, or teacher distributions); 0 rows where masked.
        pref_a, pref_b, pref_dim, pref_target: ``[P]`` judgements between rows of the batch
            (:func:`joint_batch`); ``None`` in a batch without.
    """

    ids: list[str]
    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor
    # judgements between rows of this batch (joint_batch), None without: each [P]
    pref_a: torch.Tensor | None = None  # row of side a
    pref_b: torch.Tensor | None = None  # row of side b
    pref_dim: torch.Tensor | None = None  # index into the dimensions, or OVERALL_INDEX (the reward)
    pref_target: torch.Tensor | None = None  # P(a ≻ b) as judged: 1, 0 or 0.5


class StudentData:
    """Records as student items (all ``dimensions`` per item).

    Args:
        records: the split's records, or an :class:`ImageCache` of them (records whose image does not
            decode are left out either way).
        processor: the model's processor (templates, score scale, image size).
        dimensions: the D dimensions, in the order of the model's suffixes.
        label_source: which human score is the label (:meth:`Record.human_score`; ``"scores"`` =
            the aggregated training label).
        targets: for distillation, ``{(record id, dimension): probs [K]}`` replacing the labels; a pair
            missing from it is masked.
        require_targets: refuse records with no target at all (``False`` when judgements train them:
            :class:`PreferenceData`).
    """

    def __init__(
        self,
        records: Sequence[Record] | ImageCache,
        processor: ZRewardProcessor,
        dimensions: Sequence[str],
        label_source: str = "scores",
        targets: Mapping[tuple[str, str], torch.Tensor] | None = None,
        require_targets: bool = True,
    ):
        self.images = decoded(records, processor)
        self.records = self.images.records
        self.processor = processor
        self.dimensions = list(dimensions)
        self.scale = processor.config.get_score_scale()
        self.prompt_ids = [processor.prompt_ids(r.prompt, item=r.id) for r in self.records]
        d, k = len(self.dimensions), self.scale.num_scores
        self.labels = torch.full((len(self.records), d), math.nan)
        self.mask = torch.zeros(len(self.records), d, dtype=torch.bool)
        self.targets = torch.zeros(len(self.records), d, k)
        for i, record in enumerate(self.records):
            for j, name in enumerate(self.dimensions):
                if targets is not None:
                    probs = targets.get((record.id, name))
                    if probs is not None:
                        self.targets[i, j] = torch.as_tensor(probs, dtype=torch.float32)
                        self.mask[i, j] = True
                    continue
                label = record.human_score(name, label_source)
                if label is not None:
                    self.labels[i, j] = label
                    self.mask[i, j] = True
                    self.targets[i, j] = self.scale.soft_target(label)
        if require_targets and not self.mask.any():
            raise ZRewardInputError("data", f"no record has a target on any of {self.dimensions}")

    @property
    def trained_dimensions(self) -> list[str]:
        """The dimensions at least one record has a label (or teacher target) on: what training moves."""
        return [d for j, d in enumerate(self.dimensions) if bool(self.mask[:, j].any())]

    def __len__(self) -> int:
        return len(self.records)

    def batch(self, indices: Sequence[int]) -> StudentBatch:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        input_ids, attention_mask = self.processor.pad([self.prompt_ids[i] for i in indices])
        return StudentBatch(
            ids=[self.records[i].id for i in indices],
            pixel_values=self.images.pixel_values(indices),
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=self.labels[idx],
            mask=self.mask[idx],
            targets=self.targets[idx],
        )


# --------------------------------------------------------------------------------------------------
# Judgements (preference files) for the student trainers
# --------------------------------------------------------------------------------------------------

OVERALL_INDEX = -1
"""``pref_dim`` of a judgement on ``"overall"``: the reward Σ_d w_d μ_d over the whole rubric."""


@dataclass(frozen=True)
class TrainingPreference:
    """A judgement as rows ``a``, ``b`` of a :class:`StudentData`, a dimension index (or
    :data:`OVERALL_INDEX`) and its target P(a ≻ b)."""

    a: int
    b: int
    dimension: int
    target: float


class PreferenceData:
    """The judgements of a split's preference file between the records of ``data`` (a
    :class:`StudentData`; its images and prompts are shared).

    A judgement is left out, and counted in :attr:`left_out` by reason, when one of its images does not
    decode (its record is not in ``data``), when its dimension is not one of ``data.dimensions``, or when it
    is on ``"overall"`` and ``data.dimensions`` do not cover the whole rubric (the reward needs every
    dimension's μ).

    Attributes:
        pairs: the judgements used.
        weights: ``[D]`` the rubric's normalised reward weights in the order of ``data.dimensions``
            (``None`` when they do not cover the rubric).
    """

    def __init__(self, preferences: Sequence[Preference], data: StudentData, processor: ZRewardProcessor):
        rubric = processor.config.get_rubric()
        self.dimensions = list(data.dimensions)
        row = {r.id: i for i, r in enumerate(data.records)}
        covers = all(name in self.dimensions for name in rubric.names)
        self.weights = None
        if covers:
            w = dict(zip(rubric.names, rubric.weights(rubric.names).tolist(), strict=True))
            self.weights = torch.tensor([w[d] for d in self.dimensions], dtype=torch.float32)
        self.pairs: list[TrainingPreference] = []
        self.left_out: dict[str, int] = {}
        for p in preferences:
            if p.dimension == OVERALL and OVERALL not in rubric.names:
                dim = OVERALL_INDEX if covers else None
                reason = f"on {OVERALL!r}, which needs every rubric dimension trained ({rubric.names})"
            else:
                dim = self.dimensions.index(p.dimension) if p.dimension in self.dimensions else None
                reason = f"on {p.dimension!r}, not one of the trained dimensions {self.dimensions}"
            if p.a not in row or p.b not in row:
                reason, dim = "an image that does not decode", None
            if dim is None:
                self.left_out[reason] = self.left_out.get(reason, 0) + 1
                continue
            self.pairs.append(TrainingPreference(row[p.a], row[p.b], dim, p.target))

    @property
    def trained_dimensions(self) -> list[str]:
        """The dimensions the judgements move (all of ``dimensions`` for an "overall" one)."""
        used = {p.dimension for p in self.pairs}
        return [d for i, d in enumerate(self.dimensions) if i in used or OVERALL_INDEX in used]

    def describe_left_out(self) -> str:
        """One line per reason: how many judgements were left out and why."""
        return "\n".join(f"left out {n} judgement(s) {reason}" for reason, n in self.left_out.items())

    def __len__(self) -> int:
        return len(self.pairs)


def joint_batch(
    data: StudentData, items: Sequence[int], preferences: PreferenceData, judgements: Sequence[int]
) -> StudentBatch:
    """One student batch of the records ``items`` (with their targets) followed by the two images of each
    of ``judgements`` (indices into ``preferences.pairs``; all a sides, then all b sides), which carry no
    target (masked): rows ``[items][a sides][b sides]``, ``pref_a`` / ``pref_b`` pointing at them."""
    pairs = [preferences.pairs[i] for i in judgements]
    n, p = len(items), len(pairs)
    batch = data.batch([*items, *(q.a for q in pairs), *(q.b for q in pairs)])
    batch.mask[n:] = False  # a judged image trains through the pairwise term only
    batch.labels[n:] = math.nan
    batch.targets[n:] = 0.0
    batch.pref_a = torch.arange(n, n + p)
    batch.pref_b = torch.arange(n + p, n + 2 * p)
    batch.pref_dim = torch.tensor([q.dimension for q in pairs], dtype=torch.long)
    batch.pref_target = torch.tensor([q.target for q in pairs], dtype=torch.float32)
    return batch


# --------------------------------------------------------------------------------------------------
# Teacher pairs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPair:
    """Indices (into the records) of the higher-scored image ``w`` and the other one ``l``."""

    w: int
    l: int  # noqa: E741 (the paper's name)
    dimension: str
    label_w: float
    label_l: float


@dataclass
class PairBatch:
    """B pairs (each on its own dimension).

    Attributes:
        images_w, images_l: ``[B, 3, S, S]`` in [0, 1] (``generate_reasoning`` normalises them).
        prompts: B prompt texts (one per pair: both images share it).
        dimensions: B dimension names.
        label_w, label_l: ``[B]`` labels ŝ_w > ŝ_l.
        target_w, target_l: ``[B, K]`` their soft targets.
    """

    images_w: torch.Tensor
    images_l: torch.Tensor
    prompts: list[str]
    dimensions: list[str]
    label_w: torch.Tensor
    label_l: torch.Tensor
    target_w: torch.Tensor
    target_l: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)


class PairData:
    """Same-prompt pairs with different labels on each of ``dimensions``.

    Args:
        records: the split's records, or an :class:`ImageCache` of them (records whose image does not
            decode are left out before pairing).
        processor: the model's processor.
        dimensions: dimensions to pair on.
        label_source: which human score is the label (``"scores"``: the training label).
        min_gap: keep pairs with ``|ŝ_w − ŝ_l| > min_gap``.
    """

    def __init__(
        self,
        records: Sequence[Record] | ImageCache,
        processor: ZRewardProcessor,
        dimensions: Sequence[str],
        label_source: str = "scores",
        min_gap: float = 0.0,
    ):
        self.images = decoded(records, processor)
        self.records = self.images.records
        self.processor = processor
        self.scale = processor.config.get_score_scale()
        self.pairs = []
        for p in build_pairs(self.records, list(dimensions), source=label_source, min_gap=min_gap):
            if p.score_a > p.score_b:
                self.pairs.append(TrainingPair(p.a, p.b, p.dimension, p.score_a, p.score_b))
            else:
                self.pairs.append(TrainingPair(p.b, p.a, p.dimension, p.score_b, p.score_a))
        if not self.pairs:
            raise ZRewardInputError(
                "data", f"no same-prompt pair with different labels on {list(dimensions)}"
            )
        self.dimensions = list(dimensions)

    @property
    def trained_dimensions(self) -> list[str]:
        """The dimensions at least one pair is on (in the order given): what training moves."""
        paired = {p.dimension for p in self.pairs}
        return [d for d in self.dimensions if d in paired]

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int]) -> PairBatch:
        pairs = [self.pairs[i] for i in indices]
        label_w = torch.tensor([p.label_w for p in pairs], dtype=torch.float32)
        label_l = torch.tensor([p.label_l for p in pairs], dtype=torch.float32)
        return PairBatch(
            images_w=self.images.images([p.w for p in pairs]),
            images_l=self.images.images([p.l for p in pairs]),
            prompts=[self.records[p.w].prompt for p in pairs],
            dimensions=[p.dimension for p in pairs],
            label_w=label_w,
            label_l=label_l,
            target_w=self.scale.soft_target(label_w),
            target_l=self.scale.soft_target(label_l),
        )


# --------------------------------------------------------------------------------------------------
# Distillation items (no labels)
# --------------------------------------------------------------------------------------------------


@dataclass
class ItemBatch:
    """B (image, prompt, dimension) items: ``images [B, 3, S, S]`` in [0, 1], ids, prompts, dimensions."""

    ids: list[str]
    images: torch.Tensor
    prompts: list[str]
    dimensions: list[str]

    def __len__(self) -> int:
        return len(self.ids)


class ItemData:
    """Every (record, dimension) of ``records`` × ``dimensions``, record-major (records whose image does
    not decode are left out)."""

    def __init__(
        self, records: Sequence[Record] | ImageCache, processor: ZRewardProcessor, dimensions: Sequence[str]
    ):
        self.images = decoded(records, processor)
        self.records = self.images.records
        self.dimensions = list(dimensions)
        self.items = [(i, d) for i in range(len(self.records)) for d in self.dimensions]

    @property
    def trained_dimensions(self) -> list[str]:
        """Every dimension (distillation needs no labels)."""
        return list(self.dimensions) if self.items else []

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: Sequence[int]) -> ItemBatch:
        chosen = [self.items[i] for i in indices]
        return ItemBatch(
            ids=[self.records[r].id for r, _ in chosen],
            images=self.images.images([r for r, _ in chosen]),
            prompts=[self.records[r].prompt for r, _ in chosen],
            dimensions=[d for _, d in chosen],
        )
