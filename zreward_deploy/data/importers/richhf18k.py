"""RichHF-18K (Liang et al., CVPR 2024, arXiv:2312.10240): fine-grained scores, heatmaps and misaligned
prompt tokens for 17,760 Pick-a-Pic images.

Format (github.com/google-research-datasets/richhf-18k README and
github.com/google-research/google-research ``richhf_18k/parse_tfrecord_file.py``): ``train.tfrecord``
(15,810), ``dev.tfrecord`` (995), ``test.tfrecord`` (955) of ``tf.train.Example`` with features
``filename`` (bytes: the original Pick-a-Pic file name), ``aesthetics_score``, ``artifact_score``,
``misalignment_score``, ``overall_score`` (one float each), ``artifact_map`` and ``misalignment_map``
(PNG heatmaps, 512x512) and ``prompt_misalignment_label`` (bytes: "0 1 0 ..." per prompt token). The
set holds neither the images nor the prompts: both come from a local Pick-a-Pic copy (``--images``: a
parquet file, a folder of parquet files or an HF save_to_disk folder, v1 or v2: ``caption``,
``image_0_uid``/``image_1_uid``, ``jpg_0``/``jpg_1``), matched by the file name's stem against the uids.

Scale: the paper reports the four scores as averages of annotators' 5-point Likert ratings normalised to
[0, 1], higher being better for all four (``artifact_score`` is the plausibility score, no artifacts = 1;
``misalignment_score`` the alignment score); [0, 1] is the default source range, and a value outside it
is reported (``--source-range`` corrects it if a copy differs). Default mapping: artifact_score ->
plausibility, misalignment_score -> alignment, aesthetics_score -> aesthetics; overall_score has no rubric
dimension and stays in ``meta.original`` with the token labels. The heatmaps are not imported (the
format has no field for them). Splits: train, dev -> val, test.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from ...errors import ZRewardInputError
from .base import ImageItem, Importer, SourceOptions, SourceRow, require_path
from .mapping import FieldSpec
from .sources import (
    ProtobufError,
    SourceProblem,
    image_bytes,
    iter_table_batches,
    iter_tfrecord,
    parse_tf_example,
    split_of_path,
    table_columns,
    table_files,
)

SCORES = ("aesthetics_score", "artifact_score", "misalignment_score", "overall_score")
FILES = (("train.tfrecord", "train"), ("dev.tfrecord", "val"), ("test.tfrecord", "test"))
COPY_COLUMNS = ("caption", "image_0_uid", "image_1_uid", "jpg_0", "jpg_1")


@dataclass
class _Label:
    file: str
    record: int
    split: str
    key: str
    scores: dict[str, float]
    original: dict[str, Any]


class RichHF18kImporter(Importer):
    name = "richhf-18k"
    prefix = "richhf"
    title = "RichHF-18K"
    own_splits = True
    takes_source_split = True
    source_doc = (
        "github.com/google-research-datasets/richhf-18k (README); "
        "github.com/google-research/google-research richhf_18k/parse_tfrecord_file.py"
    )
    fields: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("artifact_score", "score", 0.0, 1.0, "plausibility", why="the paper's plausibility score"),
        FieldSpec("misalignment_score", "score", 0.0, 1.0, "alignment", why="the paper's alignment score"),
        FieldSpec("aesthetics_score", "score", 0.0, 1.0, "aesthetics", why="aesthetics"),
        FieldSpec("overall_score", "score", 0.0, 1.0, None, why="no rubric dimension: kept in meta"),
    )

    def __init__(self, src: Path, options: SourceOptions):
        super().__init__(src, options)
        require_path(src, "the RichHF-18K folder")
        if src.is_file():
            name, split = split_of_path(src)
            if options.source_split:
                name, split = (
                    options.source_split,
                    {"dev": "val"}.get(options.source_split, options.source_split),
                )
            if name is None or split is None:
                raise ZRewardInputError(
                    str(src), "its name does not tell its split; pass --source-split NAME"
                )
            self.files = [(src, split)]
        else:
            self.files = [(src / n, s) for n, s in FILES if (src / n).is_file()]
            if not self.files:
                raise ZRewardInputError(str(src), "holds no train.tfrecord, dev.tfrecord or test.tfrecord")
        self.files = [(p, s) for p, s in self.files if s in options.splits]
        if options.images is None:
            raise ZRewardInputError(
                "--images",
                "RichHF-18K holds no images or prompts: name a local Pick-a-Pic copy (parquet or save_to_disk)",
            )
        # the copy's own splits do not matter here: every file is searched for the labelled uids
        self.copy = table_files(options.images, source_split="train")
        for file in self.copy:
            missing = [c for c in COPY_COLUMNS if c not in table_columns(file)]
            if missing:
                raise ZRewardInputError(str(file.path), f"is not a Pick-a-Pic file: no column {missing}")

    def rows(self, skip: int = 0) -> Iterator[SourceRow]:
        # matching needs all labels first (18k small entries), then one pass over the Pick-a-Pic copy
        return itertools.islice(self._rows(), skip, None)

    def _labels(self) -> tuple[list[SourceRow], dict[str, list[_Label]]]:
        bad: list[SourceRow] = []
        waiting: dict[str, list[_Label]] = {}
        for path, split in self.files:
            for number, payload in iter_tfrecord(path):
                if isinstance(payload, SourceProblem):
                    bad.append(SourceRow.malformed(path.name, number, None, payload.reason))
                    continue
                try:
                    label = self._label(path.name, number, split, parse_tf_example(payload))
                except (ProtobufError, ValueError) as exc:
                    bad.append(SourceRow.malformed(path.name, number, getattr(exc, "field", None), str(exc)))
                    continue
                waiting.setdefault(label.key, []).append(label)
        return bad, waiting

    def _label(self, file: str, number: int, split: str, features: dict[str, list[Any]]) -> _Label:
        names = features.get("filename") or []
        if len(names) != 1 or not isinstance(names[0], bytes):
            raise _FieldError("filename", "missing (one bytes value expected)")
        try:
            filename = names[0].decode("utf-8")
        except UnicodeDecodeError:
            raise _FieldError("filename", "not UTF-8") from None
        scores = {}
        for name in SCORES:
            values = features.get(name)
            if not values or len(values) != 1 or not isinstance(values[0], float):
                raise _FieldError(name, f"missing (one float expected, got {values!r})")
            scores[name] = values[0]
        original: dict[str, Any] = {"filename": filename}
        tokens = features.get("prompt_misalignment_label")
        if tokens and isinstance(tokens[0], bytes):
            original["prompt_misalignment_label"] = tokens[0].decode("utf-8", "replace")
        return _Label(file, number, split, PurePosixPath(filename).stem, scores, original)

    def _rows(self) -> Iterator[SourceRow]:
        bad, waiting = self._labels()
        yield from bad
        for file in self.copy:
            for _, batch in iter_table_batches(file, COPY_COLUMNS, batch_size=64):
                for entry in batch:
                    for side in (0, 1):
                        uid = entry.get(f"image_{side}_uid")
                        labels = waiting.pop(uid, None) if isinstance(uid, str) else None
                        for label in labels or ():
                            yield self._row(label, entry, side)
                if not waiting:
                    return
        for labels in waiting.values():
            for label in labels:
                copies = ", ".join(str(f.path) for f in self.copy)
                yield SourceRow.malformed(
                    label.file,
                    label.record,
                    "filename",
                    f"image {label.original['filename']!r} is not in the Pick-a-Pic copy ({copies})",
                )

    def _row(self, label: _Label, entry: dict[str, Any], side: int) -> SourceRow:
        data = image_bytes(entry.get(f"jpg_{side}"))
        if not isinstance(data, bytes):
            return SourceRow.malformed(
                label.file, label.record, "image", f"the Pick-a-Pic row of {label.key} holds no image bytes"
            )
        item = ImageItem(
            key=label.key,
            prompt=entry.get("caption"),
            image=data,
            split=label.split,
            scores=dict(label.scores),
            original=label.original,
        )
        return SourceRow(label.file, label.record, images=[item])


class _FieldError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
