"""zreward_deploy.evaluation against a fake scorer whose predictions are known exactly."""

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from zreward_deploy.config import Rubric, ScoreScale
from zreward_deploy.data import load_split
from zreward_deploy.errors import InvalidImageError, MissingDependencyError, UnknownDimensionError
from zreward_deploy.evaluation import evaluate, format_table, metrics_json, write_per_item, write_plots


class FakeScorer:
    """Puts a two-hot distribution on a predicted score per (image file name, dimension), so μ equals it
    exactly; records every call. Images named in ``fail`` are refused like unreadable files."""

    def __init__(self, predictions: dict[str, dict[str, float]], fail: tuple[str, ...] = ()):
        self.predictions = predictions
        self.fail = fail
        self.calls: list[tuple[list[str], list[str]]] = []
        scale, rubric = ScoreScale(), Rubric()
        self.config = SimpleNamespace(get_score_scale=lambda: scale, get_rubric=lambda: rubric)

    def score(self, images, prompts, dimensions=None, errors="raise"):
        assert errors == "collect"
        dims = list(dimensions)
        self.calls.append(([Path(i).name for i in images], dims))
        scale = self.config.get_score_scale()
        probs = torch.full((len(images), len(dims), scale.num_scores), math.nan)
        failures = {}
        for b, image in enumerate(images):
            name = Path(image).name
            if name in self.fail:
                failures[b] = InvalidImageError(image, "cannot be decoded")
                continue
            for d, dim in enumerate(dims):
                probs[b, d] = scale.soft_target(self.predictions[name].get(dim, 3.0))
        values = scale.values_tensor()
        mean = (probs * values).sum(-1)
        std = ((probs * values**2).sum(-1) - mean**2).clamp_min(0).sqrt()
        return SimpleNamespace(
            probs=probs,
            mean=mean,
            std=std,
            reward=mean.mean(-1),
            dimensions=dims,
            values=list(scale.values),
            errors=failures,
        )


def _dataset(root: Path) -> Path:
    """Prompt a: 3 images; prompt b: 2 images. Alignment from annotations (3 each: ŝ = the middle one),
    realism from scores only, on some items."""
    lines = [
        ("a0", "a", {"realism": 2.0}, {"alignment": [1.0, 2.0, 4.0]}),  # ŝ_al = 2
        ("a1", "a", {"realism": 4.0}, {"alignment": [3.0, 3.5, 5.0]}),  # ŝ_al = 3.5
        ("a2", "a", {}, {"alignment": [4.0, 5.0, 5.0]}),  # ŝ_al = 5
        ("b0", "b", {"realism": 3.0}, {"alignment": [2.0, 3.0, 3.0]}),  # ŝ_al = 3
        ("b1", "b", {"realism": 3.0}, {"alignment": [1.0, 1.0, 2.0]}),  # ŝ_al = 1
    ]
    (root / "images").mkdir(parents=True)
    with (root / "test.jsonl").open("w") as f:
        for id_, pid, scores, ann in lines:
            Image.new("RGB", (8, 8)).save(root / "images" / f"{id_}.png")
            f.write(
                json.dumps(
                    {
                        "id": id_,
                        "prompt_id": pid,
                        "prompt": f"prompt {pid}",
                        "image": f"images/{id_}.png",
                        "scores": scores,
                        "annotations": ann,
                    }
                )
                + "\n"
            )
    return root


PREDICTIONS = {
    "a0.png": {"alignment": 2.0, "realism": 2.5},
    "a1.png": {"alignment": 4.0, "realism": 2.0},
    "a2.png": {"alignment": 3.0, "realism": 3.0},
    "b0.png": {"alignment": 2.5, "realism": 1.0},
    "b1.png": {"alignment": 1.0, "realism": 5.0},
}


