"""``zreward bench transfer`` (bench/bench_transfer.py): photographs degraded as the synthetic data are,
scored clean and degraded; the degradations measured, the report's fields, bad photographs reported
without losing the others, and the photographs kept out of every training path."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zreward_deploy.bench.bench_transfer import (
    BUNDLED_PHOTOS,
    bundled_photos,
    degrade,
    main,
    photo_crops,
    wilson_interval,
)
from zreward_deploy.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hopper() -> Path:
    """matplotlib's grace_hopper.jpg (512 x 600), installed with the dev extra in every CI venv."""
    found, _ = bundled_photos()
    path = next((p for p in found if p.name == "grace_hopper.jpg"), None)
    assert path is not None, "matplotlib's sample_data/grace_hopper.jpg is missing (pip install -e '.[dev]')"
    return path


def _laplacian_variance(image: Image.Image) -> float:
    a = np.asarray(image.convert("L"), np.float64)
    return float((a[1:-1, :-2] + a[1:-1, 2:] + a[:-2, 1:-1] + a[2:, 1:-1] - 4 * a[1:-1, 1:-1]).var())


def _residual_std(image: Image.Image) -> float:
    """Standard deviation of the image minus its 3 x 3 box average (per channel, pooled): white noise of
    variance σ² adds (1 - 2/9 + 1/9) σ² = 8/9 σ² to its square."""
    a = np.asarray(image, np.float64)
    box = sum(
        a[1 + dy : a.shape[0] - 1 + dy, 1 + dx : a.shape[1] - 1 + dx]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )
    return float((a[1:-1, 1:-1] - box / 9).std())


def test_degradations_are_what_they_claim(hopper):
    photo = Image.open(hopper).convert("RGB")
    crops = photo_crops(photo, 3, 64, seed=0, name=hopper.name)
    assert [c.size for c in crops] == [(64, 64)] * 3
    assert (
        crops[0].tobytes()
        == photo.crop((0, 44, 512, 556)).resize((64, 64), Image.Resampling.LANCZOS).tobytes()
    )
    for clean in crops:
        blurred = [_laplacian_variance(degrade(clean, "blur", s, seed=0)) for s in (0.25, 0.5, 1.0)]
        assert blurred[0] < 0.8 * _laplacian_variance(clean) and blurred[2] < blurred[1] < blurred[0]
        for severity in (0.25, 1.0):  # σ = 46 s per pixel and channel; the residual keeps 8/9 of σ²
            added = _residual_std(degrade(clean, "noise", severity, seed=0)) ** 2 - _residual_std(clean) ** 2
            assert 0.6 < added / (8 / 9 * (46 * severity) ** 2) < 1.2  # less where 0 and 255 clip it
        # pixelation: blocks of 64 / round(64 / 6) ≈ 5.8 px at severity 1, each one colour
        pixelated = np.asarray(degrade(clean, "pixelate", 1.0, seed=0)).astype(np.int64)
        for a in (pixelated, pixelated.transpose(1, 0, 2)):  # along rows, then along columns
            edges = (np.diff(a, axis=1) != 0).any(axis=2)  # a value change between columns x and x + 1
            columns = np.flatnonzero(edges.any(axis=0))  # block edges, the same in every row
            assert len(columns) <= 10 and np.diff(np.r_[-1, columns, 63]).min() >= 5
    # the noise is seeded: the same seed gives the same image, another seed another
    a, b, c = (degrade(crops[0], "noise", 0.5, seed=s).tobytes() for s in (1, 1, 2))
    assert a == b != c


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(8, 10)  # p = 0.8, n = 10: [0.490, 0.943] (Wilson 1927; Newcombe 1998)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_bench_reports_every_defect_and_severity_and_keeps_going_past_bad_photos(
    tiny_dir, hopper, tmp_path, capsys
):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(hopper, photos / "hopper.jpg")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (photos / "notes.txt").write_text("not a photograph")
    Image.new("RGB", (20, 20), (90, 120, 60)).save(photos / "tiny.png")
    out = tmp_path / "out"
    result = main(
        ["--model", str(tiny_dir), "--photos", str(photos), "--crops", "3", "--severities", "0.5,1",
         "--out", str(out)]
    )  # fmt: skip
    assert json.loads((out / "bench_transfer.json").read_text()) == json.loads(json.dumps(result))
    assert [p["photo"] for p in result["photos"]] == ["hopper.jpg"] and result["n_crops"] == 3
    reasons = {Path(s["photo"]).name: s["reason"] for s in result["skipped"]}
    assert set(reasons) == {"broken.png", "notes.txt", "tiny.png"}
    assert reasons["notes.txt"] == "not an image file name" and reasons["broken.png"]
    assert "smaller than the model's 32 px" in reasons["tiny.png"]
    assert result["dimension"] == "realism" and result["image_size"] == 32
    assert [(r["defect"], r["severity"]) for r in result["rows"]] == [
        (d, s) for d in ("blur", "noise", "pixelate") for s in (0.5, 1.0, "all")
    ]
    for row in result["rows"]:
        assert row["n"] == (6 if row["severity"] == "all" else 3)
        assert 0 <= row["ci95_low"] <= row["accuracy"] <= row["ci95_high"] <= 1
        assert math.isfinite(row["mean_mu_clean"]) and math.isfinite(row["mean_mu_degraded"])
    assert [(r["defect"], r["n"]) for r in result["ordering"]] == [
        (d, 3) for d in ("blur", "noise", "pixelate")
    ]
    assert {(r["photo"], r["defect"], r["n"]) for r in result["per_photo"]} == {
        ("hopper.jpg", d, 6) for d in ("blur", "noise", "pixelate")
    }
    table = (out / "bench_transfer.md").read_text()
    assert "| noise | 1.0 | 3 |" in table and "P(μ clean > μ degraded)" in table
    err = capsys.readouterr().err
    assert (
        "skipped" in err and "broken.png" in err and "scored 21/21 images" in err
    )  # 3 crops x (clean + 3 defects x 2)


