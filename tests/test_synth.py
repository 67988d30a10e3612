"""The synthetic dataset generator: determinism, format, defect -> dimension truth and annotator spread;
the flat style's bytes pinned, the natural style's image statistics measured."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zreward_deploy.data import build_pairs, load_dataset, validate_dataset
from zreward_deploy.data.synth import (
    ANNOTATOR_NOISE,
    COLOURS,
    DIMENSIONS,
    PromptSpec,
    Shape,
    SynthConfig,
    apply_mismatch,
    draw_prompt,
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


def _laplacian(a: np.ndarray) -> np.ndarray:
    """The 4-neighbour Laplacian of a 2-D array (interior pixels)."""
    return a[1:-1, :-2] + a[1:-1, 2:] + a[:-2, 1:-1] + a[2:, 1:-1] - 4 * a[1:-1, 1:-1]


def _detail(image: Image.Image) -> float:
    """Variance of the grey image's Laplacian: fine detail (texture, edges, noise)."""
    return float(_laplacian(np.asarray(image.convert("L"), np.float64)).var())


def _chroma_noise(image: Image.Image) -> float:
    """Robust estimate of the per-pixel noise in R - G, grey levels: the median absolute deviation of its
    Laplacian (sparse edges do not move a median), divided by the Laplacian's gain on white noise (√20)."""
    a = np.asarray(image, np.float64)
    lap = _laplacian(a[..., 0] - a[..., 1]).ravel()
    return float(1.4826 * np.median(np.abs(lap - np.median(lap))) / math.sqrt(20))


def _scene(seed: int, defects: dict, style: str = "natural") -> Image.Image:
    """A random prompt's scene; the same seed gives the same scene, so only ``defects`` differ."""
    spec = draw_prompt(np.random.default_rng([1, seed]))
    return render_image(spec.objects, defects, 64, np.random.default_rng([2, seed]), style=style)


@pytest.mark.parametrize("style", ["natural", "flat"])
def test_realism_defects_change_the_pixels_as_described(style):
    objs = (Shape("square", "red", 0.5, 0.3),)
    clean = render_image(objs, {}, 64, np.random.default_rng(0), style=style)
    blurred = render_image(objs, {"blur": 1.0}, 64, np.random.default_rng(0), style=style)
    noisy = render_image(objs, {"noise": 1.0}, 64, np.random.default_rng(0), style=style)
    assert _sharpness(blurred) < 0.5 * _sharpness(clean)
    assert _sharpness(noisy) > 3 * _sharpness(clean)


def test_flat_scene_shows_the_object_in_its_flat_colour():
    red = lambda im: int(((np.asarray(im)[..., 0] > 180) & (np.asarray(im)[..., 1] < 90)).sum())  # noqa: E731
    clean = render_image((Shape("square", "red", 0.5, 0.3),), {}, 64, np.random.default_rng(0), style="flat")
    assert red(clean) > 100 and red(render_image((), {}, 64, np.random.default_rng(0), style="flat")) == 0


@pytest.mark.parametrize("style", ["natural", "flat"])
def test_float_lifts_the_object_above_its_shadow(style):
    objs = (Shape("square", "blue", 0.5, 0.3),)

    def lowest_blue_row(im: Image.Image) -> int:
        a = np.asarray(im).astype(int)
        return int(np.flatnonzero(((a[..., 2] > 120) & (a[..., 2] > a[..., 0] + 60)).any(axis=1)).max())

    grounded = render_image(objs, {}, 64, np.random.default_rng(0), style=style)
    floating = render_image(objs, {"float": 1.0}, 64, np.random.default_rng(0), style=style)
    assert lowest_blue_row(grounded) - lowest_blue_row(floating) > 15  # lifted 0.35 * 64 = 22 px


# Written by the generator before the natural style existed (git 2662142, seed 7, 5 prompts x 3 images),
# sha256 prefixes; synth.json compared without the "style" key it has since gained.
FLAT_64PX = {
    "images/p0_0.png": "974c292bb4b1f934",
    "images/p0_1.png": "5834814131872cf0",
    "images/p0_2.png": "c160fadae173c280",
    "images/p1_0.png": "d15e02818ced2fdf",
    "images/p1_1.png": "fea02dab9b684bcc",
    "images/p1_2.png": "f40b3f78db0df906",
    "images/p2_0.png": "e3a878366aa97d9a",
    "images/p2_1.png": "7d138b1ecb48778e",
    "images/p2_2.png": "711ece58eb468d8a",
    "images/p3_0.png": "39e102a58cc5ea95",
    "images/p3_1.png": "bdead43eb71d3f13",
    "images/p3_2.png": "3177f21e89796fa9",
    "images/p4_0.png": "07b5387a3308462c",
    "images/p4_1.png": "463a241bbb44adda",
    "images/p4_2.png": "c46f460ee8d6a458",
    "synth.json": "5920285517f09d17",
    "test.jsonl": "7a98a282beb6d472",
    "train.jsonl": "64158039fb9d108f",
    "val.jsonl": "6dd24478be5a1bf0",
}
FLAT_40PX_ALL = "6a7052cb2eef68e1"  # sha256 prefix of the sorted JSON of the 40 px files' prefixes


