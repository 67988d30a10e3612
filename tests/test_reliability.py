"""Reliability of the scoring path: every bad input gets an error naming its item, no other item's result
is lost, nothing hangs, memory is bounded per call, and a damaged model folder is refused naming the file.

Requirements covered (one section each): memory bounded per call, not per image; any failure of one item
becomes that item's error; ``score_tensor`` validates like ``score``; damaged model folders raise
``InvalidModelError`` naming the file; command-line edge cases answer in one line.
"""

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from zreward_deploy.cli import main
from zreward_deploy.errors import (
    InvalidImageError,
    InvalidModelError,
    InvalidPromptError,
)
from zreward_deploy.scoring import Scorer


@pytest.fixture(scope="module")
def scorer(tiny):
    model, processor = tiny
    return Scorer(model, processor, max_batch_size=4)


def _png(path, size=(24, 24), seed=0):
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def _dds(fourcc: bytes = b"XXXX") -> bytes:
    """A DDS file whose pixel format PIL does not implement: its plugin raises NotImplementedError."""
    header = struct.pack("<7I", 124, 0x1007, 8, 8, 0, 0, 0) + b"\0" * 44
    pixel_format = struct.pack("<2I4s5I", 32, 0x4, fourcc, 0, 0, 0, 0, 0)
    caps = struct.pack("<5I", 0x1000, 0, 0, 0, 0)
    return b"DDS " + header + pixel_format + caps + b"\0" * 64


# --------------------------------------------------------------------------------------------------
# Memory is bounded per call, not per image
# --------------------------------------------------------------------------------------------------