def test_metrics_match_hand_computation(tmp_path):
    records = load_split(_dataset(tmp_path), "test")
    scorer = FakeScorer(PREDICTIONS)
    ev = evaluate(scorer, records, batch_size=2)
    m = ev.metrics
    # alignment pairs: a: (0,1) dh<0 dp<0 right; (0,2) right; (1,2): ŝ 3.5 < 5 but μ 4 > 3 wrong;
    # b: (0,1) ŝ 3 > 1, μ 2.5 > 1 right -> 3/4. Margin (|dh| > .5): all four pairs -> 3/4.
    al = m["per_dimension"]["alignment"]
    assert (al["n_pairs"], al["hpa"], al["n_margin_pairs"], al["margin_hpa"]) == (4, 0.75, 4, 0.75)
    # realism: only a0/a1 differ within a prompt (b0 = b1 tie): ŝ 2 < 4, μ 2.5 > 2 -> wrong
    re = m["per_dimension"]["realism"]
    assert (re["n_pairs"], re["hpa"]) == (1, 0.0)
    assert (m["n_pairs"], m["hpa"], m["n_items"]) == (5, 3 / 5, 9)
    assert m["n_records"] == 5 and m["n_failed"] == 0 and m["dimensions"] == ["alignment", "realism"]
    # realism has no annotations: no distribution metrics, with the reason
    assert math.isnan(re["kl"]) and "annotations" in re["undefined"]["kl"]
    # alignment EMD per item: q is two-hot at μ, the histogram the mean of the annotations' two-hots;
    # both are on 1..5, so EMD = |CDF gap| summed; e.g. a0: p = (1/3 on 1, 1/3 on 2, 1/3 on 4), q = 1 on 2:
    # CDF p (1/3, 2/3, 2/3, 1), q (0, 1, 1, 1): 1/3 + 1/3 + 1/3 = 1
    rows = {r["id"]: r for r in ev.item_rows()}
    assert rows["a0"]["dimensions"]["alignment"]["emd"] == pytest.approx(1.0)
    assert rows["a0"]["dimensions"]["alignment"]["human"] == 2.0
    assert "emd" not in rows["a0"]["dimensions"]["realism"]
    # histograms of the first and the last annotated entries (realism entries without annotations between)
    hist = {
        (int(i), ev.dimensions[d]): h
        for i, d, h in zip(ev.entry_item, ev.entry_dim, ev.human_hist, strict=True)
    }
    np.testing.assert_allclose(hist[(0, "alignment")], [1 / 3, 1 / 3, 0, 1 / 3, 0])  # 1, 2, 4
    np.testing.assert_allclose(hist[(4, "alignment")], [2 / 3, 1 / 3, 0, 0, 0])  # 1, 1, 2
    assert np.isnan(hist[(4, "realism")]).all()


def test_each_item_is_scored_once_for_all_dimensions_in_micro_batches(tmp_path):
    records = load_split(_dataset(tmp_path), "test")
    scorer = FakeScorer(PREDICTIONS)
    evaluate(scorer, records, batch_size=2)
    assert [len(images) for images, _ in scorer.calls] == [2, 2, 1]
    assert sorted(i for images, _ in scorer.calls for i in images) == sorted(PREDICTIONS)
    assert all(dims == ["alignment", "realism"] for _, dims in scorer.calls)  # rubric order, one pass


def test_failed_items_are_left_out_and_reported(tmp_path):
    records = load_split(_dataset(tmp_path), "test")
    ev = evaluate(FakeScorer(PREDICTIONS, fail=("a1.png",)), records, batch_size=4)
    m = ev.metrics
    # without a1: alignment pairs (0,2) right and b (0,1) right; realism has no pair left
    assert m["n_failed"] == 1 and m["per_dimension"]["alignment"]["hpa"] == 1.0
    assert m["per_dimension"]["alignment"]["n_pairs"] == 2 and m["per_dimension"]["realism"]["n_pairs"] == 0
    assert "no same-prompt pairs" in m["per_dimension"]["realism"]["undefined"]["hpa"]
    rows = {r["id"]: r for r in ev.item_rows()}
    assert "cannot be decoded" in rows["a1"]["error"] and "dimensions" not in rows["a1"]
    assert "1 item(s) could not be scored" in format_table(m)