def _flat_digests(root: Path) -> dict[str, str]:
    out = {}
    for name, data in _files(root).items():
        if name == "synth.json":
            manifest = json.loads(data)
            assert manifest["config"].pop("style") == "flat"
            data = (json.dumps(manifest, indent=2) + "\n").encode()
        out[name] = hashlib.sha256(data).hexdigest()[:16]
    return out


def test_flat_style_writes_the_bytes_of_the_original_generator(tmp_path):
    for size in (64, 40):
        cfg = SynthConfig(prompts=5, images_per_prompt=3, seed=7, image_size=size, style="flat")
        generate_dataset(tmp_path / str(size), cfg)
    assert _flat_digests(tmp_path / "64") == FLAT_64PX
    every = json.dumps(_flat_digests(tmp_path / "40"), sort_keys=True).encode()
    assert hashlib.sha256(every).hexdigest()[:16] == FLAT_40PX_ALL


def test_natural_style_is_the_default_and_changes_the_pixels_only(tmp_path):
    base = {"prompts": 5, "images_per_prompt": 3, "seed": 7}
    assert SynthConfig().style == "natural"
    generate_dataset(tmp_path / "natural", SynthConfig(**base))
    generate_dataset(tmp_path / "flat", SynthConfig(**base, style="flat"))
    natural, flat = _files(tmp_path / "natural"), _files(tmp_path / "flat")
    for split in ("train.jsonl", "val.jsonl", "test.jsonl"):  # prompts, mismatches, defects, annotations
        assert natural[split] == flat[split]
    images = [name for name in natural if name.startswith("images/")]
    assert len(images) == 15 and all(natural[name] != flat[name] for name in images)
    assert json.loads(natural["synth.json"])["config"]["style"] == "natural"
    with pytest.raises(ZRewardInputError, match=r"--style.*natural, flat"):
        SynthConfig(style="photo")


def _within_block_std(image: Image.Image, blocks: int) -> float:
    """Mean standard deviation of the grey levels inside the cells of a ``blocks x blocks`` grid (pixel
    centres assigned to cells as nearest-neighbour upsampling does): 0 when every cell is one colour."""
    grey = np.asarray(image.convert("L"), np.float64)
    cell = ((np.arange(grey.shape[0]) + 0.5) * blocks / grey.shape[0]).astype(int)
    return float(
        np.mean([grey[np.ix_(cell == i, cell == j)].std() for i in range(blocks) for j in range(blocks)])
    )


def test_natural_scenes_are_textured_and_blur_and_pixelation_remove_the_detail():
    clean = [_scene(seed, {}) for seed in range(12)]
    flat = [_scene(seed, {}, style="flat") for seed in range(12)]
    # textured everywhere: the flat style's detail is in its few edges only (its sky and table are
    # uniform), so away from the objects (the top rows) it has none
    top = lambda im: _detail(im.crop((0, 0, 64, 20)))  # noqa: E731
    assert min(top(im) for im in clean) > 20 and max(top(im) for im in flat) < 1
    for seed, image in enumerate(clean):
        # the noise floor is added after blur, so blur 1 keeps the floor's detail (20 σ² ≈ 40) only
        assert _detail(_scene(seed, {"blur": 0.5})) < 0.3 * _detail(image)
        assert _detail(_scene(seed, {"blur": 1.0})) < 0.05 * _detail(image)
        # severity 1: blocks of 6 px at 64 px, 11 x 11 of them; inside them only the floor is left
        assert _within_block_std(image, 11) > 12
        assert _within_block_std(_scene(seed, {"pixelate": 1.0}), 11) < 3
        assert _within_block_std(_scene(seed, {"pixelate": 1.0}, style="flat"), 11) == 0


def test_natural_noise_floor_is_present_and_far_below_the_noise_defect():
    for seed in range(8):
        # within the pixelated blocks only the floor varies: its standard deviation, measured there
        floor = _within_block_std(_scene(seed, {"pixelate": 1.0}), 11)
        assert 0.5 < floor < 3.0  # the sensor-like floor: σ ≈ 0.7-2 grey levels
        # σ = 11.5 per channel is 11.5 x |(0.299, 0.587, 0.114)| = 7.7 in grey levels
        assert _within_block_std(_scene(seed, {"pixelate": 1.0, "noise": 0.25}), 11) > 3 * floor
        # the floor is mostly luminance; the noise defect is per channel (R - G noise of σ 16)
        assert _chroma_noise(_scene(seed, {"noise": 0.25})) > 10 and _chroma_noise(_scene(seed, {})) < 4


@pytest.mark.parametrize("colour", sorted(COLOURS))
def test_natural_objects_keep_their_named_colour(colour):
    """Alignment stays meaningful: the object's mean chromaticity is nearest to its own colour's."""
    chroma = lambda rgb: np.asarray(rgb, np.float64) / np.sum(rgb)  # noqa: E731
    for seed in range(4):
        image = render_image((Shape("square", colour, 0.5, 0.3),), {}, 64, np.random.default_rng(seed))
        # the square spans x 22-42, y 32-51 (centre 0.5, size 0.3, standing at 0.8 of the height)
        inside = np.asarray(image, np.float64)[36:48, 26:38].reshape(-1, 3).mean(axis=0)
        nearest = min(COLOURS, key=lambda c: np.abs(chroma(COLOURS[c]) - chroma(inside)).sum())
        assert nearest == colour, (seed, inside)


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