_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from zreward_deploy.presets import build_preset
    from zreward_deploy.scoring import Scorer

    model, processor = build_preset("tiny", seed=0)
    scorer = Scorer(model, processor, max_batch_size=8)
    scorer.score([np.zeros((16, 16, 3), np.uint8)], "warm up")  # libraries loaded, nothing big yet
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = scorer.score([sys.argv[1]] * int(sys.argv[2]), "a cube", errors="collect")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kib": peak - base, "errors": len(result.errors)}))
    """
)


def _peak_growth_mib(image, count: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(image), str(count)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["errors"] == 0
    return row["growth_kib"] / 1024


def test_large_images_are_resized_as_decoded_so_memory_does_not_grow_with_the_batch(tmp_path):
    """Six legal 4096² PNGs in one micro-batch: the peak must stay far below one full-resolution float
    copy per image (6 x 12 bytes x 16.8 Mpx = 1.2 GB, what a batch of decoded images used to hold).

    Measured as the growth of the peak resident size in a fresh process (a memory bound, not a timing).
    """
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    big = tmp_path / "big.png"
    Image.fromarray(small).resize((4096, 4096), Image.NEAREST).save(big)
    one_float_copy_mib = 12 * 4096 * 4096 / 2**20  # 192 MiB
    growth = _peak_growth_mib(big, 6)
    assert growth < 1.5 * one_float_copy_mib, f"peak grew by {growth:.0f} MiB for 6 images"


def test_pixel_limit_applies_to_numpy_and_torch_inputs(tiny):
    from zreward_deploy.processing import ZRewardProcessor

    model, processor = tiny
    limited = ZRewardProcessor(processor.tokenizer, processor.config, max_image_pixels=100)
    small_scorer = Scorer(model, limited)
    images = [
        np.zeros((11, 11, 3), dtype=np.uint8),  # 121 px > 100
        torch.zeros(3, 11, 11),
        np.zeros((10, 10, 3), dtype=np.uint8),  # 100 px: allowed
    ]
    result = small_scorer.score(images, "a cube", errors="collect")
    assert sorted(result.errors) == [0, 1]
    for i in (0, 1):
        assert isinstance(result.errors[i], InvalidImageError)
        assert "more than the limit of 100" in str(result.errors[i])
    assert torch.isfinite(result.reward[2])


def test_an_allocation_failure_while_decoding_is_that_items_error(scorer, tmp_path, monkeypatch):
    import zreward_deploy.processing as processing

    good, doomed = _png(tmp_path / "good.png"), _png(tmp_path / "doomed.png", seed=1)
    real = processing.load_image_file

    def load(path, *args, **kwargs):
        if str(path) == str(doomed):
            raise MemoryError("cannot allocate 1.8 GB")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(processing, "load_image_file", load)
    result = scorer.score([str(good), str(doomed), str(good)], "a cube", errors="collect")
    assert list(result.errors) == [1]
    assert isinstance(result.errors[1], InvalidImageError)
    assert torch.isfinite(result.reward[[0, 2]]).all()


# --------------------------------------------------------------------------------------------------
# Any failure of one item becomes that item's named error
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["two \ud800 cubes", "caf\udce9 au lait"])  # lone / surrogateescape
def test_prompts_that_are_not_valid_unicode_are_item_errors(scorer, prompt):
    images = [np.zeros((8, 8, 3), dtype=np.uint8)] * 3
    result = scorer.score(images, ["a cube", prompt, "a ball"], errors="collect")
    assert list(result.errors) == [1]
    assert isinstance(result.errors[1], InvalidPromptError)
    assert "not valid Unicode" in str(result.errors[1])
    assert torch.isfinite(result.reward[[0, 2]]).all()
    with pytest.raises(InvalidPromptError, match="not valid Unicode"):
        scorer.score(images[:1], prompt)


def test_a_decoder_raising_an_unexpected_exception_type_is_an_item_error(scorer, tmp_path):
    (tmp_path / "bad.dds").write_bytes(_dds())  # PIL's DDS plugin: NotImplementedError
    good = _png(tmp_path / "good.png")
    result = scorer.score([str(good), str(tmp_path / "bad.dds")], "a cube", errors="collect")
    assert list(result.errors) == [1]
    assert isinstance(result.errors[1], InvalidImageError)
    assert "bad.dds" in str(result.errors[1])
    assert torch.isfinite(result.reward[0])


def test_decompression_bomb_is_an_item_error(scorer, tmp_path):
    # 20000 x 20000 = 400 Mpx: over PIL's own bomb threshold (2 x 89 Mpx), so PIL raises
    # DecompressionBombError from the header, before our pixel limit is consulted.
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")
    good = _png(tmp_path / "good.png")
    result = scorer.score([str(tmp_path / "bomb.png"), str(good)], "a cube", errors="collect")
    assert list(result.errors) == [0]
    assert isinstance(result.errors[0], InvalidImageError)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs need a POSIX system")
def test_a_fifo_named_as_an_image_is_refused_without_blocking(scorer, tmp_path, time_limit):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    good = _png(tmp_path / "good.png")
    with time_limit(20):
        result = scorer.score([str(fifo), str(good)], "a cube", errors="collect")
    assert list(result.errors) == [0]
    assert "FIFO" in str(result.errors[0])
    assert torch.isfinite(result.reward[1])


def test_model_producing_nan_is_never_returned_without_an_error(tiny, monkeypatch):
    model, processor = tiny
    scorer = Scorer(model, processor)
    real = Scorer._forward

    def poisoned(self, *args):
        probs, mean, std = real(self, *args)
        probs, mean = probs.clone(), mean.clone()
        probs[0] = math.nan
        mean[0] = math.nan
        return probs, mean, std

    monkeypatch.setattr(Scorer, "_forward", poisoned)
    images = [np.zeros((8, 8, 3), dtype=np.uint8)] * 2
    result = scorer.score(images, "a cube", errors="collect")
    assert list(result.errors) == [0]
    assert isinstance(result.errors[0], InvalidModelError)
    assert torch.isfinite(result.reward[1])


# --------------------------------------------------------------------------------------------------
# score_tensor validates like score
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: torch.full((2, 3, 16, 16), 200, dtype=torch.uint8), "uint8"),
        (lambda: torch.full((2, 3, 16, 16), 200.0), r"\[0, 1\]"),
        (lambda: torch.full((2, 3, 16, 16), -0.5), r"\[0, 1\]"),
        (lambda: torch.full((2, 3, 16, 16), 1e6), r"\[0, 1\]"),
        (lambda: torch.full((2, 3, 16, 16), 1e30), r"\[0, 1\]"),
        (lambda: torch.full((2, 3, 16, 16), math.nan), "NaN"),
        (lambda: torch.full((2, 3, 16, 16), math.inf), "NaN or infinite"),
        (lambda: torch.zeros(0, 3, 16, 16), "empty batch"),
        (lambda: torch.zeros(2, 3, 0, 16), "zero size"),
        (lambda: torch.zeros(2, 3, 16), r"\[B, 3, H, W\]"),
        (lambda: torch.zeros(2, 3, 16, 16, dtype=torch.int64), "not supported"),
    ],
)
def test_score_tensor_refuses_what_score_refuses(scorer, make, reason):
    images = make()
    with pytest.raises(InvalidImageError, match=reason):
        scorer.score_tensor(images, "a cube")


def test_score_tensor_names_the_offending_item(scorer):
    images = torch.rand(3, 3, 16, 16)
    images[2, 0, 0, 0] = 7.0
    with pytest.raises(InvalidImageError) as info:
        scorer.score_tensor(images, "a cube")
    assert info.value.item == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_score_tensor_accepts_float_dtypes_and_stays_differentiable(scorer, dtype):
    images = torch.rand(2, 3, 20, 12).to(dtype).requires_grad_(True)
    result = scorer.score_tensor(images, ["a cube", "a ball"])
    assert torch.isfinite(result.reward).all()
    result.reward.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad.float()).all()


# --------------------------------------------------------------------------------------------------
# Damaged model folders raise InvalidModelError naming the file
# --------------------------------------------------------------------------------------------------


def _edit_json(path, **changes):
    content = json.loads(path.read_text())
    content.update(changes)
    path.write_text(json.dumps(content))


def _edit_config(folder, **changes):
    _edit_json(folder / "config.json", **changes)


def _nan_weights(folder):
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], math.nan)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


DAMAGE = {
    "empty safetensors": ("model.safetensors", lambda d: (d / "model.safetensors").write_bytes(b"")),
    "truncated safetensors": (
        "model.safetensors",
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]),
    ),
    "config.json is a list": ("config.json", lambda d: (d / "config.json").write_text("[1, 2]")),
    "config.json is not JSON": ("config.json", lambda d: (d / "config.json").write_text("{oops")),
    "image_std of 0": ("config.json", lambda d: _edit_config(d, image_std=[0.0, 0.0, 0.0])),
    "image_mean of one value": ("config.json", lambda d: _edit_config(d, image_mean=[0.5])),
    "processor JSON invalid": (
        "zreward_processor.json",
        lambda d: (d / "zreward_processor.json").write_text("{bad"),
    ),
    "processor JSON a list": (
        "zreward_processor.json",
        lambda d: (d / "zreward_processor.json").write_text("[1]"),
    ),
    "processor setting unknown": (
        "zreward_processor.json",
        lambda d: (d / "zreward_processor.json").write_text('{"max_pixels": 5}'),
    ),
    "processor limit negative": (
        "zreward_processor.json",
        lambda d: (d / "zreward_processor.json").write_text('{"max_image_pixels": -1}'),
    ),
    "tokenizer corrupt": ("", lambda d: (d / "tokenizer.json").write_text("{bad")),
    "tokenizer empty object": ("", lambda d: (d / "tokenizer.json").write_text("{}")),
    # loads, then fails on the first encode: found by the model-folder fuzz test
    "tokenizer limit not a number": (
        "",
        lambda d: _edit_json(d / "tokenizer_config.json", model_max_length=[]),
    ),
    "NaN weights": ("", _nan_weights),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_model_folder_is_refused_naming_the_file(tiny_dir, tmp_path, case):
    file_name, damage = DAMAGE[case]
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    damage(folder)
    with pytest.raises(InvalidModelError) as info:
        Scorer.from_pretrained(folder)
    assert str(info.value.item) == str(folder / file_name).rstrip("/"), str(info.value)


# --------------------------------------------------------------------------------------------------
# Command-line edge cases answer in one line
# --------------------------------------------------------------------------------------------------


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


# CUDA asked of a CPU-only torch build, or of a CUDA build on a machine without a GPU
NO_CUDA = "CPU-only" if torch.version.cuda is None else "no CUDA GPU is visible"


@pytest.mark.parametrize(
    ("device", "words"),
    [("cuda", NO_CUDA), ("cuda:3", NO_CUDA), ("gpu", "unknown device"), ("meta", "not supported")],
)
def test_cli_device_errors_are_one_line(tiny_dir, tmp_path, capsys, device, words):
    if torch.cuda.is_available() and device.startswith("cuda"):
        pytest.skip("this machine has CUDA; the no-CUDA messages cannot appear")
    image = _png(tmp_path / "a.png")
    code = main(
        ["score", "--model", str(tiny_dir), "--image", str(image), "--prompt", "a", "--device", device]
    )
    assert code == 2
    assert words in _one_line_error(capsys)


@pytest.mark.parametrize("value", [",", "alignment,,realism", " "])
def test_cli_empty_list_entries_are_refused(tiny_dir, tmp_path, capsys, value):
    image = _png(tmp_path / "a.png")
    code = main(
        ["score", "--model", str(tiny_dir), "--image", str(image), "--prompt", "a", "--dimensions", value]
    )
    assert code == 2
    assert "--dimensions" in _one_line_error(capsys)


def test_cli_unwritable_output_is_one_line(tmp_path, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    # As root, chmod cannot make a folder unwritable; a refusing mkdtemp stands in for a read-only mount.
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    code = main(["model", "create", "--out", str(tmp_path / "ro" / "model")])
    assert code == 1
    err = _one_line_error(capsys)
    assert "Permission denied" in err and "ro" in err


def test_cli_model_create_refuses_a_file_and_a_trained_model(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["model", "create", "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in _one_line_error(capsys)
    assert main(["model", "create", "--out", str(tmp_path / "m")]) == 0
    capsys.readouterr()
    assert main(["model", "create", "--out", str(tmp_path / "m")]) == 2
    assert "--overwrite" in _one_line_error(capsys)


@pytest.mark.parametrize("single", ["a.png", "a_path_string"])
def test_a_single_string_where_a_list_of_images_is_expected(scorer, single):
    with pytest.raises(InvalidImageError, match=r"pass \[image\]"):
        scorer.score(single, "a cube")


def test_single_pil_image_or_chw_tensor_is_refused_with_the_fix(scorer):
    with pytest.raises(InvalidImageError, match=r"pass \[image\]"):
        scorer.score(Image.new("RGB", (8, 8)), "a cube")
    with pytest.raises(InvalidImageError, match=r"pass \[image\]"):
        scorer.score(torch.zeros(3, 8, 8), "a cube")
    assert len(scorer.score(torch.zeros(2, 3, 8, 8), "a cube")) == 2  # a batched tensor is a sequence


def test_exif_orientation_is_applied(tmp_path):
    from zreward_deploy.processing import image_to_tensor

    array = np.zeros((10, 30, 3), dtype=np.uint8)  # stored landscape: 30 wide, 10 high
    array[:, :5] = 255  # a white band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the viewer shows it portrait, 10 wide, 30 high
    Image.fromarray(array).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    out = image_to_tensor(tmp_path / "rotated.jpg")
    assert out.shape == (3, 30, 10)
    assert out[:, :5].mean() > 0.9  # the band is now on top
    assert out[:, -5:].mean() < 0.1
