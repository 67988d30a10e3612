"""Pick-a-Pic v2 (Kirstain et al. 2023, arXiv:2305.01569): about a million pairwise choices between two
images of one prompt, by users of the Pick-a-Pic web app.

Format (the HF dataset card of ``yuvalkirstain/pickapic_v2`` and the loader code of
github.com/yuvalkirstain/PickScore, ``trainer/datasetss/clip_hf_dataset.py`` and
``trainer/scripts/eval_preference_predictor.py``): parquet files ``data/{split}-NNNNN-of-NNNNN.parquet``
with splits ``train``, ``validation``, ``test``, ``validation_unique``, ``test_unique``; columns
``caption`` (string), ``jpg_0``/``jpg_1`` (binary: the JPEG bytes), ``label_0``/``label_1`` (float64:
1/0 when image 0 won, 0/1 when image 1 won, 0.5/0.5 for a tie), ``has_label`` and ``are_different``
(bool), ``image_0_uid``/``image_1_uid``, ``model_0``/``model_1``, ``ranking_id``, ``user_id``,
``best_image_uid``, ``created_at``, ``num_example_per_prompt``.

Each row becomes two records (without scores: the set has none) and one judgement on ``overall`` (the
user's choice is a whole-image preference, no rubric dimension). An image shown in several rows is one
record (its uid). Rows with ``has_label`` false (no choice) and ``are_different`` false (the same image
twice) are skipped and counted. ``validation_unique``/``test_unique`` repeat rows of validation/test and
are not imported. The held-out splits are read first, so a prompt that is also in train stays in
validation/test and its train rows are skipped (one split per prompt).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ...errors import ZRewardInputError
from .base import ImageItem, Importer, Judgement, SourceOptions, SourceRow
from .mapping import FieldSpec
from .sources import TableFile, image_bytes, iter_table_batches, table_columns, table_files, table_rows_count

COLUMNS = (
    "caption",
    "jpg_0",
    "jpg_1",
    "label_0",
    "label_1",
    "has_label",
    "are_different",
    "image_0_uid",
    "image_1_uid",
    "model_0",
    "model_1",
    "ranking_id",
    "user_id",
    "best_image_uid",
)
REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0")
LABELS = {1.0: "a", 0.0: "b", 0.5: "tie"}
SPLIT_ORDER = {"test": 0, "val": 1, "train": 2}


class PickAPicV2Importer(Importer):
    name = "pickapic-v2"
    prefix = "pickapic"
    title = "Pick-a-Pic v2"
    own_splits = True
    source_doc = (
        "huggingface.co/datasets/yuvalkirstain/pickapic_v2 (card); github.com/yuvalkirstain/PickScore"
    )
    fields: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec(
            "preference", "preference", default="overall", why="a whole-image choice, no rubric dimension"
        ),
    )

    def __init__(self, src: Path, options: SourceOptions):
        super().__init__(src, options)
        files = table_files(src, options.source_split)
        self.ignored = [f for f in files if f.split is None]
        self.files = sorted(
            (f for f in files if f.split is not None and f.split in options.splits),
            key=lambda f: SPLIT_ORDER[f.split or "train"],
        )
        for file in self.files:
            columns = table_columns(file)
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise ZRewardInputError(
                    str(file.path), f"is not a Pick-a-Pic file: no column {missing} (its columns: {columns})"
                )

    def notes(self) -> list[str]:
        return [
            f"not read: {_display(f.path, self.src)} ({f.source_split} repeats rows of another split)"
            for f in self.ignored
        ]

    def total_rows(self) -> int | None:
        counts = [table_rows_count(f) for f in self.files]
        return None if any(c is None for c in counts) else sum(c or 0 for c in counts)

    def rows(self, skip: int = 0) -> Iterator[SourceRow]:
        # no state across rows: a resume skips whole row groups without reading them
        for file in self.files:
            name = _display(file.path, self.src)
            batches = iter_table_batches(file, COLUMNS, batch_size=256, skip_rows=skip)
            while True:
                try:
                    first, batch = next(batches)
                except StopIteration as stop:
                    skip = max(0, skip - int(stop.value or 0))
                    break
                skip = 0
                for offset, row in enumerate(batch):
                    yield self._row(file, name, first + offset, row)

    def _row(self, file: TableFile, name: str, number: int, row: dict[str, Any]) -> SourceRow:
        if row.get("has_label") is False:
            return SourceRow(name, number, skip=("unlabelled", "has_label is false: no choice was made"))
        if row.get("are_different") is False:
            return SourceRow(name, number, skip=("identical", "are_different is false: the same image twice"))
        label_0, label_1 = row.get("label_0"), row.get("label_1")
        preferred = (
            LABELS.get(label_0)
            if isinstance(label_0, (int, float)) and not isinstance(label_0, bool)
            else None
        )
        if preferred is None:
            return SourceRow.malformed(name, number, "label_0", f"must be 1, 0 or 0.5, got {label_0!r}")
        if isinstance(label_1, (int, float)) and abs(label_0 + label_1 - 1.0) > 1e-9:
            return SourceRow.malformed(
                name, number, "label_1", f"label_0 + label_1 must be 1, got {label_0} + {label_1}"
            )
        images = []
        for side in (0, 1):
            data = image_bytes(row.get(f"jpg_{side}"))
            if not isinstance(data, bytes):
                return SourceRow.malformed(name, number, f"jpg_{side}", "holds no image bytes")
            uid = row.get(f"image_{side}_uid")
            key = uid if isinstance(uid, str) and uid else hashlib.sha256(data).hexdigest()[:32]
            original = {"image_uid": uid, "model": row.get(f"model_{side}")}
            images.append(
                ImageItem(key=key, prompt=row.get("caption"), image=data, split=file.split, original=original)
            )
        original = {k: row.get(k) for k in ("label_0", "label_1", "ranking_id", "user_id", "best_image_uid")}
        original["source_split"] = file.source_split
        judgement = Judgement(images[0].key, images[1].key, "preference", preferred, original)
        return SourceRow(name, number, images=images, judgements=[judgement])


def _display(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if root.is_dir() and path.is_relative_to(root) else path.name
