"""ImageRewardDB (Xu et al. 2023, arXiv:2304.05977): expert ratings and rankings of DiffusionDB images,
several images per prompt.

Format (the dataset card and loading script ``ImageRewardDB.py`` of ``THUDM/ImageRewardDB`` on the HF
hub): images under ``images/{train,validation,test}/{split}_N/`` with one JSON array per folder
(``images/train/train_1.json``); each element ``{"image_path": "images/train/train_1/<uuid>.webp",
"prompt_id": "000864-0061", "prompt": str, "classification": str, "image_amount_in_total": int,
"rank": int, "overall_rating": int, "image_text_alignment_rating": int, "fidelity_rating": int}``
(``int8`` features in the loader). Ratings are 1-7; ``rank`` is the image's place among the prompt's
images (1 = best). The same fields are in ``metadata-{split}.parquet``, and an HF ``save_to_disk``
copy holds them with an ``image`` column (``{bytes, path}``); all three are read.

Default mapping: ``image_text_alignment_rating`` -> alignment; ``fidelity_rating`` -> plausibility (the
card defines it as "whether the output image is true to the shape and characteristics that the object
should have": structural correctness, which is plausibility, not photographic realism);
``overall_rating`` has no rubric dimension and stays in ``meta.original``. The ranking becomes
judgements on ``overall`` for every pair of a prompt's ranked images (equal ranks: ``"tie"``); the
images of a prompt are consecutive in the files, so a prompt's group is the run of elements with its
``prompt_id``. The set publishes one rating per image (no per-annotator ratings, so no
``annotations``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from ...errors import ZRewardInputError
from .base import (
    ImageItem,
    Importer,
    Judgement,
    Preferred,
    SourceOptions,
    SourceRow,
    group_label,
    resolve_image,
)
from .mapping import FieldSpec
from .sources import (
    SourceProblem,
    image_bytes,
    is_save_to_disk,
    iter_json_elements,
    iter_table_batches,
    natural_key,
    split_of_path,
    table_files,
)

SCORE_FIELDS = ("overall_rating", "image_text_alignment_rating", "fidelity_rating")
SPLIT_ORDER = {"test": 0, "val": 1, "train": 2}
NOT_DATA = {"dataset_info.json", "state.json", "dataset_dict.json"}


class ImageRewardDBImporter(Importer):
    name = "imagerewarddb"
    prefix = "irdb"
    title = "ImageRewardDB"
    own_splits = True
    takes_source_split = True
    source_doc = "huggingface.co/datasets/THUDM/ImageRewardDB (card, ImageRewardDB.py)"
    fields: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("image_text_alignment_rating", "score", 1.0, 7.0, "alignment", why="image-text alignment"),
        FieldSpec("fidelity_rating", "score", 1.0, 7.0, "plausibility", why="true to the object's shape"),
        FieldSpec("overall_rating", "score", 1.0, 7.0, None, why="no rubric dimension: kept in meta"),
        FieldSpec("rank", "preference", default="overall", why="the ranking is a whole-image order"),
    )

    def __init__(self, src: Path, options: SourceOptions):
        super().__init__(src, options)
        if not src.exists():
            raise ZRewardInputError(str(src), "the ImageRewardDB folder does not exist")
        self.images_root = options.images or (src if src.is_dir() else src.parent)
        self.sources = self._find_sources(src, options)
        if not self.sources:
            raise ZRewardInputError(
                str(src),
                "holds no ImageRewardDB data: no images/{split}/*.json, no metadata-{split}.parquet "
                "and not an HF save_to_disk folder",
            )

    def _find_sources(self, src: Path, options: SourceOptions) -> list[tuple[str, str, Path, str]]:
        """``(split, kind, path, display name)`` in reading order (test, val, train)."""
        found: list[tuple[str, str, Path, str]] = []
        if src.is_dir() and not is_save_to_disk(src):
            for path in sorted(src.rglob("*.json"), key=natural_key):
                if path.name in NOT_DATA:
                    continue
                _, split = split_of_path(path, src)
                if split is not None:
                    found.append((split, "json", path, str(path.relative_to(src))))
            if not found:
                for path in sorted(src.glob("metadata-*.parquet"), key=natural_key):
                    _, split = split_of_path(Path(path.stem.removeprefix("metadata-") + ".parquet"))
                    if split is not None:
                        found.append((split, "parquet", path, path.name))
        if not found and (is_save_to_disk(src) or src.suffix == ".parquet"):
            for file in table_files(src, options.source_split):
                if file.split is not None:
                    found.append((file.split, file.kind, file.path, file.path.name))
        found = [f for f in found if f[0] in options.splits]
        return sorted(found, key=lambda f: SPLIT_ORDER[f[0]])

    def rows(self, skip: int = 0) -> Iterator[SourceRow]:
        # rows of a group are followed by the group's judgements: state across rows, so resume re-reads
        return itertools.islice(self._rows(), skip, None)

    def _entries(self, kind: str, path: Path) -> Iterator[tuple[int, Any]]:
        if kind == "json":
            yield from iter_json_elements(path)
            return
        from .sources import TableFile

        file = TableFile(path, kind, None, "")
        columns = (
            "image",
            "image_path",
            "prompt_id",
            "prompt",
            "classification",
            "image_amount_in_total",
            "rank",
            *SCORE_FIELDS,
        )
        for first, batch in iter_table_batches(file, columns, batch_size=64):
            for offset, entry in enumerate(batch):
                yield first + offset, entry

    def _rows(self) -> Iterator[SourceRow]:
        for split, kind, path, name in self.sources:
            group: list[tuple[int, str, Any]] = []  # (row number, image key, rank)
            group_id = None
            for number, entry in self._entries(kind, path):
                row, member = self._row(split, kind, path, name, number, entry)
                if member is not None and member[0] != group_id:
                    yield from self._group(name, group)
                    group, group_id = [], member[0]
                yield row
                if member is not None:
                    group.append((number, member[1], member[2]))
            yield from self._group(name, group)

    def _row(
        self, split: str, kind: str, path: Path, name: str, number: int, entry: Any
    ) -> tuple[SourceRow, tuple[str, str, Any] | None]:
        if isinstance(entry, SourceProblem):
            return SourceRow.malformed(name, number, None, entry.reason), None
        if not isinstance(entry, dict):
            return SourceRow.malformed(
                name, number, None, f"an element must be an object, got {type(entry).__name__}"
            ), None
        prompt_id = entry.get("prompt_id")
        if not isinstance(prompt_id, str) or not prompt_id.strip():
            return SourceRow.malformed(
                name, number, "prompt_id", f"must be a non-empty string, got {prompt_id!r}"
            ), None
        image, key = self._image(kind, path, entry)
        if image is None:
            return SourceRow.malformed(name, number, "image", key), None
        item = ImageItem(
            key=key,
            prompt=entry.get("prompt"),
            image=image,
            prompt_key=prompt_id,
            split=split,
            scores={f: entry.get(f) for f in SCORE_FIELDS if f in entry},
            original={
                k: entry.get(k)
                for k in ("image_path", "classification", "image_amount_in_total", "rank")
                if k in entry
            },
        )
        return SourceRow(name, number, images=[item]), (prompt_id, key, entry.get("rank"))

    def _image(self, kind: str, path: Path, entry: dict[str, Any]) -> tuple[bytes | Path | None, str]:
        """The image (bytes or a file) and its key, or ``(None, why)``."""
        rel = entry.get("image_path")
        cell = image_bytes(entry.get("image")) if "image" in entry else None
        if isinstance(cell, bytes):
            stem = PurePosixPath(rel or (entry.get("image") or {}).get("path") or "").stem
            return cell, stem or f"{entry.get('prompt_id')}-{entry.get('rank')}"
        rel = rel or cell
        if not isinstance(rel, str) or not rel:
            return None, "no image_path and no image bytes"
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts:
            return None, f"image_path {rel!r} leaves the dataset folder"
        # the loading script unzips each images/{split}/{split}_N.zip next to its JSON file
        candidates = [self.images_root / rel, path.parent / path.stem / pure.name, path.parent / pure.name]
        found = resolve_image(candidates)
        if found is None:
            return None, f"missing image: {rel} (looked in {', '.join(str(c) for c in candidates)})"
        return found, pure.stem

    def _group(self, name: str, group: list[tuple[int, str, Any]]) -> Iterator[SourceRow]:
        ranked = [
            (n, key, r) for n, key, r in group if isinstance(r, (int, float)) and not isinstance(r, bool)
        ]
        if len(ranked) < 2:
            return
        judgements = []
        for (_, key_a, rank_a), (_, key_b, rank_b) in itertools.combinations(ranked, 2):
            preferred: Preferred = "tie" if rank_a == rank_b else "a" if rank_a < rank_b else "b"
            judgements.append(Judgement(key_a, key_b, "rank", preferred, {"rank": [rank_a, rank_b]}))
        yield SourceRow(name, group_label(group[0][0], group[-1][0]), judgements=judgements)
