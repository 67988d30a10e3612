"""The Scorer API: shapes, micro-batching, dimension subsets, reward weights, the tensor path."""

import numpy as np
import pytest
import torch

from zreward_deploy.errors import ZRewardInputError
from zreward_deploy.scoring import Scorer, load_scorer

PROMPTS = [
    "two red cubes on a wooden table",
    "a star",
    "three blue spheres to the left of a cone",
    "one green ring",
    "a purple triangle",
    "two stars",
    "a box",
]


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (24 + 4 * i, 40 - 2 * i, 3), dtype=np.uint8) for i in range(n)]


def test_shapes_and_reward(tiny):
    scorer = Scorer(*tiny)
    res = scorer.score(_images(3), PROMPTS[:3])
    assert res.probs.shape == (3, 4, 5) and res.mean.shape == (3, 4) and res.std.shape == (3, 4)
    assert res.reward.shape == (3,)
    assert res.dimensions == ["alignment", "realism", "aesthetics", "plausibility"]
    assert res.values == [1.0, 2.0, 3.0, 4.0, 5.0]
    torch.testing.assert_close(res.reward, res.mean.mean(1))  # default weights: the mean
    assert not res.probs.requires_grad


def test_micro_batching_matches_one_batch(tiny):
    model, processor = tiny
    images = _images(7)
    whole = Scorer(model, processor, max_batch_size=64).score(images, PROMPTS)
    for size in (1, 2, 3):
        parts = Scorer(model, processor, max_batch_size=size).score(images, PROMPTS)
        torch.testing.assert_close(parts.probs, whole.probs, atol=1e-6, rtol=0)


def test_dimension_subset_and_order(tiny):
    scorer = Scorer(*tiny)
    full = scorer.score(_images(2), PROMPTS[:2])
    sub = scorer.score(_images(2), PROMPTS[:2], dimensions=["plausibility", "alignment"])
    assert sub.dimensions == ["plausibility", "alignment"]
    torch.testing.assert_close(sub.probs[:, 0], full.probs[:, 3], atol=1e-6, rtol=0)
    torch.testing.assert_close(sub.probs[:, 1], full.probs[:, 0], atol=1e-6, rtol=0)
    one = scorer.score(_images(2), PROMPTS[:2], dimensions="realism")
    torch.testing.assert_close(one.reward, one.mean[:, 0])


def test_weighted_reward():
    from zreward_deploy.presets import build_preset

    rubric = [
        {"name": "realism", "instruction": "real?", "weight": 3.0},
        {"name": "alignment", "instruction": "matches?", "weight": 1.0},
    ]
    scorer = Scorer(*build_preset("tiny", rubric=rubric))
    res = scorer.score(_images(2), PROMPTS[:2])
    torch.testing.assert_close(res.reward, 0.75 * res.mean[:, 0] + 0.25 * res.mean[:, 1])


def test_one_prompt_for_all_images(tiny):
    scorer = Scorer(*tiny)
    a = scorer.score(_images(3), "a star")
    b = scorer.score(_images(3), ["a star"] * 3)
    torch.testing.assert_close(a.probs, b.probs)


def test_tensor_path_is_differentiable_and_matches_file_path(tiny):
    scorer = Scorer(*tiny)
    array = _images(1)[0]
    pixels = (torch.from_numpy(array).permute(2, 0, 1).float() / 255).unsqueeze(0).requires_grad_(True)
    res = scorer.score_tensor(pixels, "a star")
    res.reward.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    torch.testing.assert_close(res.probs.detach(), scorer.score([array], ["a star"]).probs, atol=1e-6, rtol=0)


def test_progress_callback_counts_every_item(tiny):
    seen = []
    Scorer(*tiny, max_batch_size=2).score(
        _images(5), [*PROMPTS[:4], ""], errors="collect", progress=seen.append
    )
    assert sum(seen) == 5


def test_load_scorer(tiny_dir):
    scorer = load_scorer(tiny_dir, backend="torch", max_batch_size=4)
    assert scorer.max_batch_size == 4 and scorer.backend == "torch"
    with pytest.raises(ZRewardInputError, match="unknown backend"):
        load_scorer(tiny_dir, backend="nope")


def test_bad_arguments(tiny):
    with pytest.raises(ZRewardInputError, match="max_batch_size"):
        Scorer(*tiny, max_batch_size=0)
    with pytest.raises(ZRewardInputError, match="errors"):
        Scorer(*tiny).score(_images(1), ["a"], errors="ignore")
