"""Realistic sizes (zreward_deploy/native.py, ``REALISTIC_SIZES``): each config builds on the meta device (no
memory, no download) and has the published checkpoint's parameter count, on both transformers lines.

The figures are the published ones, not computed by the package:

* Qwen2-VL-2B-Instruct: 2,208,985,600, from Qwen2-VL-2B's ``model.safetensors.index.json``
  (``"total_size": 4417971200`` bytes of bf16 weights, 2 bytes each; the Hub shows 2.21B params).
* Qwen2.5-VL-3B-Instruct: 3.75B (the Hub's safetensors metadata).
* Qwen3-VL-2B-Instruct: its one ``model.safetensors`` is listed at 4.26 GB in bf16 on
  huggingface.co/Qwen/Qwen3-VL-2B-Instruct/tree/main: 2.13B parameters, to the 3 digits the listing gives
  (4.255e9 to 4.265e9 bytes).
* SmolVLM-256M-Instruct: ``model.safetensors`` listed at 513 MB in bf16 (256M params per the Hub's
  safetensors metadata): 256.25M to 256.75M.
* SmolVLM-Instruct (2.2B): 2.25B params per the Hub's safetensors metadata (2.245B to 2.255B).

Tolerances: the index gives an exact count; the rounded listings allow exactly their rounding. Tied
embeddings (the Qwen-VL checkpoints) are one tensor counted once, as in the checkpoint files: the test
checks the tying itself, so an untied model (one extra ``vocab x hidden`` matrix, 233M to 311M here)
cannot pass. The SmolVLM checkpoints are untied and their files hold both matrices.
"""

from __future__ import annotations

import pytest
import torch

from zreward_deploy.errors import InvalidModelError
from zreward_deploy.native import REALISTIC_SIZES, NativeRewardModel, realistic_config

# name -> (published parameter count, allowed absolute difference, tied embeddings)
PUBLISHED = {
    "qwen2-vl-2b": (2_208_985_600, 0, True),
    "qwen2.5-vl-3b": (3.75e9, 0.005e9, True),
    "qwen3-vl-2b": (4.26e9 / 2, 0.005e9 / 2, True),
    "smolvlm-256m": (513e6 / 2, 0.5e6 / 2, False),
    "smolvlm-2.2b": (2.25e9, 0.005e9, False),
}
# name -> (special token ids the published config.json gives, the image side of the one-pass model)
SPECIAL = {
    "qwen2-vl-2b": ({"image_token_id": 151655, "vision_start_token_id": 151652, "vision_end_token_id": 151653}, 448),
    "qwen2.5-vl-3b": ({"image_token_id": 151655, "vision_start_token_id": 151652, "vision_end_token_id": 151653}, 448),
    "qwen3-vl-2b": ({"image_token_id": 151655, "vision_start_token_id": 151652, "vision_end_token_id": 151653}, 448),
    "smolvlm-256m": ({"image_token_id": 49190}, 512),
    "smolvlm-2.2b": ({"image_token_id": 49153}, 384),
}  # fmt: skip


def test_every_family_has_a_realistic_size():
    families = {REALISTIC_SIZES[name][0] for name in REALISTIC_SIZES}
    assert families == {
        "qwen2_vl",
        "qwen2_5_vl",
        "qwen3_vl",
        "idefics3",
    }  # SmolVLM v1 is published as idefics3
    assert set(REALISTIC_SIZES) == set(PUBLISHED)


def _meta_model(name: str):
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(realistic_config(name))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_realistic_size_has_the_published_parameter_count(name):
    published, tolerance, tied = PUBLISHED[name]
    hf = _meta_model(name)
    assert hf.config.model_type == REALISTIC_SIZES[name][0]
    count = sum(p.numel() for p in hf.parameters())  # shared tensors once, as in the checkpoint files
    assert abs(count - published) <= tolerance, f"{name}: {count:,} parameters, published {published:,.0f}"
    assert (hf.get_input_embeddings().weight is hf.get_output_embeddings().weight) is tied
    ids, _ = SPECIAL[name]
    for key, value in ids.items():
        assert getattr(hf.config, key) == value


def _head(name: str, n_image: int) -> list[int]:
    ids, _ = SPECIAL[name]
    image = ids["image_token_id"]
    if "vision_start_token_id" in ids:
        return [1, 2, ids["vision_start_token_id"], *[image] * n_image, ids["vision_end_token_id"], 3]
    return [1, 2, *[image] * n_image, 3]


@pytest.mark.parametrize(
    ("name", "grid"),
    [
        ("qwen2-vl-2b", (16, 16)),  # 448 / (patch 14 x merge 2)
        ("qwen2.5-vl-3b", (16, 16)),
        ("qwen3-vl-2b", (14, 14)),  # 448 / (patch 16 x merge 2)
        ("smolvlm-256m", (8, 8)),  # 512 / (patch 16 x pixel shuffle 4): the published 64 image tokens
        ("smolvlm-2.2b", (9, 9)),  # 384 px: 27 patches of 14 (the conv drops 6 px), shuffle 3
    ],
)
def test_a_one_pass_model_wraps_the_realistic_size_on_the_meta_device(name, grid):
    hf = _meta_model(name)
    _, side = SPECIAL[name]
    n = grid[0] * grid[1]
    reward = NativeRewardModel(
        hf, _head(name, n), [16, 17, 18, 19, 20], [1.0, 2.0, 3.0, 4.0, 5.0], (side, side)
    )
    assert reward.grid == grid and reward.num_image_tokens == n
    assert reward.family == REALISTIC_SIZES[name][0]


def test_an_unknown_size_is_refused_by_name():
    with pytest.raises(InvalidModelError, match="qwen2-vl-2b"):
        realistic_config("qwen2-vl-700b")