def test_annotations_become_two_hot_histograms_on_the_model_scale(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "x.png")
    line = {
        "id": "x",
        "prompt_id": "p",
        "prompt": "p",
        "image": "images/x.png",
        "annotations": {"aesthetics": [3.5, 3.5, 3.5]},
    }
    (root / "test.jsonl").write_text(json.dumps(line) + "\n")
    ev = evaluate(FakeScorer({"x.png": {"aesthetics": 3.5}}), load_split(root, "test"))
    # 3.5 on the 1..5 scale = 0.5 on 3 and 0.5 on 4, exactly what the fake predicts: KL = JSD = EMD = 0
    assert ev.human_hist[0].tolist() == [0.0, 0.0, 0.5, 0.5, 0.0]
    assert ev.metrics["kl"] == pytest.approx(0.0, abs=1e-12) and ev.metrics["emd"] == pytest.approx(
        0.0, abs=1e-12
    )
    assert ev.metrics["pred_std"] == pytest.approx(0.5) and ev.metrics["human_std"] == pytest.approx(0.5)
    # a single item: no pairs, no correlations, and the JSON says so with nulls
    parsed = json.loads(
        metrics_json(ev.metrics), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")
    )
    assert parsed["hpa"] is None and parsed["plcc"] is None and "plcc" in parsed["undefined"]


def test_unknown_dimension_names_it(tmp_path):
    root = _dataset(tmp_path)
    records = load_split(root, "test", rubric=["alignment", "realism", "sharpness"])
    records[0] = type(records[0])(**{**records[0].__dict__, "scores": {"sharpness": 2.0}})
    with pytest.raises(UnknownDimensionError, match="sharpness"):
        evaluate(FakeScorer(PREDICTIONS), records)


def test_empty_split_gives_nan_metrics_not_errors(tmp_path):
    ev = evaluate(FakeScorer({}), [])
    assert ev.metrics["n_pairs"] == 0 and math.isnan(ev.metrics["hpa"]) and ev.metrics["per_dimension"] == {}
    assert "n/a" in format_table(ev.metrics)


def test_per_item_jsonl_and_table(tmp_path):
    ev = evaluate(FakeScorer(PREDICTIONS), load_split(_dataset(tmp_path / "d"), "test"))
    path = write_per_item(ev, tmp_path / "out" / "items.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a0", "a1", "a2", "b0", "b1"]
    a1 = rows[1]["dimensions"]["alignment"]
    assert a1["mean"] == pytest.approx(4.0) and a1["human"] == 3.5
    assert a1["probs"] == {"1": 0.0, "2": 0.0, "3": 0.0, "4": 1.0, "5": 0.0}
    assert rows[2]["dimensions"]["realism"]["human"] is None  # a2 has no realism label
    table = format_table(ev.metrics)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["dimension", "items", "pairs", "HPA"]
    assert lines[2].split()[:4] == ["alignment", "5", "4", "0.750"]
    assert lines[4].split()[:4] == ["pooled", "9", "5", "0.600"]


def test_plots_are_written_without_touching_pyplot(tmp_path):
    pytest.importorskip("matplotlib", reason="plots need the optional matplotlib (the `plots` extra)")
    ev = evaluate(FakeScorer(PREDICTIONS), load_split(_dataset(tmp_path / "d"), "test"))
    had_pyplot = "matplotlib.pyplot" in sys.modules
    paths = write_plots(ev, tmp_path / "plots")
    assert [p.name for p in paths] == [
        "distributions.png",
        "reliability.png",
        "hpa_per_dimension.png",
        "scores_scatter.png",
    ]
    for p in paths:
        with Image.open(p) as image:
            assert image.format == "PNG" and image.width > 300
            assert len(np.unique(np.asarray(image.convert("L")))) > 10  # not a blank canvas
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_plots_without_matplotlib_name_the_extra(tmp_path, monkeypatch):
    ev = evaluate(FakeScorer(PREDICTIONS), load_split(_dataset(tmp_path / "d"), "test"))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `import matplotlib.figure` fail
    with pytest.raises(MissingDependencyError, match=r"zreward-deploy\[plots\]"):
        write_plots(ev, tmp_path / "plots")
    assert not (tmp_path / "plots").exists()
