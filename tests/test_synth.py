"""The synthetic dataset generator: determinism, format, defect -> dimension truth and annotator spread."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zreward_deploy.data import build_pairs, load_dataset, validate_dataset
from zreward_deploy.data.synth import (
    ANNOTATOR_NOISE,
    DIMENSIONS,
    PromptSpec,
    Shape,
    SynthConfig,
    apply_mismatch,
    generate_dataset,
    ground_truth,
    render_image,
    round_half,
)
from zreward_deploy.errors import ZRewardInputError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(root: Path) -> list[dict]:
    return [
        json.loads(line)
        for s in ("train", "val", "test")
        for line in (root / f"{s}.jsonl").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """160 images, 5 annotators each: enough for the spread statistics (generates in well under 2 s)."""
    root = tmp_path_factory.mktemp("synth_big")
    generate_dataset(root, SynthConfig(prompts=40, images_per_prompt=4, seed=3), overwrite=True)
    return root


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    cfg = SynthConfig(prompts=6, images_per_prompt=3, seed=11)
    generate_dataset(tmp_path / "a", cfg)
    generate_dataset(tmp_path / "b", cfg)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 6 * 3 + 3 + 1  # images, three splits, synth.json
    assert a == b
    generate_dataset(tmp_path / "c", SynthConfig(prompts=6, images_per_prompt=3, seed=12))
    c = _files(tmp_path / "c")
    assert a.keys() == c.keys() and a != c


def test_generated_dataset_is_valid_with_prompt_disjoint_splits(big):
    assert validate_dataset(big) == []
    data = load_dataset(big)
    assert {s: len(r) for s, r in data.items()} == {"train": 112, "val": 24, "test": 24}  # 28/6/6 prompts x 4
    prompts = {s: {r.prompt_id for r in rows} for s, rows in data.items()}
    assert not (prompts["train"] & prompts["val"]) and not (prompts["train"] & prompts["test"])
    assert not (prompts["val"] & prompts["test"])
    with Image.open(data["test"][0].image_path) as image:
        assert image.size == (64, 64) and image.mode == "RGB"


def test_every_prompt_has_truth_variation_on_every_dimension(big):
    by_prompt: dict[str, list[dict]] = {}
    for row in _rows(big):
        by_prompt.setdefault(row["prompt_id"], []).append(row["meta"]["truth"])
    for truths in by_prompt.values():
        for dim in DIMENSIONS:
            assert len({t[dim] for t in truths}) > 1
    records = [r for rows in load_dataset(big).values() for r in rows]
    assert {p.dimension for p in build_pairs(records)} == set(DIMENSIONS)


def test_scores_are_rounded_trimmed_means_of_the_annotations(big):
    for row in _rows(big):
        for dim, ann in row["annotations"].items():
            assert len(ann) == 5 and all(1.0 <= a <= 5.0 and a * 2 == int(a * 2) for a in ann)
            middle = sorted(ann)[1:-1]
            expected = math.floor(2 * sum(middle) / len(middle) + 0.5) / 2
            assert row["scores"][dim] == expected


def test_annotations_have_the_documented_spread(big):
    """Annotation = clip(round_half(truth + bias_a + N(0, sigma_d^2)), 1, 5). Away from the clipping edges
    the residual annotation - truth - bias_a has mean 0 and std sqrt(sigma_d^2 + 0.5^2/12) (rounding to a
    half-point grid adds a uniform error of width 0.5)."""
    bias = np.array(json.loads((big / "synth.json").read_text())["annotator_bias"])
    rows = _rows(big)
    for dim, sigma in ANNOTATOR_NOISE.items():
        residuals = []
        for row in rows:
            centre = row["meta"]["truth"][dim] + bias
            keep = (centre >= 2.0) & (centre <= 4.0)  # clipping at 1 and 5 needs |noise| > 1
            residuals.extend((np.array(row["annotations"][dim]) - centre)[keep])
        residuals = np.array(residuals)
        assert len(residuals) > 200, dim
        expected = math.sqrt(sigma**2 + 0.25 / 12)
        assert abs(residuals.mean()) < 0.1, dim
        assert residuals.std() == pytest.approx(expected, rel=0.15), dim
        # real distributions, not one-hots: most items get at least two different scores
        distinct = np.mean([len(set(row["annotations"][dim])) > 1 for row in rows])
        assert distinct > 0.8, dim


def test_ground_truth_follows_the_defect_table():
    truth = ground_truth({"blur": 0.5, "tilt": 1.0}, "wrong_colour")
    # alignment 5 - 1.5; realism 5 - 2.0*0.5; aesthetics 5 - 0.5*0.5 - 2.0*1.0; plausibility untouched
    assert truth == {"alignment": 3.5, "realism": 4.0, "aesthetics": 2.75, "plausibility": 5.0}
    # realism 5 - 2 - 2 - 1.5 < 1 -> clipped; the empty scene is the lowest alignment
    assert ground_truth({"blur": 1.0, "noise": 1.0, "pixelate": 1.0}, "empty") == {
        "alignment": 1.0,
        "realism": 1.0,
        "aesthetics": 4.0,
        "plausibility": 5.0,
    }


def test_round_half_rounds_halves_up():
    assert [round_half(x) for x in (3.24, 3.25, 3.75, 1.0, 4.99)] == [3.0, 3.5, 4.0, 1.0, 5.0]


def test_mismatches_change_what_is_drawn():
    rng = np.random.default_rng(0)
    two = PromptSpec(
        "relation",
        "a red circle to the left of a blue square",
        (Shape("circle", "red", 0.3, 0.24), Shape("square", "blue", 0.7, 0.24)),
    )
    assert apply_mismatch(two, "none", rng) == ("none", two.objects)
    _, objs = apply_mismatch(two, "swapped", rng)
    assert [o.x for o in objs] == pytest.approx([0.7, 0.3])
    _, objs = apply_mismatch(two, "wrong_object", rng)
    assert all(o.shape != w.shape and o.colour != w.colour for o, w in zip(objs, two.objects, strict=True))
    assert len(apply_mismatch(two, "missing_object", rng)[1]) == 1
    assert apply_mismatch(two, "empty", rng)[1] == ()
    count = PromptSpec(
        "count", "two red circles", (Shape("circle", "red", 0.35, 0.24), Shape("circle", "red", 0.65, 0.24))
    )
    assert len(apply_mismatch(count, "wrong_count", rng)[1]) in (1, 3)
    assert (
        apply_mismatch(count, "swapped", rng)[0] == "wrong_colour"
    )  # no positions to swap in a count prompt


def _sharpness(image: Image.Image) -> float:
    """Mean squared horizontal gradient of the grey image: high for sharp edges and for noise."""
    g = np.asarray(image.convert("L"), dtype=np.float64)
    return float((np.diff(g, axis=1) ** 2).mean())


def test_realism_defects_change_the_pixels_as_described():
    objs = (Shape("square", "red", 0.5, 0.3),)
    clean = render_image(objs, {}, 64, np.random.default_rng(0))
    blurred = render_image(objs, {"blur": 1.0}, 64, np.random.default_rng(0))
    noisy = render_image(objs, {"noise": 1.0}, 64, np.random.default_rng(0))
    assert _sharpness(blurred) < 0.5 * _sharpness(clean)
    assert _sharpness(noisy) > 5 * _sharpness(clean)
    # the red object is in the clean image and gone from an empty scene
    red = lambda im: int(((np.asarray(im)[..., 0] > 180) & (np.asarray(im)[..., 1] < 90)).sum())  # noqa: E731
    assert red(clean) > 100 and red(render_image((), {}, 64, np.random.default_rng(0))) == 0


def test_float_lifts_the_object_above_its_shadow():
    objs = (Shape("square", "blue", 0.5, 0.3),)

    def lowest_blue_row(im: Image.Image) -> int:
        a = np.asarray(im).astype(int)
        return int(np.flatnonzero(((a[..., 2] > 150) & (a[..., 0] < 90)).any(axis=1)).max())

    grounded = render_image(objs, {}, 64, np.random.default_rng(0))
    floating = render_image(objs, {"float": 1.0}, 64, np.random.default_rng(0))
    assert lowest_blue_row(grounded) - lowest_blue_row(floating) > 15  # lifted 0.35 * 64 = 22 px


def test_refuses_a_non_empty_folder_and_bad_settings(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ZRewardInputError, match="not empty"):
        generate_dataset(tmp_path, SynthConfig(prompts=1, images_per_prompt=2))
    # --overwrite replaces an earlier dataset, never a folder that holds something else (it is deleted)
    with pytest.raises(ZRewardInputError, match="does not look like"):
        generate_dataset(tmp_path, SynthConfig(prompts=1, images_per_prompt=2), overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "x"
    generate_dataset(tmp_path / "data", SynthConfig(prompts=1, images_per_prompt=2))
    counts = generate_dataset(tmp_path / "data", SynthConfig(prompts=1, images_per_prompt=2), overwrite=True)
    assert counts == {"train": 2, "val": 0, "test": 0}  # one prompt cannot be split
    with pytest.raises(ZRewardInputError, match=r"--images-per-prompt.*>= 2"):
        SynthConfig(images_per_prompt=1)
    with pytest.raises(ZRewardInputError, match=r"--image-size.*between 16 and 1024"):
        SynthConfig(image_size=8)
