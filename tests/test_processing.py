"""Image and text processing (docs/design.md §9: one preprocessing path for every input form)."""

import numpy as np
import pytest
import torch
from PIL import Image

from zreward_deploy.processing import ZRewardProcessor, image_to_tensor, preprocess_tensor


def _rgb(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_pil_numpy_torch_paths_agree():
    array = _rgb()
    expected = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    for image in (
        Image.fromarray(array),
        array,
        torch.from_numpy(array).permute(2, 0, 1),
        torch.from_numpy(array).permute(2, 0, 1).float() / 255,
        array.astype(np.float32) / 255,
    ):
        torch.testing.assert_close(image_to_tensor(image), expected)


def test_file_path_reads_like_pil(tmp_path):
    array = _rgb()
    Image.fromarray(array).save(tmp_path / "a.png")
    torch.testing.assert_close(image_to_tensor(tmp_path / "a.png"), image_to_tensor(array))
    torch.testing.assert_close(image_to_tensor(str(tmp_path / "a.png")), image_to_tensor(array))


def test_modes_convert_to_rgb():
    gray = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    out = image_to_tensor(Image.fromarray(gray, mode="L"))
    assert out.shape == (3, 20, 30)
    torch.testing.assert_close(out[0], torch.from_numpy(gray).float() / 255)
    torch.testing.assert_close(out[0], out[2])
    # RGBA: alpha composited over white (fully transparent -> white, opaque -> the colour)
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, ..., 3] = 255  # top half opaque red, bottom half transparent
    out = image_to_tensor(Image.fromarray(rgba, mode="RGBA"))
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(out[:, 3, 0], torch.tensor([1.0, 1.0, 1.0]))
    # palette and 1-bit
    assert image_to_tensor(Image.fromarray(_rgb()).convert("P")).shape == (3, 20, 30)
    assert image_to_tensor(Image.fromarray(gray).convert("1")).shape == (3, 20, 30)
    assert image_to_tensor(Image.fromarray(_rgb()).convert("CMYK")).shape == (3, 20, 30)


def test_sixteen_bit_keeps_its_range(tmp_path):
    deep = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 250).astype(np.uint16)  # up to 63750
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = image_to_tensor(tmp_path / "deep.png")
    torch.testing.assert_close(out[0], torch.from_numpy(deep.astype(np.float32) / 65535))
    torch.testing.assert_close(image_to_tensor(deep)[0], torch.from_numpy(deep.astype(np.float32) / 65535))


def test_preprocess_tensor_is_differentiable_and_normalises():
    images = torch.rand(2, 3, 50, 70, requires_grad=True)
    out = preprocess_tensor(images, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.shape == (2, 3, 32, 32)
    out.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # no resize at the target size: exactly (x - mean) / std
    same = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(preprocess_tensor(same, 32, (0.5,) * 3, (0.25,) * 3), (same - 0.5) / 0.25)


@pytest.mark.gpu
def test_preprocess_tensor_stays_on_cuda():
    images = torch.rand(2, 3, 50, 70, device="cuda")
    assert preprocess_tensor(images, 32, (0.5,) * 3, (0.5,) * 3).device.type == "cuda"


def test_processor_batches_mixed_inputs_like_single_tensor_path(tiny):
    _, processor = tiny
    array = _rgb(48, 48)
    as_tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    batch = processor.preprocess_images([array, Image.fromarray(array), as_tensor])
    direct = processor.preprocess_tensor(as_tensor.unsqueeze(0))
    for i in range(3):
        torch.testing.assert_close(batch[i : i + 1], direct)


def test_prompt_encoding_right_pads(tiny):
    _, processor = tiny
    ids, mask = processor.encode_prompts(["a star", "two red cubes on a wooden table"])
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[1].all() and not mask[0].all()
    # right padding: ones then zeros, pad id in the padded slots
    n = int(mask[0].sum())
    assert mask[0, :n].all() and not mask[0, n:].any()
    assert (ids[0, n:] == processor.tokenizer.pad_token_id).all()
    text = processor.tokenizer.decode(ids[1, : int(mask[1].sum())])
    assert text == processor.config.templates["student_prompt"].replace(
        "{prompt}", "two red cubes on a wooden table"
    )


def test_suffix_per_dimension_uses_template(tiny):
    _, processor = tiny
    (realism,) = processor.suffix_ids(["realism"])
    text = processor.tokenizer.decode(realism)
    assert text.startswith("Rate its realism:")
    assert "from 1 to 5" in text


def test_processor_round_trip(tiny, tiny_dir):
    _, processor = tiny
    loaded = ZRewardProcessor.from_pretrained(tiny_dir)
    assert loaded.score_token_ids == processor.score_token_ids
    assert (
        loaded.encode_prompts(["two red cubes"])[0].tolist()
        == processor.encode_prompts(["two red cubes"])[0].tolist()
    )
