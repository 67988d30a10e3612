"""The dataset format: loader, validator (one broken file per error kind), aggregation and pairs."""

import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from zreward_deploy.config import Rubric, ScoreScale
from zreward_deploy.data import (
    DatasetError,
    Record,
    aggregate_annotations,
    build_pairs,
    load_dataset,
    load_split,
    read_dataset,
    validate_dataset,
)
from zreward_deploy.errors import ZRewardInputError


def _line(i: int, prompt_id: str = "p0", **fields) -> dict:
    line = {
        "id": f"{prompt_id}_{i}",
        "prompt_id": prompt_id,
        "prompt": f"prompt {prompt_id}",
        "image": f"images/{prompt_id}_{i}.png",
        "scores": {"alignment": 3.0 + 0.5 * i},
        "annotations": {"alignment": [3.0, 3.5, 4.0]},
    }
    line.update(fields)
    return line


def _write(root: Path, splits: dict[str, list], absent: tuple[str, ...] = ()) -> Path:
    """Write split files (dict lines are JSON-encoded, str lines are written as is) and every image a
    parseable line names, except those in ``absent``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, lines in splits.items():
        texts = [json.dumps(x) if isinstance(x, dict) else x for x in lines]
        (root / f"{split}.jsonl").write_text("".join(t + "\n" for t in texts))
        for text in texts:
            try:
                image = json.loads(text).get("image")
            except (ValueError, AttributeError):
                continue
            if isinstance(image, str) and image not in absent:
                Image.new("RGB", (4, 4), (200, 10, 10)).save(root / image)
    return root


def _valid(root: Path) -> Path:
    return _write(
        root,
        {
            "train": [_line(0), _line(1), _line(0, "p1")],
            "val": [_line(0, "p2")],
            "test": [_line(0, "p3"), _line(1, "p3")],
        },
    )


# ------------------------------------------------------------------------------------------------ loading


def test_valid_dataset_loads(tmp_path):
    root = _valid(tmp_path)
    assert validate_dataset(root) == []
    data = load_dataset(root)
    assert [len(data[s]) for s in ("train", "val", "test")] == [3, 1, 2]
    r = data["train"][1]
    assert (r.id, r.prompt_id, r.split, r.line) == ("p0_1", "p0", "train", 2)
    assert r.image_path == root / "images" / "p0_1.png"
    assert r.scores == {"alignment": 3.5} and r.annotations == {"alignment": (3.0, 3.5, 4.0)}
    assert [x.id for x in load_split(root, "test")] == ["p3_0", "p3_1"]


def test_id_defaults_to_image_path_and_blank_lines_keep_line_numbers(tmp_path):
    line = _line(0)
    del line["id"]
    root = _write(tmp_path, {"test": ["", json.dumps(line), "   "]})
    (record,) = load_split(root, "test")
    assert record.id == "images/p0_0.png" and record.line == 2


def test_scores_and_annotations_are_optional(tmp_path):
    bare = {k: v for k, v in _line(0).items() if k not in ("scores", "annotations")}
    (record,) = load_split(_write(tmp_path, {"train": [bare]}), "train")
    assert record.dimensions == [] and record.human_score("alignment") is None


def test_custom_rubric_and_scale(tmp_path):
    root = _write(tmp_path, {"test": [_line(0, scores={"sharpness": 8.5}, annotations={})]})
    scale = ScoreScale(values=tuple(range(1, 10)), tokens=tuple("123456789"))
    assert validate_dataset(root, rubric=["sharpness"], scale=scale) == []
    problems = validate_dataset(root)  # default rubric and scale refuse both
    assert [p.field for p in problems] == ["scores.sharpness"]
    problems = validate_dataset(root, rubric=Rubric(), scale=scale)
    assert "unknown dimension 'sharpness'" in problems[0].reason


# ------------------------------------------------------------------------------------------------ validator

# (name, split -> lines, expected (split, line, field), words in the reason). Each dataset has one
# deliberately broken line (or file) and is otherwise valid.
BROKEN = [
    (
        "malformed_json",
        {"train": [_line(0), '{"id": "p0_1", "prompt_id": '], "test": [_line(0, "p3")]},
        ("train", 2, None),
        "malformed JSON",
    ),
    ("not_an_object", {"train": [_line(0), "[1, 2]"]}, ("train", 2, None), "JSON object"),
    (
        "missing_field",
        {"train": [_line(0), {k: v for k, v in _line(1).items() if k != "prompt"}]},
        ("train", 2, "prompt"),
        "missing required field",
    ),
    ("wrong_type", {"train": [_line(0, prompt_id=17)]}, ("train", 1, "prompt_id"), "non-empty string"),
    (
        "missing_image",
        {"train": [_line(0), _line(1, image="images/nowhere.png")]},
        ("train", 2, "image"),
        "missing image",
    ),
    (
        "score_out_of_scale",
        {"val": [_line(0, scores={"realism": 5.5})]},
        ("val", 1, "scores.realism"),
        "outside the scale [1.0, 5.0]",
    ),
    (
        "score_not_a_number",
        {"val": [_line(0, scores={"realism": "4"})]},
        ("val", 1, "scores.realism"),
        "number",
    ),
    (
        "score_nan",
        {"val": [json.dumps(_line(0)).replace('"alignment": 3.0', '"alignment": NaN')]},
        ("val", 1, "scores.alignment"),
        "finite",
    ),
    (
        "unknown_dimension",
        {"test": [_line(0, scores={"sharpness": 3.0})]},
        ("test", 1, "scores.sharpness"),
        "unknown dimension 'sharpness'",
    ),
    (
        "annotation_out_of_scale",
        {"test": [_line(0, annotations={"alignment": [3.0, 0.5, 4.0]})]},
        ("test", 1, "annotations.alignment[1]"),
        "outside the scale",
    ),
    (
        "empty_annotations",
        {"test": [_line(0, annotations={"alignment": []})]},
        ("test", 1, "annotations.alignment"),
        "non-empty list",
    ),
    ("scores_not_an_object", {"test": [_line(0, scores=[3.0])]}, ("test", 1, "scores"), "must be an object"),
    ("unknown_field", {"test": [_line(0, score={"alignment": 3.0})]}, ("test", 1, "score"), "unknown field"),
    (
        "duplicate_id",
        {"train": [_line(0), _line(1, id="p0_0")]},
        ("train", 2, "id"),
        "duplicate id 'p0_0' (first at train.jsonl:1)",
    ),
    (
        "duplicate_id_across_splits",
        {"train": [_line(0)], "test": [_line(0, "p3", id="p0_0")]},
        ("test", 1, "id"),
        "duplicate id",
    ),
    (
        "prompt_in_two_splits",
        {"train": [_line(0)], "val": [_line(1)]},
        ("val", 1, "prompt_id"),
        "also in train.jsonl:1",
    ),
    (
        "prompt_text_differs",
        {"train": [_line(0), _line(1, prompt="something else")]},
        ("train", 2, "prompt"),
        "different prompt text",
    ),
]


@pytest.mark.parametrize("name, splits, where, reason", BROKEN, ids=[b[0] for b in BROKEN])
def test_validator_names_file_line_and_field(tmp_path, name, splits, where, reason):
    root = _write(tmp_path, splits, absent=("images/nowhere.png",))
    problems = validate_dataset(root)
    assert len(problems) == 1, [str(p) for p in problems]
    (problem,) = problems
    split, line, field = where
    assert (problem.file, problem.line, problem.field) == (str(root / f"{split}.jsonl"), line, field)
    assert reason in problem.reason
    assert str(problem).startswith(f"{root / split}.jsonl:{line}: ")
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert info.value.problems == problems


def test_unreadable_image(tmp_path):
    root = _write(tmp_path, {"train": [_line(0)]})
    (root / "images" / "p0_0.png").write_bytes(b"not a png at all")
    (problem,) = validate_dataset(root)
    assert problem.field == "image" and "not a readable image" in problem.reason
    assert validate_dataset(root, check_images=False) == []


def test_no_split_files_and_missing_named_split(tmp_path):
    (empty,) = validate_dataset(tmp_path)
    assert "no split file found (expected train.jsonl, val.jsonl, test.jsonl)" in empty.reason
    root = _write(tmp_path / "d", {"train": [_line(0)]})
    assert validate_dataset(root) == []  # val/test absent is fine when not asked for
    (missing,) = validate_dataset(root, ["test"])
    assert missing.file == str(root / "test.jsonl")
    with pytest.raises(DatasetError, match="split file not found"):
        load_split(root, "test")
    (gone,) = validate_dataset(tmp_path / "nope")
    assert "does not exist" in gone.reason
    with pytest.raises(ZRewardInputError, match="unknown split"):
        validate_dataset(root, ["dev"])


def test_validator_reports_every_problem_in_one_run(tmp_path):
    root = _write(
        tmp_path,
        {
            "train": [
                _line(0, scores={"alignment": 9.0, "colour": 2.0}),  # two problems on one line
                "{oops",
                _line(2, image="images/missing.png"),
                _line(3),
                _line(4, id="p0_3"),
            ],
        },
        absent=("images/missing.png",),
    )
    problems = validate_dataset(root)
    assert [(p.line, p.field) for p in problems] == [
        (1, "scores.alignment"),
        (1, "scores.colour"),
        (2, None),
        (3, "image"),
        (5, "id"),
    ]
    with pytest.raises(DatasetError) as info:
        load_split(root, "train")
    err = info.value
    assert len(err.problems) == 5 and "5 problem(s)" in str(err) and "train.jsonl:2" in str(err)
    assert pickle.loads(pickle.dumps(err)).problems == err.problems  # survives multiprocessing


def test_read_dataset_returns_valid_records_beside_problems(tmp_path):
    root = _write(tmp_path, {"train": [_line(0), "{oops", _line(2)]})
    data, problems = read_dataset(root)
    assert [r.id for r in data["train"]] == ["p0_0", "p0_2"] and len(problems) == 1


# ------------------------------------------------------------------------------------------------ aggregation


@pytest.mark.parametrize(
    "annotations, expected",
    [
        ([3.0, 3.5, 4.0, 3.5], 3.5),  # drop 3.0 and 4.0 -> mean(3.5, 3.5)
        ([1.0, 5.0, 5.0, 2.0, 4.0], 11 / 3),  # sorted 1,2,4,5,5 -> drop 1 and one 5 -> (2+4+5)/3
        ([2.0, 4.0, 3.0], 3.0),  # three: the middle one
        ([2.0, 4.0], 3.0),  # fewer than 3: plain mean
        ([4.5], 4.5),
    ],
)
def test_aggregate_annotations(annotations, expected):
    assert aggregate_annotations(annotations) == pytest.approx(expected)


def test_aggregate_annotations_refuses_empty():
    with pytest.raises(ZRewardInputError, match="empty"):
        aggregate_annotations([])


def _rec(i: int, prompt_id: str, scores=None, annotations=None) -> Record:
    return Record(
        f"r{i}",
        prompt_id,
        "p",
        f"{i}.png",
        Path(f"{i}.png"),
        scores or {},
        {k: tuple(v) for k, v in (annotations or {}).items()},
    )


def test_human_score_sources():
    r = _rec(0, "a", scores={"alignment": 4.0}, annotations={"alignment": [1.0, 2.0, 3.0, 5.0]})
    assert r.human_score("alignment") == 2.5  # auto: trimmed mean of the annotations, (2+3)/2
    assert r.human_score("alignment", "scores") == 4.0
    assert r.human_score("realism") is None
    with pytest.raises(ZRewardInputError):
        r.human_score("alignment", "mean")


def test_build_pairs_same_prompt_same_dimension_different_score():
    records = [
        _rec(0, "a", scores={"alignment": 3.0, "realism": 2.0}),
        _rec(1, "b", scores={"alignment": 1.0}),
        _rec(2, "a", scores={"alignment": 3.0, "realism": 5.0}),
        _rec(3, "a", scores={"alignment": 4.0}),
        _rec(4, "a", annotations={"alignment": [3.0, 3.5, 3.5, 4.0]}),  # trimmed mean 3.5
    ]
    pairs = build_pairs(records)
    # alignment in prompt a: 0=3, 2=3, 3=4, 4=3.5 -> (0,3), (0,4), (2,3), (2,4), (3,4); (0,2) tied;
    # record 1 is alone in prompt b. realism: (0,2).
    got = [(p.dimension, p.a, p.b) for p in pairs]
    assert got == [
        ("alignment", 0, 3),
        ("alignment", 0, 4),
        ("alignment", 2, 3),
        ("alignment", 2, 4),
        ("alignment", 3, 4),
        ("realism", 0, 2),
    ]
    assert pairs[0].gap == -1.0
    margin = build_pairs(records, ["alignment"], min_gap=0.5)  # |gap| > 0.5 only: 3 vs 4
    assert [(p.a, p.b) for p in margin] == [(0, 3), (2, 3)]
    assert [(p.a, p.b) for p in build_pairs(records, ["alignment"], source="scores")] == [(0, 3), (2, 3)]


def test_build_pairs_treats_float_residue_as_a_tie():
    # (1.1 + 2.2) / 2 = 1.6500000000000001 in binary floating point, 1.65 as written: the same score
    records = [_rec(0, "a", annotations={"alignment": [1.1, 2.2]}), _rec(1, "a", scores={"alignment": 1.65})]
    assert records[0].human_score("alignment") != records[1].human_score("alignment")
    assert build_pairs(records) == []
