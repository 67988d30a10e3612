"""TensorRT backend (export/tensorrt.py).

Without TensorRT (this project's machines): the pure parts (profiles, buckets, padding, cache keys, build
settings) and the error a user gets. With TensorRT and a GPU: the engine tests marked ``tensorrt``, which
``tests/export/conftest.py`` skips, with the reason, where ``import tensorrt`` fails.
"""

from __future__ import annotations

import sys

import pytest
import torch

from zreward_deploy.errors import MissingDependencyError, ZRewardInputError
from zreward_deploy.export.tensorrt import (
    TensorRTBuildConfig,
    bucket_for_length,
    check_buckets,
    engine_cache_key,
    export_tensorrt,
    import_tensorrt,
    optimization_profiles,
    pad_to_length,
)
from zreward_deploy.scoring import Scorer, load_scorer

# ---------------------------------------------------------------------------------------------------
# Pure functions: run everywhere
# ---------------------------------------------------------------------------------------------------


def test_profiles_one_per_bucket_with_dynamic_batch():
    cfg = TensorRTBuildConfig(max_batch_size=16, opt_batch_size=4, text_length_buckets=(24, 96, 256))
    profiles = optimization_profiles(cfg, image_size=224)
    assert len(profiles) == 3
    for profile, length in zip(profiles, (24, 96, 256), strict=True):
        assert set(profile) == {"input_ids", "attention_mask", "pixel_values"}
        assert profile["input_ids"] == ((1, length), (4, length), (16, length))
        assert profile["attention_mask"] == profile["input_ids"]
        assert profile["pixel_values"] == ((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))


def test_build_config_is_validated():
    with pytest.raises(ZRewardInputError, match="opt"):
        TensorRTBuildConfig(max_batch_size=4, opt_batch_size=8)
    with pytest.raises(ZRewardInputError, match="ascending"):
        TensorRTBuildConfig(text_length_buckets=(64, 32))
    with pytest.raises(ZRewardInputError, match="ascending"):
        TensorRTBuildConfig(text_length_buckets=(32, 32))
    with pytest.raises(ZRewardInputError):
        TensorRTBuildConfig(workspace_gib=0)
    with pytest.raises(ZRewardInputError, match="prompt limit"):
        check_buckets(TensorRTBuildConfig(text_length_buckets=(32, 64)), max_prompt_tokens=256)
    check_buckets(TensorRTBuildConfig(text_length_buckets=(32, 256)), max_prompt_tokens=256)


@pytest.mark.parametrize(("length", "index"), [(1, 0), (32, 0), (33, 1), (64, 1), (65, 2), (256, 3)])
def test_bucket_for_length(length, index):
    assert bucket_for_length(length, (32, 64, 128, 256)) == index


def test_bucket_for_too_long_text_raises():
    with pytest.raises(ZRewardInputError, match="longer than the largest"):
        bucket_for_length(257, (32, 64, 128, 256))


def test_right_padding_to_a_bucket_does_not_change_scores(tiny):
    """The premise of text-length buckets (TensorRT profiles, Triton batching): padding is inert."""
    model, processor = tiny
    names = model.config.get_rubric().names
    ids, mask = processor.encode_prompts(["a cat", "two red cubes on a wooden table"])
    padded_ids, padded_mask = pad_to_length(ids, mask, 64, processor.tokenizer.pad_token_id)
    assert padded_ids.shape == (2, 64) and padded_mask[:, ids.shape[1] :].sum() == 0
    assert torch.equal(padded_ids[:, : ids.shape[1]], ids)
    pixel_values = torch.randn(2, 3, model.config.image_size, model.config.image_size)
    with torch.no_grad():
        short = model(pixel_values, ids, mask, processor.suffix_ids(names))
        long = model(pixel_values, padded_ids, padded_mask, processor.suffix_ids(names))
    torch.testing.assert_close(long.probs, short.probs, rtol=0, atol=1e-5)
    with pytest.raises(ZRewardInputError):
        pad_to_length(padded_ids, padded_mask, 8, 0)


