"""The reward model as a differentiable reward function ``R(images, prompts) -> [B]``.

R = Σ_d w_d μ_d over the chosen rubric dimensions, computed by :meth:`Scorer.score_tensor
<zreward_deploy.scoring.Scorer.score_tensor>` with the graph kept, so ``R.sum().backward()`` reaches the
generator's pixels. Weights default to the rubric's, normalised over the chosen dimensions (the scorer's
own ``reward``); given weights are used as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from ..errors import UnknownDimensionError, ZRewardInputError


class ScorerReward:
    """Wrap a scorer with a differentiable ``score_tensor`` (the ``torch`` backend's :class:`Scorer`).

    Args:
        scorer: the reward model. Its parameters are frozen here (``requires_grad_(False)``): the
            gradient is wanted for the images only, and a frozen model skips the weight gradients (and,
            with the fused kernel, the whole ``dW`` path; docs/kernels.md).
        dimensions: rubric dimensions of R (default: the scorer's default, its trained dimensions).
        weights: ``{dimension: w}`` or one weight per dimension, in order (default: the rubric's
            weights normalised over ``dimensions``).
        checkpoint: recompute the reward model's forward pass in the backward pass instead of keeping its
            activations (``torch.utils.checkpoint``).
        shift: when > 0 and the images carry a graph (training), each image is translated by a random
            sub-pixel offset in [-shift, shift] pixels along each axis and zoomed in by a random factor in
            [1, 1 + zoom] (bilinear resampling, edge pixels repeated) before it is scored. A vision
            transformer reads fixed patches, and the cheapest way up its reward is a pattern locked to
            that patch grid (an adversarial texture, not a better image): a random placement per image and
            step gives such a pattern nothing to lock to. Evaluation (no graph) is not jittered.
        zoom: see ``shift``.
        seed: seed of the jitter.
    """

    def __init__(
        self,
        scorer: Any,
        dimensions: Sequence[str] | str | None = None,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        checkpoint: bool = False,
        shift: float = 0.0,
        zoom: float = 0.0,
        seed: int = 0,
    ):
        if not shift >= 0 or not zoom >= 0:
            raise ZRewardInputError("shift", f"shift and zoom must be >= 0, got {shift} and {zoom}")
        if not hasattr(scorer, "score_tensor"):
            raise ZRewardInputError(
                type(scorer).__name__, "has no differentiable score_tensor; use the 'torch' backend's Scorer"
            )
        self.scorer = scorer
        self.dimensions = scorer.dimension_names(dimensions)
        self.weights = _weights(scorer, self.dimensions, weights)
        self.checkpoint = checkpoint
        self.shift, self.zoom = shift, zoom
        self.generator = torch.Generator().manual_seed(seed)
        model = getattr(scorer, "model", None)
        if isinstance(model, torch.nn.Module):
            model.requires_grad_(False)

    def _reward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        result = self.scorer.score_tensor(images, prompts, self.dimensions)
        return result.mean.float() @ self.weights.to(result.mean.device)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str] | str) -> torch.Tensor:
        """``images [B, 3, H, W]`` in [0, 1] -> ``R [B]`` (fp32, differentiable w.r.t. ``images``)."""
        if (self.shift or self.zoom) and images.requires_grad:
            n = images.shape[0]
            offsets = (torch.rand(n, 2, generator=self.generator) * 2 - 1) * self.shift
            zooms = 1 + torch.rand(n, generator=self.generator) * self.zoom
            images = jitter_images(images, offsets, zooms)
        if self.checkpoint and torch.is_grad_enabled() and images.requires_grad:
            return _checkpoint(self._reward, images, prompts, use_reentrant=False)
        return self._reward(images, prompts)

    def per_dimension(self, images: torch.Tensor, prompts: Sequence[str] | str) -> dict[str, torch.Tensor]:
        """``{dimension: μ_d [B]}`` without a graph (evaluation)."""
        with torch.no_grad():
            result = self.scorer.score_tensor(images, prompts, self.dimensions)
        return {d: result.mean[:, i].float().cpu() for i, d in enumerate(self.dimensions)}


def jitter_images(images: torch.Tensor, offsets: torch.Tensor, zooms: torch.Tensor) -> torch.Tensor:
    """Image b of ``[B, C, H, W]`` zoomed in by ``zooms[b]`` (>= 1) about its centre and translated by
    ``offsets[b] = (dy, dx)`` pixels (the content moves down / right), bilinear, edge pixels repeated;
    differentiable w.r.t. ``images``."""
    b, _, h, w = images.shape
    theta = torch.zeros(b, 2, 3, dtype=images.dtype, device=images.device)
    scale = (1 / zooms).to(images)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale
    # affine_grid works in [-1, 1] coordinates: a pixel is 2 / W wide; sampling at x - d moves content by +d
    theta[:, 0, 2] = -offsets[:, 1].to(images) * 2 / w
    theta[:, 1, 2] = -offsets[:, 0].to(images) * 2 / h
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def _weights(
    scorer: Any, names: list[str], weights: Mapping[str, float] | Sequence[float] | None
) -> torch.Tensor:
    if weights is None:
        return scorer.config.get_rubric().weights(names)
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise UnknownDimensionError(unknown, f"weighted but not among the reward's dimensions {names}")
        values = [float(weights.get(n, 0.0)) for n in names]
    else:
        values = [float(w) for w in weights]
        if len(values) != len(names):
            raise ZRewardInputError(
                "weights", f"got {len(values)} weights for {len(names)} dimensions {names}"
            )
    w = torch.tensor(values, dtype=torch.float32)
    if not torch.isfinite(w).all() or not (w != 0).any():
        raise ZRewardInputError("weights", f"must be finite and not all zero, got {values}")
    return w
