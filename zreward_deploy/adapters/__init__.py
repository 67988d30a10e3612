"""Adapters: the reward in the exact call shape of each online-RL trainer (docs/serving.md, "Trainers").

- :mod:`.flow_grpo`: Flow-GRPO and its family (DiffusionNFT, TempFlow-GRPO), ``make_score_fn``.
- :mod:`.verl_omni`: verl-omni's async ``compute_score``.
- :mod:`.flow_factory`: Flow-Factory's pointwise reward class, loadable by dotted path.

Each takes a *target*: a local scorer (any ``BaseScorer``, or a model folder) or the URL of
``zreward serve``. None of them imports its trainer; each cites the trainer file whose contract it meets.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ZRewardInputError


def resolve_target(target: Any, **client_options: Any) -> Any:
    """A scorer (kept), a URL (-> :class:`~zreward_deploy.serving.client.ZRewardClient`) or a model folder
    (-> :func:`~zreward_deploy.scoring.load_scorer`)."""
    if isinstance(target, str) and target.startswith(("http://", "https://")):
        from ..serving.client import ZRewardClient

        return ZRewardClient(target, **client_options)
    if isinstance(target, (str, os.PathLike)):
        from ..scoring import load_scorer

        return load_scorer(target)
    if hasattr(target, "score") and hasattr(target, "config"):
        return target
    raise ZRewardInputError(
        "target", f"expected a Scorer, a model folder or an http(s) URL, got {type(target).__name__}"
    )


def score_target(
    target: Any, images: list[Any], prompts: list[str], dims: list[str] | None
) -> tuple[Any, Any]:
    """Score on a scorer or a client -> (reward ``[B]`` numpy, ``{dim: [B] numpy}``); a failed item raises
    (a trainer must never take a substituted value for a reward)."""
    import numpy as np

    from ..serving.client import ZRewardClient, ZRewardClientError

    if isinstance(target, ZRewardClient):
        result = target.score(images, prompts, dims=dims).raise_for_errors()
        return result.reward, result.dims
    result = target.score(images, prompts, dimensions=dims, errors="collect")
    if result.errors:
        first = [f"{i}: {e}" for i, e in list(result.errors.items())[:5]]
        raise ZRewardClientError(f"{len(result.errors)} item(s) failed: {first}")
    mean = result.mean.detach().float().cpu().numpy()
    dims_out = {name: mean[:, d].astype(np.float64) for d, name in enumerate(result.dimensions)}
    return result.reward.detach().float().cpu().numpy().astype(np.float64), dims_out