def test_engine_cache_key_covers_everything_that_invalidates_a_plan():
    cfg = TensorRTBuildConfig()
    profiles = optimization_profiles(cfg, 224)
    base = dict(
        onnx_sha256="ab" * 32,
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability=(9, 0),
        tensorrt_version="10.13.3",
        profiles=profiles,
        builder_settings={"workspace_gib": 4.0, "opt_level": 3},
    )
    key = engine_cache_key(**base)
    assert len(key) == 24 and int(key, 16) >= 0
    assert engine_cache_key(**base) == key  # deterministic
    changes = {
        "onnx_sha256": "cd" * 32,
        "gpu_name": "NVIDIA H200",
        "compute_capability": (8, 9),
        "tensorrt_version": "10.14.1",
        "profiles": optimization_profiles(TensorRTBuildConfig(max_batch_size=64), 224),
        "builder_settings": {"workspace_gib": 8.0, "opt_level": 3},
    }
    keys = {engine_cache_key(**{**base, name: value}) for name, value in changes.items()}
    assert key not in keys and len(keys) == len(changes)


def test_without_tensorrt_every_entry_point_says_what_to_install(onnx_exports, tmp_path, monkeypatch):
    out, _, _ = onnx_exports("qwen2", "fp32")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what a machine without TensorRT sees
    with pytest.raises(MissingDependencyError, match=r"TensorRT backend.*zreward-deploy\[gpu\]"):
        import_tensorrt()
    with pytest.raises(MissingDependencyError, match=r"zreward-deploy\[gpu\]"):
        load_scorer(out, backend="tensorrt", device="cuda")
    with pytest.raises(MissingDependencyError):
        export_tensorrt(out, tmp_path / "trt")
    assert not (tmp_path / "trt").exists()  # nothing half-written


def test_tensorrt_folder_without_build_is_written(onnx_exports, tmp_path):
    """``build=False`` writes the folder and its profiles (no TensorRT needed); the engine is built on load."""
    out, _, _ = onnx_exports("qwen2", "fp32")
    record = export_tensorrt(
        out, tmp_path / "trt", TensorRTBuildConfig(max_batch_size=8, opt_batch_size=2), build=False
    )
    assert record["engine"] is None and len(record["profiles"]) == 4
    assert (tmp_path / "trt" / "model.onnx").exists() and (
        tmp_path / "trt" / "zreward_tensorrt.json"
    ).exists()


# ---------------------------------------------------------------------------------------------------
# Engine tests: wherever `import tensorrt` works (skipped with the reason elsewhere)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():  # queried at run time of the test, never at collection
        pytest.skip("TensorRT is installed but torch sees no CUDA GPU")


@pytest.mark.tensorrt
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_engine_scores_match_torch(onnx_exports, cuda, tmp_path, dtype):
    out, model, processor = onnx_exports("qwen2", dtype)
    cfg = TensorRTBuildConfig(max_batch_size=4, opt_batch_size=2, text_length_buckets=(16, 64, 256))
    record = export_tensorrt(out, tmp_path / "trt", cfg)
    assert record["engine"]["key"] and (tmp_path / "trt" / record["engine"]["file"]).exists()
    scorer = load_scorer(tmp_path / "trt", backend="tensorrt", device="cuda", max_batch_size=4)
    images = [torch.rand(3, 40, 40) for _ in range(6)]
    prompts = ["a cat", "two red cubes on a wooden table " * 3, "x", "a dog", "a very long prompt " * 8, "y"]
    got = scorer.score(images, prompts, dimensions=["realism", "alignment"])
    want = Scorer(model, processor).score(images, prompts, dimensions=["realism", "alignment"])
    atol = 1e-4 if dtype == "fp32" else 1e-2
    torch.testing.assert_close(got.probs, want.probs, rtol=0, atol=atol)
    torch.testing.assert_close(got.reward, want.reward, rtol=0, atol=4 * atol)


@pytest.mark.tensorrt
def test_engine_cache_is_reused(onnx_exports, cuda, tmp_path):
    from zreward_deploy.export.tensorrt import load_or_build_engine

    out, _, _ = onnx_exports("qwen2", "fp32")
    cfg = TensorRTBuildConfig(max_batch_size=2, opt_batch_size=1, text_length_buckets=(256,))
    profiles = optimization_profiles(cfg, 32)
    _, key, built = load_or_build_engine(out / "model.onnx", profiles, cfg, tmp_path)
    assert built and (tmp_path / f"{key}.plan").exists()
    _, again, built_again = load_or_build_engine(out / "model.onnx", profiles, cfg, tmp_path)
    assert again == key and not built_again
