"""HPDv2, the Human Preference Dataset v2 (Wu et al. 2023, arXiv:2306.09341): 798k pairwise choices on
430k images of 107k prompts; pairs for training, full rankings for the test split.

Format (github.com/tgxs002/HPSv2 README, "Human Preference Dataset v2", and the dataset card of
``ymhao/HPDv2``): a folder with ``train/`` and ``test/`` image folders and two JSON arrays.
``train.json``: ``{"human_preference": list[int] (1 for the preferred image), "prompt": str,
"file_path": list[str] (relative to train/), "user_hash": str}``. ``test.json``: ``{"prompt": str,
"image_path": list[str] (relative to test/), "rank": list[int] (the averaged ranking, 1 = best),
"raw_annotations": list[{"rank": list[int], "user_hash": str}]}`` (the HPSv2 README spells it
``raw_annotation``; both are read). Lower rank is better (HPSv2's ``evaluate_rank`` compares a
predicted ordering, best first, to ``rank``).

Each image becomes a record without scores; each train entry one judgement, each test entry one
judgement per pair of its ranking, on ``overall``. Ties in a ranking (equal averaged ranks) become
``"tie"`` judgements. For a test pair the per-annotator votes (how many raw rankings put a above b, b
above a, or level) are kept in its ``meta.original.votes``: the soft target the set publishes. The test
split is read first, so a prompt in both splits stays in test.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from ...errors import ZRewardInputError
from .base import ImageItem, Importer, Judgement, Preferred, RowError, SourceOptions, SourceRow, require_path
from .mapping import FieldSpec
from .sources import SourceProblem, iter_json_elements


class HPDv2Importer(Importer):
    name = "hpdv2"
    prefix = "hpdv2"
    title = "HPDv2"
    own_splits = True
    source_doc = "github.com/tgxs002/HPSv2 (README); huggingface.co/datasets/ymhao/HPDv2 (card)"
    fields: ClassVar[tuple[FieldSpec, ...]] = (
        FieldSpec(
            "preference",
            "preference",
            default="overall",
            why="train human_preference and test rank are whole-image choices",
        ),
    )

    def __init__(self, src: Path, options: SourceOptions):
        super().__init__(src, options)
        require_path(src, "the HPDv2 folder")
        if not src.is_dir():
            raise ZRewardInputError(
                str(src), "expected the HPDv2 folder (train.json, test.json, train/, test/)"
            )
        self.images_root = options.images or src
        self.files = [
            (split, src / f"{split}.json") for split in ("test", "train") if split in options.splits
        ]
        self.files = [(split, path) for split, path in self.files if path.is_file()]
        if not self.files:
            raise ZRewardInputError(
                str(src), "holds neither train.json nor test.json (of the splits asked for)"
            )

    def rows(self, skip: int = 0) -> Iterator[SourceRow]:
        rows = (
            self._row(split, path.name, number, entry)
            for split, path in self.files
            for number, entry in iter_json_elements(path)
        )
        return itertools.islice(rows, skip, None)

    def _row(self, split: str, file: str, number: int, entry: Any) -> SourceRow:
        if isinstance(entry, SourceProblem):
            return SourceRow.malformed(file, number, None, entry.reason)
        try:
            if not isinstance(entry, dict):
                raise RowError(None, f"an entry must be an object, got {type(entry).__name__}")
            if split == "train":
                paths = _strings(entry, "file_path")
                images = self._images(split, entry, paths)
                judgements = [_train_judgement(entry, [i.key for i in images])]
            else:
                paths = _strings(entry, "image_path")
                images = self._images(split, entry, paths)
                judgements = _test_judgements(entry, [i.key for i in images])
        except RowError as exc:
            return SourceRow(file, number, error=exc)
        return SourceRow(file, number, images=images, judgements=judgements)

    def _images(self, split: str, entry: dict[str, Any], paths: list[str]) -> list[ImageItem]:
        if len(paths) < 2:
            raise RowError(
                "image_path" if split == "test" else "file_path", f"needs at least 2 images, got {len(paths)}"
            )
        items = []
        for rel in paths:
            pure = PurePosixPath(rel)
            if pure.is_absolute() or ".." in pure.parts:
                raise RowError("image", f"image path {rel!r} leaves the {split}/ folder")
            items.append(
                ImageItem(
                    key=f"{split}-{pure.with_suffix('')}".replace("/", "-"),
                    prompt=entry.get("prompt"),
                    image=self.images_root / split / rel,
                    split=split,
                    original={"file": rel},
                )
            )
        return items


def _strings(entry: dict[str, Any], name: str) -> list[str]:
    value = entry.get(name)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RowError(name, f"must be a list of file names, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _train_judgement(entry: dict[str, Any], keys: list[str]) -> Judgement:
    choice = entry.get("human_preference")
    if (
        not isinstance(choice, list)
        or len(choice) != len(keys)
        or any(c not in (0, 1) or isinstance(c, bool) for c in choice)
        or sum(choice) != 1
        or len(keys) != 2
    ):
        raise RowError("human_preference", f"must mark one of the 2 images with 1, got {_short(choice)}")
    preferred: Preferred = "a" if choice[0] == 1 else "b"
    original = {"human_preference": choice, "user_hash": entry.get("user_hash")}
    return Judgement(keys[0], keys[1], "preference", preferred, original)


def _test_judgements(entry: dict[str, Any], keys: list[str]) -> list[Judgement]:
    rank = entry.get("rank")
    if (
        not isinstance(rank, list)
        or len(rank) != len(keys)
        or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rank)
    ):
        raise RowError("rank", f"must be one number per image ({len(keys)}), got {_short(rank)}")
    raw = entry.get("raw_annotations", entry.get("raw_annotation")) or []
    rankings = [
        a["rank"]
        for a in (raw if isinstance(raw, list) else [])
        if isinstance(a, dict)
        and isinstance(a.get("rank"), list)
        and len(a["rank"]) == len(keys)
        and all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in a["rank"])
    ]
    judgements = []
    for i, j in itertools.combinations(range(len(keys)), 2):
        preferred: Preferred = "tie" if rank[i] == rank[j] else "a" if rank[i] < rank[j] else "b"
        original: dict[str, Any] = {"rank": [rank[i], rank[j]]}
        if rankings:
            votes = {"a": 0, "b": 0, "tie": 0}
            for r in rankings:
                votes["tie" if r[i] == r[j] else "a" if r[i] < r[j] else "b"] += 1
            original["votes"] = votes
        judgements.append(Judgement(keys[i], keys[j], "preference", preferred, original))
    return judgements
