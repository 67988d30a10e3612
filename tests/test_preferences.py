"""Preference records (judgements without scores, docs/data.md "Preference records"): the line format and
its validator, the loaders, the conversion of scored pairs, and `zreward eval`'s preference HPA on
hand-made judgements whose expected values are computed by hand in the comments."""

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from zreward_deploy.cli import main
from zreward_deploy.config import Rubric, ScoreScale
from zreward_deploy.data import (
    DatasetError,
    Preference,
    load_dataset,
    load_preferences,
    load_split,
    preferences_from_scores,
    read_preferences,
    validate_dataset,
    write_preference_dataset,
)
from zreward_deploy.errors import ZRewardInputError
from zreward_deploy.evaluation import evaluate, format_table, metrics_json
from zreward_deploy.metrics import binomial_interval, preference_hpa


def _record(id_: str, prompt_id: str, **fields) -> dict:
    return {
        "id": id_,
        "prompt_id": prompt_id,
        "prompt": f"prompt {prompt_id}",
        "image": f"images/{id_}.png",
        **fields,
    }


def _write(root: Path, splits: dict[str, list[dict]], preferences: dict[str, list] | None = None) -> Path:
    """Split files, one 4x4 image per record, and preference files (dict lines JSON-encoded, str lines
    written as they are)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, lines in splits.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        for line in lines:
            Image.new("RGB", (4, 4), (200, 10, 10)).save(root / line["image"])
    for split, lines in (preferences or {}).items():
        texts = [json.dumps(x) if isinstance(x, dict) else x for x in lines]
        (root / f"{split}.preferences.jsonl").write_text("".join(t + "\n" for t in texts))
    return root


def _pref(a: str, b: str, dimension: str = "realism", preferred: str = "a", **fields) -> dict:
    return {"a": a, "b": b, "dimension": dimension, "preferred": preferred, **fields}


SPLITS = {
    "train": [_record("t0", "p0"), _record("t1", "p0"), _record("t2", "p1")],
    "test": [_record("x0", "q0"), _record("x1", "q0"), _record("x2", "q0"), _record("y0", "q1")],
}


# ------------------------------------------------------------------------------------------ format


def test_valid_preference_file_loads_with_defaults(tmp_path):
    root = _write(
        tmp_path,
        SPLITS,
        {
            "test": [
                _pref("x0", "x1", "realism", "b", id="j1", meta={"source": "hand", "original": {"k": [1]}}),
                _pref("x1", "x2", "overall", "tie"),
            ]
        },
    )
    assert validate_dataset(root) == []
    prefs = load_preferences(root, "test")
    assert prefs == [
        Preference("j1", "x0", "x1", "realism", "b", {"source": "hand", "original": {"k": [1]}}, "test", 1),
        Preference("x1|x2|overall", "x1", "x2", "overall", "tie", {}, "test", 2),
    ]
    assert [p.target for p in prefs] == [0.0, 0.5]
    # given the split's records, the same judgements without reading the split file again
    assert load_preferences(root, "test", records=load_split(root, "test")) == prefs
    # a split without a preference file has none; the records need no scores
    assert load_preferences(root, "train") == []
    records, judged, problems = read_preferences(root)
    assert problems == [] and judged == {"test": prefs} and len(records["test"]) == 4


def test_data_check_counts_the_judgements(tmp_path, capsys):
    root = _write(tmp_path, SPLITS, {"test": [_pref("x0", "x1"), _pref("x1", "x2", preferred="tie")]})
    (root / "train.preferences.jsonl").write_text(json.dumps(_pref("t0", "t1", "overall", "b")) + "\n")
    assert main(["data", "check", str(root)]) == 0
    assert capsys.readouterr().out.strip().endswith("; 3 judgements (1 ties)")


def test_every_problem_is_reported_with_file_line_and_field(tmp_path):
    root = _write(
        tmp_path,
        SPLITS,
        {
            "test": [
                _pref("x0", "x1", id="j1"),  # 1: fine
                _pref("x0", "x0"),  # 2: the same record twice
                _pref("x0", "nope"),  # 3: unknown id
                _pref("x0", "t0"),  # 4: a record of another split
                _pref("x0", "y0"),  # 5: another prompt
                _pref("x0", "x1", "realsm", "A", extra=1),  # 6: three problems
                _pref("x1", "x2", id="shared"),  # 7: an id train's file has (ids are dataset-wide)
                "not json",  # 8
                '{"a": "x0"}',  # 9: three missing fields
                '{"a": "x0", "b": "x1", "dimension": "realism", "preferred": "a", "meta": {"v": NaN}}',  # 10
                _pref("x0", "x1", meta=[1]),  # 11
            ],
            "train": [_pref("t0", "t1", id="shared")],  # read first: splits in train, val, test order
            "val": [_pref("v0", "v1")],  # no val.jsonl
        },
    )
    test, val = (str(root / f"{s}.preferences.jsonl") for s in ("test", "val"))
    found = [(p.file, p.line, p.field, p.reason) for p in validate_dataset(root)]
    assert [(f, n, fld) for f, n, fld, _ in found] == [
        (val, None, None),
        (test, 2, "b"),
        (test, 3, "b"),
        (test, 4, "b"),
        (test, 5, "b"),
        (test, 6, "extra"),
        (test, 6, "dimension"),
        (test, 6, "preferred"),
        (test, 7, "id"),
        (test, 8, None),
        (test, 9, "b"),
        (test, 9, "dimension"),
        (test, 9, "preferred"),
        (test, 10, "meta.v"),
        (test, 11, "meta"),
    ]
    reasons = [r for *_, r in found]
    assert "there is no val.jsonl" in reasons[0]
    assert "is the same record as a ('x0')" in reasons[1]
    assert "unknown record id 'nope': no line of test.jsonl has it" in reasons[2]
    assert "record 't0' is in train.jsonl, not test.jsonl" in reasons[3]
    assert "prompt_id 'q1', but a ('x0') has 'q0'" in reasons[4]
    assert "unknown field" in reasons[5] and "unknown dimension 'realsm'" in reasons[6]
    assert "must be one of ['a', 'b', 'tie'], got 'A'" in reasons[7]
    assert "duplicate preference id 'shared' (first at train.preferences.jsonl:1)" in reasons[8]
    assert "malformed JSON" in reasons[9] and reasons[10] == "missing required field"
    assert "NaN is not valid JSON" in reasons[13] and reasons[14] == "must be an object"
    # the loaders refuse the same data with the same list, naming the offending lines
    with pytest.raises(DatasetError) as exc:
        load_split(root, "test")
    assert "test.preferences.jsonl:2: b:" in str(exc.value) and len(exc.value.problems) == 13
    with pytest.raises(DatasetError):
        load_preferences(root, "test", records=load_split(root, "train"))  # wrong records: unknown ids
    # read_preferences keeps what is valid: line 1 only (read alone, line 7's id is no duplicate)
    _, judged, problems = read_preferences(root, ["test"])
    assert [p.line for p in judged["test"]] == [1, 7] and len(problems) == 13


def test_bad_bytes_and_records_with_problems(tmp_path):
    lines = [*SPLITS["test"], {**_record("z0", "q0"), "scores": {"realism": 9.0}}]
    root = _write(tmp_path, {"test": lines}, {"test": [_pref("x0", "z0")]})
    with (root / "test.preferences.jsonl").open("ab") as f:
        f.write(b'{"a": "x0", "b": "x1", "dimension": "realism", "preferred": "\xff"}\n')
    found = [(Path(p.file).name, p.line, p.field) for p in validate_dataset(root)]
    # z0's own problem is reported; the judgement naming it is not reported a second time
    assert found == [("test.jsonl", 5, "scores.realism"), ("test.preferences.jsonl", 2, None)]


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=6)
    | st.sampled_from(["x0", "x1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
_LINE = st.one_of(
    st.binary(max_size=60),
    st.dictionaries(
        st.sampled_from(["a", "b", "dimension", "preferred", "id", "meta", "extra"]), _JSON, max_size=6
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(line=_LINE)
def test_any_preference_line_is_reported_never_raised(tmp_path, line):
    """Whatever a preference line holds, the check reports it on its line (or accepts it); the valid line
    beside it is kept."""
    root = _write(tmp_path / "fuzz", SPLITS)
    valid = json.dumps(_pref("x0", "x1", id="kept")).encode()
    (root / "test.preferences.jsonl").write_bytes(valid + b"\n" + line.replace(b"\n", b" ") + b"\n")
    _, judged, problems = read_preferences(root, ["test"])
    assert all(p.line == 2 for p in problems), problems
    assert judged["test"][0].id == "kept"


def test_datasets_without_preference_files_are_unchanged(tmp_path):
    root = _write(tmp_path, SPLITS)
    assert validate_dataset(root) == [] and read_preferences(root)[1] == {}
    assert [r.id for r in load_dataset(root)["test"]] == ["x0", "x1", "x2", "y0"]


# ---------------------------------------------------------------------------------------- conversion


def _scored() -> list:
    root_lines = [
        _record("a0", "a", scores={"realism": 2.0, "alignment": 4.0}),
        _record("a1", "a", scores={"realism": 4.0, "alignment": 4.0}),
        _record("a2", "a", scores={"realism": 2.5}),
        _record("b0", "b", scores={"realism": 3.0, "alignment": 1.0}),
        _record("b1", "b", scores={"realism": 3.0, "alignment": 2.0}),
    ]
    return root_lines


def test_preferences_from_scores(tmp_path):
    records = load_split(_write(tmp_path, {"test": _scored()}), "test")
    got = [(p.a, p.b, p.dimension, p.preferred) for p in preferences_from_scores(records)]
    # realism: a0<a1 (b), a0<a2 (b), a1>a2 (a); b0 = b1 is a tie, left out; alignment: a0 = a1 tie, b0<b1
    assert got == [
        ("a0", "a1", "realism", "b"),
        ("a0", "a2", "realism", "b"),
        ("a1", "a2", "realism", "a"),
        ("b0", "b1", "alignment", "b"),
    ]
    tied = preferences_from_scores(records, ["alignment"], ties=True)
    assert [(p.a, p.b, p.preferred) for p in tied] == [("a0", "a1", "tie"), ("b0", "b1", "b")]
    assert tied[0].id == "a0|a1|alignment" and tied[0].meta["scores"] == [4.0, 4.0]
    # min_gap 0.5 keeps gaps > 0.5: realism a0/a1 (2.0) and a1/a2 (1.5), alignment b0/b1 (1.0); a0/a2 (0.5) is out
    clear = preferences_from_scores(records, ["realism", "alignment"], min_gap=0.5)
    assert [(p.a, p.b) for p in clear] == [("a0", "a1"), ("a1", "a2"), ("b0", "b1")]
    # overall = the rubric-weighted mean over every dimension; weights 3:1 on realism:alignment here
    rubric = Rubric(
        [{"name": "realism", "instruction": "r", "weight": 3.0}, {"name": "alignment", "instruction": "a"}]
    )
    overall = preferences_from_scores(records, ["overall"], rubric=rubric)
    # a0: .75*2 + .25*4 = 2.5, a1: .75*4 + .25*4 = 4 (a2 lacks alignment); b0: 2.5, b1: 2.75
    assert [(p.a, p.b, p.preferred) for p in overall] == [("a0", "a1", "b"), ("b0", "b1", "b")]
    with pytest.raises(ZRewardInputError, match="min_gap"):
        preferences_from_scores(records, min_gap=-1)


def test_write_preference_dataset(tmp_path):
    src = _write(
        tmp_path / "src", {"test": _scored(), "train": [_record("c0", "c", scores={"realism": 1.0})]}
    )
    lines: list[tuple[int, int]] = []
    summary = write_preference_dataset(
        src, tmp_path / "out", ["realism"], progress=lambda d, t: lines.append((d, t))
    )
    out = tmp_path / "out"
    assert summary["splits"] == {
        "test": {"records": 5, "preferences": 3, "ties": 0},
        "train": {"records": 1, "preferences": 0, "ties": 0},
    }
    assert lines[-1] == (6, 6) and sum(summary["images"].values()) == 6
    assert validate_dataset(out) == []
    records = load_split(out, "test")
    assert all(not r.scores and not r.annotations for r in records)
    assert [r.id for r in records] == ["a0", "a1", "a2", "b0", "b1"]
    if summary["images"]["linked"]:  # the same file, not a copy
        assert os.stat(out / "images/a0.png").st_ino == os.stat(src / "images/a0.png").st_ino
    prefs = load_preferences(out, "test")
    assert [(p.a, p.b, p.preferred) for p in prefs] == [
        ("a0", "a1", "b"),
        ("a0", "a2", "b"),
        ("a1", "a2", "a"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temporary folder left
    # a non-empty output is refused unless overwrite; unknown dimensions are refused before anything
    with pytest.raises(ZRewardInputError, match="not empty"):
        write_preference_dataset(src, out, ["realism"])
    with pytest.raises(ZRewardInputError, match="realsm"):
        write_preference_dataset(src, tmp_path / "other", ["realsm"])
    write_preference_dataset(src, out, ["alignment"], overwrite=True)
    assert [p.dimension for p in load_preferences(out, "test")] == ["alignment"]


def test_scored_pairs_import_writes_ties_on_request(tmp_path, capsys):
    src = _write(tmp_path / "src", {"test": _scored()})
    for flags, out, expected in (
        ([], "plain", "test: 5 records, 3 preferences (0 ties)"),  # realism: b0 = b1 left out
        (["--ties"], "tied", "test: 5 records, 4 preferences (1 ties)"),  # ... kept as a tie
    ):
        args = ["data", "import", "scored-pairs", str(src), "--out", str(tmp_path / out), "--quiet"]
        assert main([*args, "--dimension", "realism", *flags]) == 0
        assert f"({expected})" in capsys.readouterr().out
    last = load_preferences(tmp_path / "tied", "test")[-1]
    assert (last.a, last.b, last.preferred) == ("b0", "b1", "tie")


# ------------------------------------------------------------------------------------------ evaluation


class FakeScorer:
    """A two-hot distribution on a fixed μ per (image name, dimension) (default 3.0), so μ is exact."""

    def __init__(self, mu: dict[str, dict[str, float]], fail: tuple[str, ...] = ()):
        self.mu, self.fail, self.calls = mu, fail, []
        scale, rubric = ScoreScale(), Rubric()
        self.config = SimpleNamespace(get_score_scale=lambda: scale, get_rubric=lambda: rubric)

    def score(self, images, prompts, dimensions=None, errors="raise"):
        scale, dims = self.config.get_score_scale(), list(dimensions)
        self.calls.append(([Path(i).name for i in images], dims))
        probs = torch.full((len(images), len(dims), scale.num_scores), math.nan)
        failed = {}
        for b, image in enumerate(images):
            name = Path(image).name
            if name in self.fail:
                failed[b] = ZRewardInputError(image, "cannot be decoded")
                continue
            for d, dim in enumerate(dims):
                probs[b, d] = scale.soft_target(self.mu.get(name, {}).get(dim, 3.0))
        mean = (probs * scale.values_tensor()).sum(-1)
        return SimpleNamespace(
            probs=probs, mean=mean, std=torch.zeros_like(mean), reward=mean.mean(-1), dimensions=dims,
            values=list(scale.values), errors=failed,
        )  # fmt: skip


MU = {
    "x0.png": {"realism": 4.0, "alignment": 2.0},  # overall (mean of 4 dims, others 3): 3.0
    "x1.png": {"realism": 2.0, "alignment": 5.0},  # overall 3.25
    "x2.png": {"realism": 2.0, "aesthetics": 1.0},  # overall 2.25
    "y0.png": {"realism": 3.5},
    "y1.png": {"realism": 3.5},
}
JUDGEMENTS = [
    _pref("x0", "x1", "realism", "a"),  # 4 > 2: right
    _pref("x1", "x2", "realism", "a"),  # 2 = 2: a predicted tie is wrong
    _pref("x0", "x2", "realism", "b"),  # 4 > 2 but b preferred: wrong
    _pref("y0", "y1", "realism", "tie"),  # a human tie: skipped, counted
    _pref("x0", "x1", "overall", "b"),  # 3.0 < 3.25: right
    _pref("x2", "x1", "overall", "b"),  # 2.25 < 3.25: right
    _pref("x0", "x2", "overall", "a"),  # 3.0 > 2.25: right
    _pref("x1", "x2", "alignment", "a"),  # 5 > 3: right
]


def _judged(root: Path) -> Path:
    records = [_record(n, "q0") for n in ("x0", "x1", "x2")] + [_record(n, "q1") for n in ("y0", "y1")]
    return _write(root, {"test": records}, {"test": JUDGEMENTS})


def test_preference_hpa_by_hand(tmp_path):
    root = _judged(tmp_path)
    records = load_split(root, "test")
    scorer = FakeScorer(MU)
    ev = evaluate(scorer, records, batch_size=2, preferences=load_preferences(root, "test"))
    p = ev.metrics["preferences"]
    per = p["per_dimension"]
    assert (per["realism"]["n_pairs"], per["realism"]["n_ties"], per["realism"]["hpa"]) == (3, 1, 1 / 3)
    assert (per["overall"]["n_pairs"], per["overall"]["hpa"]) == (3, 1.0)
    assert (per["alignment"]["n_pairs"], per["alignment"]["hpa"]) == (1, 1.0)
    assert (p["n_preferences"], p["n_pairs"], p["n_ties"], p["hpa"]) == (8, 7, 1, 5 / 7)
    # Wilson 95 % of 5/7 (z = 1.96): centre (5/7 + z²/14) / (1 + z²/7) = 0.6450, half-width 0.2854
    assert p["hpa_ci95"] == pytest.approx([0.3589, 0.9178], abs=2e-4)
    assert per["overall"]["hpa_ci95"][1] == 1.0  # 3/3: the upper end is exactly 1
    # a preference-only split: only judged records are scored, all rubric dimensions in one pass each
    assert [dims for _, dims in scorer.calls] == [["alignment", "realism", "aesthetics", "plausibility"]] * 3
    assert "hpa" not in ev.metrics and ev.metrics["n_records"] == 5
    table = format_table(ev.metrics).splitlines()
    assert table[0].split() == ["preferences", "pairs", "ties", "HPA", "95%", "CI"]
    assert table[2].split()[:4] == ["realism", "3", "1", "0.333"]
    assert table[5].split()[:4] == ["pooled", "7", "1", "0.714"]
    assert json.loads(metrics_json(ev.metrics))["preferences"]["n_ties"] == 1


def test_failed_items_limit_and_dimensions(tmp_path):
    root = _judged(tmp_path)
    records, prefs = load_split(root, "test"), load_preferences(root, "test")
    p = evaluate(FakeScorer(MU, fail=("x2.png",)), records, preferences=prefs).metrics["preferences"]
    # the 5 judgements naming x2 have an unscored side; left: x0/x1 realism (right), overall (right), tie
    assert (p["n_unscored"], p["n_pairs"], p["n_ties"], p["hpa"]) == (5, 2, 1, 1.0)
    assert "5 judgement(s) have a side that could not be scored" in format_table({"preferences": p})
    p = evaluate(FakeScorer(MU), records[:2], preferences=prefs).metrics["preferences"]  # --limit 2
    assert (p["n_left_out"], p["n_pairs"]) == (6, 2)
    assert "6 judgement(s) left out" in format_table({"preferences": p})
    p = evaluate(FakeScorer(MU), records, dimensions=["alignment"], preferences=prefs).metrics["preferences"]
    assert list(p["per_dimension"]) == ["overall", "alignment"] and p["n_left_out"] == 4


def test_scored_metrics_are_unchanged_by_judgements(tmp_path):
    lines = [
        _record("x0", "q0", scores={"realism": 2.0}),
        _record("x1", "q0", scores={"realism": 4.0}),
        _record("x2", "q0", scores={"realism": 1.0}),
    ]
    root = _write(tmp_path, {"test": lines}, {"test": [_pref("x0", "x1", "realism", "a")]})
    records, prefs = load_split(root, "test"), load_preferences(root, "test")
    plain, scorer = evaluate(FakeScorer(MU), records), FakeScorer(MU)
    both = evaluate(scorer, records, preferences=prefs)
    assert {k: v for k, v in both.metrics.items() if k != "preferences"} == plain.metrics
    assert len(scorer.calls) == 1  # the judgement reused the scored records' μ: one scoring pass
    assert both.metrics["preferences"]["hpa"] == 1.0  # 4 > 2, a preferred
    assert "preferences" in format_table(both.metrics) and "PLCC" in format_table(both.metrics)


def test_wilson_interval_and_preference_hpa_edges():
    # 3/4: the textbook Wilson interval (0.301, 0.954); 0/n starts at exactly 0
    assert binomial_interval(3, 4) == pytest.approx((0.3006, 0.9544), abs=1e-4)
    assert binomial_interval(0, 5)[0] == 0.0 and math.isnan(binomial_interval(0, 0)[0])
    m = preference_hpa([1.0, float("nan")], [2.0, 1.0], [0.5, 1.0])
    assert m.n == 0 and math.isnan(m.value) and "no non-tie" in m.undefined


def test_zreward_eval_reports_preferences(tmp_path, tiny_dir, capsys):
    root = _judged(tmp_path / "d")
    assert main(["eval", "--model", str(tiny_dir), "--data", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "5 items, 8 judgements" in out and "preferences  pairs" in out and "pooled" in out
    assert main(["eval", "--model", str(tiny_dir), "--data", str(root), "--json", "--limit", "3"]) == 0
    report = json.loads(capsys.readouterr().out)["preferences"]
    assert report["n_left_out"] == 1 and report["n_preferences"] == 7  # y0/y1 cut by --limit 3
    assert report["n_pairs"] + report["n_ties"] == 7
    (root / "test.preferences.jsonl").write_text(
        '{"a": "x0", "b": "x0", "dimension": "realism", "preferred": "a"}\n'
    )
    assert main(["eval", "--model", str(tiny_dir), "--data", str(root), "--quiet"]) == 2
    assert "test.preferences.jsonl:1: b: is the same record as a" in capsys.readouterr().err
