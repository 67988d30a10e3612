"""The `zreward data check|synth` and `zreward eval` command paths, run in-process through cli.main.

The eval test uses an untrained tiny preset: it checks that the pipeline runs and that its JSON is
well-formed and consistent with the data (pair counts), not any quality level.
"""

import json
from itertools import combinations
from pathlib import Path

import pytest

from zreward_deploy.cli import main


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "data"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(root),
                "--prompts",
                "12",
                "--images-per-prompt",
                "4",
                "--seed",
                "5",
            ]
        )
        == 0
    )
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from zreward_deploy.presets import build_preset

    path = tmp_path_factory.mktemp("tiny_model")
    model, processor = build_preset("tiny", seed=0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_data_synth_writes_the_dataset(synth_dir, capsys):
    assert sorted(p.name for p in synth_dir.iterdir()) == [
        "images",
        "synth.json",
        "test.jsonl",
        "train.jsonl",
        "val.jsonl",
    ]
    assert len(list((synth_dir / "images").iterdir())) == 48
    # a second run into the same folder is refused (exit 2 with the reason) unless --overwrite
    assert main(["data", "synth", "--out", str(synth_dir), "--prompts", "2"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_data_check_ok(synth_dir, capsys):
    assert main(["data", "check", str(synth_dir)]) == 0
    out = capsys.readouterr().out.strip()
    assert (
        out.startswith(f"ok: {synth_dir}: ")
        and "48 records with annotations; 0 judgements (0 ties)" in out
        and len(out.splitlines()) == 1
    )


def test_data_check_reports_every_problem_and_fails(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    good = {
        "id": "x0",
        "prompt_id": "p",
        "prompt": "a cat",
        "image": "images/x0.png",
        "scores": {"realism": 3.0},
    }
    lines = [
        json.dumps(good),
        json.dumps({**good, "id": "x1", "scores": {"realism": 7.0}}),
        "{not json",
        json.dumps({**good, "id": "x0", "image": "images/x0.png", "scores": {"colour": 1.0}}),
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    train = tmp_path / "train.jsonl"
    # x0.png was never written: lines 1, 2 and 4 name it
    assert out == [
        f"{train}:1: image: missing image: no file at {tmp_path / 'images' / 'x0.png'}",
        f"{train}:2: image: missing image: no file at {tmp_path / 'images' / 'x0.png'}",
        f"{train}:2: scores.realism: score 7.0 is outside the scale [1.0, 5.0]",
        f"{train}:3: malformed JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{train}:4: image: missing image: no file at {tmp_path / 'images' / 'x0.png'}",
        f"{train}:4: scores.colour: unknown dimension 'colour'; the rubric has "
        "['alignment', 'realism', 'aesthetics', 'plausibility']",
        f"6 problem(s) in {tmp_path}",
    ]
    assert main(["data", "check", str(tmp_path), "--skip-images"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == f"3 problem(s) in {tmp_path}"  # the image lines go


def test_data_check_missing_folder(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope")]) == 1
    assert "dataset folder does not exist" in capsys.readouterr().out


def _count_pairs(root: Path, split: str) -> dict[str, int]:
    """Same-prompt pairs per dimension with different trimmed means of the annotations, counted here
    independently of zreward_deploy.data."""
    rows = [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]
    counts = {}
    for dim in ("alignment", "realism", "aesthetics", "plausibility"):
        n = 0
        for a, b in combinations(rows, 2):
            if a["prompt_id"] != b["prompt_id"]:
                continue
            sa, sb = (sorted(r["annotations"][dim])[1:-1] for r in (a, b))
            n += abs(sum(sa) / len(sa) - sum(sb) / len(sb)) > 1e-9
        counts[dim] = n
    return counts


def test_eval_end_to_end_on_tiny_preset(synth_dir, tiny_model, tmp_path, capsys):
    per_item, plots = tmp_path / "items.jsonl", tmp_path / "plots"
    args = [
        "eval",
        "--model",
        str(tiny_model),
        "--data",
        str(synth_dir),
        "--split",
        "test",
        "--batch-size",
        "3",
    ]
    assert main([*args, "--json", "--per-item", str(per_item), "--plots", str(plots), "--quiet"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)  # exactly one JSON object on stdout, nothing else
    expected = _count_pairs(synth_dir, "test")
    n_test = len((synth_dir / "test.jsonl").read_text().splitlines())
    assert {d: v["n_pairs"] for d, v in result["per_dimension"].items()} == expected
    assert result["n_pairs"] == sum(expected.values()) > 0
    assert result["n_records"] == n_test and result["n_failed"] == 0 and result["n_items"] == 4 * n_test
    for key in ("hpa", "margin_hpa", "ece", "jsd"):  # bounded in [0, 1]
        assert 0.0 <= result[key] <= 1.0, key
    for key in ("plcc", "srcc", "krcc"):  # defined: the tiny model's predictions vary a little
        assert -1.0 <= result[key] <= 1.0, key
    assert result["kl"] >= 0 and result["emd"] >= 0 and result["undefined"] == {}
    rows = [json.loads(line) for line in per_item.read_text().splitlines()]
    assert len(rows) == n_test and set(rows[0]["dimensions"]) == set(expected)
    assert sorted(p.name for p in plots.iterdir()) == [
        "distributions.png",
        "hpa_per_dimension.png",
        "reliability.png",
        "scores_scatter.png",
    ]

    assert main([*args, "--limit", "4", "--quiet"]) == 0  # the table path
    table = capsys.readouterr().out
    assert "[test]: 4 items" in table and "pooled" in table and "HPA" in table


def test_eval_bad_arguments_exit_2(synth_dir, tiny_model, capsys):
    base = ["eval", "--model", str(tiny_model), "--data", str(synth_dir), "--quiet"]
    assert main([*base, "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main([*base, "--backend", "nope"]) == 2
    assert "unknown backend" in capsys.readouterr().err
