"""EvalMuse-40K (Han et al. 2024, arXiv:2412.18150): image-text alignment of 40k generated images, rated
by several annotators each.

Format (the dataset card of ``DY-Evalab/EvalMuse`` on the HF hub and its ``dataset_info`` features):
``train_list.json``, a JSON array of ``{"prompt_id": str, "prompt": str, "type": str, "img_path": str,
"total_score": list[int] (one 1-5 alignment rating per annotator), "element_score": {element: list of
0/1} (a string in the HF features), "promt_meaningless": list[int], "split_confidence": list[int],
"attribute_confidence": list[int], "fidelity_label": list[str]}``; images from ``images.zip`` (its
``img_path`` is relative to the folder the zip is unpacked in). ``test.json`` has no ratings yet
("annotations will be available later") and is not imported.

Default mapping: ``total_score`` -> alignment, as per-annotator ``annotations`` (mapped 1-5 onto the
model's scale); the record's ``scores.alignment`` is the package's aggregate of them (drop the highest and
the lowest, then the mean: docs/data.md §1). The element scores, the meaningless-prompt votes and the
fidelity labels are kept in ``meta.original``. No labelled split besides train: prompts are split by
hash of the set's ``prompt_id``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from ...errors import ZRewardInputError
from .base import ImageItem, Importer, SourceOptions, SourceRow, find_file, resolve_image
from .mapping import FieldSpec
from .sources import SourceProblem, iter_json_elements

KEPT = (
    "type",
    "element_score",
    "promt_meaningless",
    "split_confidence",
    "attribute_confidence",
    "fidelity_label",
)


class EvalMuseImporter(Importer):
    name = "evalmuse-40k"
    prefix = "evalmuse"
    title = "EvalMuse-40K"
    own_splits = False
    source_doc = "huggingface.co/datasets/DY-Evalab/EvalMuse (card)"
    fields: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec("total_score", "annotations", 1.0, 5.0, "alignment", why="per-annotator alignment ratings"),
    )

    def __init__(self, src: Path, options: SourceOptions):
        super().__init__(src, options)
        self.file = find_file(src, ["train_list.json"], "EvalMuse train_list.json")
        base = self.file.parent
        self.image_dirs = [options.images] if options.images else [base, base / "images"]
        if options.images is not None and not options.images.is_dir():
            raise ZRewardInputError(str(options.images), "is not a folder of images")

    def notes(self) -> list[str]:
        test = self.file.parent / "test.json"
        return [f"not read: {test.name} (no ratings published for it)"] if test.is_file() else []

    def rows(self, skip: int = 0) -> Iterator[SourceRow]:
        name = self.file.name
        for number, entry in iter_json_elements(self.file):
            if number <= skip:
                continue
            yield self._row(name, number, entry)

    def _row(self, name: str, number: int, entry: Any) -> SourceRow:
        if isinstance(entry, SourceProblem):
            return SourceRow.malformed(name, number, None, entry.reason)
        if not isinstance(entry, dict):
            return SourceRow.malformed(
                name, number, None, f"an element must be an object, got {type(entry).__name__}"
            )
        prompt_id = entry.get("prompt_id")
        if (
            not isinstance(prompt_id, (str, int))
            or isinstance(prompt_id, bool)
            or str(prompt_id).strip() == ""
        ):
            return SourceRow.malformed(
                name, number, "prompt_id", f"must be a non-empty string, got {prompt_id!r}"
            )
        rel = entry.get("img_path")
        if not isinstance(rel, str) or not rel:
            return SourceRow.malformed(name, number, "img_path", f"must be a file path, got {rel!r}")
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts:
            return SourceRow.malformed(name, number, "img_path", f"{rel!r} leaves the image folder")
        image = resolve_image([d / rel for d in self.image_dirs])
        if image is None:
            where = " or ".join(str(d) for d in self.image_dirs)
            return SourceRow.malformed(name, number, "image", f"missing image: no {rel} in {where}")
        original = {k: entry[k] for k in KEPT if k in entry}
        if isinstance(original.get("element_score"), str):  # the HF features type it as a string
            with contextlib.suppress(json.JSONDecodeError):
                original["element_score"] = json.loads(original["element_score"])
        original["img_path"] = rel
        item = ImageItem(
            key=str(pure.with_suffix("")).replace("/", "-"),
            prompt=entry.get("prompt"),
            image=image,
            prompt_key=str(prompt_id),
            annotations={"total_score": entry.get("total_score")},
            original=original,
        )
        return SourceRow(name, number, images=[item])
