"""ONNX Runtime scorer (export/ort.py) behind the one Scorer interface: same results as torch, same input
handling, any subset and order of the exported dimensions, clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from zreward_deploy.errors import (
    InvalidModelError,
    InvalidPromptError,
    MissingDependencyError,
    UnknownDimensionError,
    ZRewardInputError,
)
from zreward_deploy.export.contract import read_export_metadata
from zreward_deploy.export.ort import OrtScorer, OrtSessionConfig
from zreward_deploy.scoring import Scorer, load_scorer


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    # odd sizes and a greyscale image: the processor resizes and converts, as for torch
    return [rng.integers(0, 256, (40 + 7 * i, 50 - 3 * i, 3), dtype=np.uint8) for i in range(4)] + [
        rng.integers(0, 256, (33, 33), dtype=np.uint8)
    ]


PROMPTS = ["a cat", "two red cubes on a wooden table", "x", "", "three blue spheres to the left of a cone"]


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_scores_match_torch_through_load_scorer(onnx_exports, images, dtype):
    out, model, processor = onnx_exports("qwen2", dtype)
    reference = Scorer(model, processor).score(images, PROMPTS, errors="collect")
    scorer = load_scorer(out, backend="onnx", device="cpu", max_batch_size=2)  # 4 items -> 2 micro-batches
    assert isinstance(scorer, OrtScorer) and scorer.backend == "onnx"
    result = scorer.score(images, PROMPTS, errors="collect")
    assert list(result.errors) == [3] and isinstance(result.errors[3], InvalidPromptError)
    assert result.dimensions == reference.dimensions and result.values == reference.values
    ok = result.ok
    atol = 1e-4 if dtype == "fp32" else 1e-2
    for name in ("probs", "mean", "std", "reward"):
        got, want = getattr(result, name)[ok], getattr(reference, name)[ok]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=atol * (1 if name == "probs" else 4))
    assert torch.isnan(result.reward[3])


def test_any_subset_and_order_of_dimensions(onnx_exports, images):
    out, model, processor = onnx_exports("qwen2", "fp32")
    scorer = OrtScorer.from_pretrained(out)
    full = scorer.score(images[:3], PROMPTS[:3])
    part = scorer.score(images[:3], PROMPTS[:3], dimensions=["plausibility", "alignment"])
    assert part.dimensions == ["plausibility", "alignment"]
    torch.testing.assert_close(part.mean, full.mean[:, [3, 0]], rtol=0, atol=1e-6)
    torch.testing.assert_close(part.probs, full.probs[:, [3, 0]], rtol=0, atol=1e-6)
    # the reward is re-weighted over the chosen dimensions, exactly as the torch scorer does it
    torch_part = Scorer(model, processor).score(
        images[:3], PROMPTS[:3], dimensions=["plausibility", "alignment"]
    )
    torch.testing.assert_close(part.reward, torch_part.reward, rtol=0, atol=1e-4)
    # one dimension by name
    assert scorer.score(images[:1], "a cat", dimensions="realism").probs.shape == (1, 1, 5)


def test_dimensions_not_exported_raise(onnx_exports, images):
    out, _, _ = onnx_exports("qwen2", "fp32", ("realism", "alignment"))
    scorer = load_scorer(out, backend="onnx")
    assert scorer.score(images[:2], "a cat").dimensions == ["realism", "alignment"]  # default: graph order
    with pytest.raises(UnknownDimensionError, match="aesthetics"):
        scorer.score(images[:2], "a cat", dimensions=["aesthetics"])
    with pytest.raises(UnknownDimensionError, match="aesthetics"):  # below the rubric check, too
        scorer._forward(
            torch.zeros(1, 3, 32, 32), torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4), ["aesthetics"]
        )


def test_session_settings_are_applied(onnx_exports, tmp_path):
    out, _, _ = onnx_exports("qwen2", "fp32")
    optimized = tmp_path / "optimized.onnx"
    cfg = OrtSessionConfig(
        graph_optimization_level="basic", intra_op_num_threads=1, optimized_model_path=str(optimized)
    )
    scorer = OrtScorer.from_pretrained(out, session_config=cfg)
    info = scorer.describe()
    assert info["intra_op_num_threads"] == 1 and "BASIC" in info["graph_optimization_level"]
    assert info["providers"] == ["CPUExecutionProvider"]
    assert optimized.exists()
    with pytest.raises(ZRewardInputError):
        OrtSessionConfig(graph_optimization_level="max")


def test_clear_errors(onnx_exports, tiny_dir, monkeypatch):
    out, _, _ = onnx_exports("qwen2", "fp32")
    with pytest.raises(InvalidModelError, match="not an ONNX export"):
        load_scorer(tiny_dir, backend="onnx")  # a torch model directory is not an export
    with pytest.raises(ZRewardInputError, match="fp32"):
        OrtScorer.from_pretrained(out, dtype=torch.float16)
    with pytest.raises(ZRewardInputError, match="cpu' or 'cuda"):
        OrtScorer.from_pretrained(out, device="mps")
    with pytest.raises(ZRewardInputError, match="max_batch_size"):
        OrtScorer.from_pretrained(out, max_batch_size=0)
    meta = read_export_metadata(out)
    assert meta["format"] == "zreward-onnx"

    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(MissingDependencyError, match=r"zreward-deploy\[gpu\]"):
            OrtScorer.from_pretrained(out, device="cuda")

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the `onnx` extra were not installed
    with pytest.raises(MissingDependencyError, match=r"zreward-deploy\[onnx\]"):
        load_scorer(out, backend="onnx")


def test_load_scorer_turns_a_missing_backend_module_into_a_clear_error(monkeypatch, tmp_path):
    """A backend whose module needs a package that is not installed: MissingDependencyError naming the extra."""
    import zreward_deploy.scoring as scoring

    monkeypatch.setitem(scoring.SCORER_BACKENDS, "tensorrt", "some_uninstalled_runtime_pkg.module:Scorer")
    with pytest.raises(MissingDependencyError, match=r"zreward-deploy\[gpu\]"):
        load_scorer(tmp_path, backend="tensorrt")
