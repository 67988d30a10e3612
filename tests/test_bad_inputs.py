"""Bad input: each case raises a ZRewardInputError subclass that names the item and the reason, and batch
scoring with errors="collect" keeps every valid item's result (the per-item error contract, docs/design.md §10)."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from zreward_deploy.errors import (
    InvalidImageError,
    InvalidModelError,
    InvalidPromptError,
    UnknownDimensionError,
    ZRewardInputError,
)
from zreward_deploy.modeling import ZRewardModel
from zreward_deploy.processing import image_to_tensor
from zreward_deploy.scoring import Scorer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_images")
    good = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(good).save(d / "good.png")
    Image.fromarray(good).save(d / "good.jpg", quality=90)
    (d / "garbage.png").write_bytes(b"this is not an image at all")
    full = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    png = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    Image.new("RGB", (9000, 9000)).save(d / "huge.png")  # 81 Mpx > 8192^2 limit; compresses to ~250 KB
    Image.fromarray(np.zeros((8, 8), dtype=np.float32), mode="F").save(d / "float.tiff")
    return d


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("garbage.png", "not a readable image"),
        ("truncated.jpg", "cannot be decoded"),
        ("truncated.png", "cannot be decoded"),
        ("huge.png", "more than the limit"),
        ("float.tiff", "unsupported image mode 'F'"),
        ("missing.png", "does not exist"),
    ],
)
def test_bad_image_files(files, name, reason):
    with pytest.raises(InvalidImageError, match=reason) as info:
        image_to_tensor(files / name)
    assert info.value.item == str(files / name)


def test_directory_is_not_an_image(files):
    with pytest.raises(InvalidImageError, match="directory"):
        image_to_tensor(files)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (np.zeros((0, 10, 3), dtype=np.uint8), "zero size"),
        (np.zeros((10, 0), dtype=np.uint8), "zero size"),
        (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN or infinite"),
        (np.full((4, 4, 3), np.inf, dtype=np.float32), "NaN or infinite"),
        (torch.full((3, 4, 4), float("nan")), "NaN or infinite"),
        (np.full((4, 4, 3), 7.0, dtype=np.float32), r"must lie in \[0, 1\]"),
        (np.zeros((4, 4, 5), dtype=np.uint8), "HxWxC"),
        (np.zeros((4, 4, 3), dtype=np.int64), "unsupported numpy dtype"),
        (torch.zeros(2, 3, 4, 4), "CxHxW"),
        (torch.zeros(3, 4, 4, dtype=torch.int32), "unsupported tensor dtype"),
        ([1, 2, 3], "unsupported image type"),
        (Image.new("RGB", (0, 0)), "zero size"),
    ],
)
def test_bad_in_memory_images(image, reason):
    with pytest.raises(InvalidImageError, match=reason) as info:
        image_to_tensor(image, item=7)
    assert info.value.item == 7
    assert "7" in str(info.value)


def test_gigantic_in_memory_image_refused():
    # 9000 x 8000 = 72 Mpx > 8192^2; (files are refused on their header size, before decoding: huge.png)
    with pytest.raises(InvalidImageError, match="more than the limit"):
        image_to_tensor(np.zeros((9000, 8000), dtype=np.uint8), item="big")


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        (None, "must be a string"),
        (42, "must be a string"),
        ("word " * 400, "over the limit"),
    ],
)
def test_bad_prompts(tiny, prompt, reason):
    _, processor = tiny
    with pytest.raises(InvalidPromptError, match=reason) as info:
        processor.prompt_ids(prompt, item=3)
    assert info.value.item == 3


def test_unknown_dimension(tiny):
    model, processor = tiny
    scorer = Scorer(model, processor)
    with pytest.raises(UnknownDimensionError, match="sharpness") as info:
        scorer.score([np.zeros((8, 8, 3), np.uint8)], ["a star"], dimensions=["realism", "sharpness"])
    assert info.value.item == "sharpness"
    with pytest.raises(UnknownDimensionError):
        processor.suffix_ids(["nope"])


def test_collect_keeps_valid_items(tiny, files):
    model, processor = tiny
    scorer = Scorer(model, processor, max_batch_size=2)
    images = [
        files / "good.png",
        files / "garbage.png",
        np.full((4, 4, 3), np.nan, np.float32),
        files / "good.jpg",
        files / "good.png",
        files / "huge.png",
    ]
    prompts = ["a star", "a star", "a star", "two red cubes", "", "a star"]
    result = scorer.score(images, prompts, errors="collect")
    assert sorted(result.errors) == [1, 2, 4, 5]
    assert isinstance(result.errors[1], InvalidImageError)
    assert isinstance(result.errors[4], InvalidPromptError)
    assert result.ok.tolist() == [True, False, False, True, False, False]
    assert torch.isnan(result.probs[~result.ok]).all() and torch.isnan(result.reward[~result.ok]).all()
    # the valid items' results equal scoring them on their own
    alone = scorer.score([files / "good.png", files / "good.jpg"], ["a star", "two red cubes"])
    torch.testing.assert_close(result.probs[[0, 3]], alone.probs)
    records = result.to_records()
    assert "error" in records[1] and "garbage.png" in records[1]["error"]
    assert math.isfinite(records[0]["reward"])
    # errors="raise": prompts are checked before any image is decoded, then images in batch order
    with pytest.raises(InvalidPromptError, match="4: prompt is empty"):
        scorer.score(images, prompts, errors="raise")
    with pytest.raises(InvalidImageError, match=r"garbage\.png"):
        scorer.score(images, ["a star"], errors="raise")


def test_prompt_count_mismatch(tiny):
    scorer = Scorer(*tiny)
    with pytest.raises(ZRewardInputError, match="2 prompts for 3 images"):
        scorer.score([np.zeros((8, 8, 3), np.uint8)] * 3, ["a", "b"])


def test_model_dir_with_pickle_weights_is_refused(tiny, tmp_path):
    model, _ = tiny
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(InvalidModelError, match="pickle"):
        ZRewardModel.from_pretrained(tmp_path)


def test_model_dir_with_wrong_model_type(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model_type"] = "qwen2"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelError, match="model_type 'qwen2'"):
        ZRewardModel.from_pretrained(tmp_path / "m")


def test_model_dir_with_mismatched_sizes(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 96  # weights were saved with 128
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelError, match=str(tmp_path / "m")):
        ZRewardModel.from_pretrained(tmp_path / "m")


def test_model_dir_with_tokenizer_of_another_model(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["score_token_ids"] = [5, 6, 7, 8, 9]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelError, match="does not belong"):
        Scorer.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("what", ["no_dir", "no_config", "no_weights", "bad_json"])
def test_model_dir_missing_parts(tiny_dir, tmp_path, what):
    target = tmp_path / "m"
    if what != "no_dir":
        shutil.copytree(tiny_dir, target)
    if what == "no_config":
        (target / "config.json").unlink()
    elif what == "no_weights":
        (target / "model.safetensors").unlink()
    elif what == "bad_json":
        (target / "config.json").write_text("{not json")
    with pytest.raises(InvalidModelError) as info:
        ZRewardModel.from_pretrained(target)
    assert str(target) in str(info.value)