def test_cli_refuses_bad_settings_in_one_line(tiny_dir, tmp_path, capsys):
    for argv, flag in (
        ([], "--model"),
        (["--model", str(tiny_dir), "--severities", "0,1"], "--severities"),
        (["--model", str(tiny_dir), "--defects", "blur,tilt"], "--defects"),
        (["--model", str(tiny_dir), "--photos", str(tmp_path / "none")], "--photos"),
    ):
        assert cli_main(["bench", "transfer", "--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag in err and "Traceback" not in err, err


def test_default_photographs_come_from_installed_packages(hopper):
    found, missing = bundled_photos()
    names = {p.name for p in found} | {m["photo"].rsplit("/", 1)[1] for m in missing}
    assert names == {n for _, photos in BUNDLED_PHOTOS.values() for n in photos}
    assert hopper in found and all("is not installed" in m["reason"] for m in missing)


def test_no_training_path_reads_the_test_photographs():
    """The photographs are a held-out test: the synthetic data, the demo and the trainers never name the
    packages or files they come from (only the benchmark does)."""
    names = ["skimage", "sample_data", "mpl-data", "bench_transfer"]
    names += [n.rsplit(".", 1)[0] for _, photos in BUNDLED_PHOTOS.values() for n in photos]
    sources = [
        ROOT / "zreward_deploy" / "data" / "synth.py",
        ROOT / "zreward_deploy" / "data" / "synth_config.py",
        *(ROOT / "zreward_deploy" / "pipeline").rglob("*.py"),
        *(ROOT / "training").rglob("*.py"),
        ROOT / "bench" / "run_results.py",
    ]
    assert len(sources) > 10
    for path in sources:
        text = path.read_text()
        assert not [n for n in names if n in text], path
