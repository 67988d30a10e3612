"""verl-omni: an async ``compute_score`` for its visual reward manager.

The contract met is that of ``verl-project/verl-omni: verl_omni/reward_loop/reward_manager/visual.py``:
``run_single`` takes one item, checks that the response is a uint8 ``[C, H, W]`` pixel tensor, and awaits
``compute_score(data_source=..., solution_image=<uint8 CHW>, ground_truth=<the prompt>, extra_info=dict,
**reward_kwargs)`` (sync functions are run too; async is detected). A dict result must hold ``"score"``;
its other keys become ``reward_extra_info`` and are logged, so the per-dimension means come for free.

Configure it as a custom reward function with ``path`` = this module's file and ``name:
compute_score``; ``reward_kwargs`` (or the environment) give the target: ``server_url`` (or
``$ZREWARD_URL``) for ``zreward serve``, else ``model_path`` (or ``$ZREWARD_MODEL``) for an in-process
scorer. verl-omni calls once per sample, concurrently: against a server the items are coalesced there;
in-process they are coalesced by a :class:`~zreward_deploy.serving.batcher.MicroBatcher` on the caller's
event loop. A failed item raises: it never becomes a 0.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

from ..errors import ZRewardInputError

# Targets built once per event loop (model loads and HTTP connection pools are not per-sample work; an
# asyncio client or batcher belongs to the loop that made it): loop -> {target key: client or load task}.
_per_loop: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()


async def compute_score(
    data_source: Any = None,
    solution_image: Any = None,
    ground_truth: Any = None,
    extra_info: dict[str, Any] | None = None,
    server_url: str | None = None,
    model_path: str | None = None,
    token: str | None = None,
    dims: list[str] | None = None,
    **_: Any,
) -> dict[str, float]:
    """``{"score": R, "<dim>": mean, ...}`` for one image (uint8 ``[C, H, W]`` tensor or array, or PIL)
    and its prompt (``ground_truth``; else ``extra_info["prompt"]``)."""
    prompt = ground_truth if isinstance(ground_truth, str) else (extra_info or {}).get("prompt")
    if not isinstance(prompt, str):
        raise ZRewardInputError(
            "ground_truth", f"expected the prompt string, got {type(ground_truth).__name__}"
        )
    image = _to_hwc(solution_image)
    server_url = server_url or os.environ.get("ZREWARD_URL")
    if server_url:
        targets = _per_loop.setdefault(asyncio.get_running_loop(), {})
        client = targets.get((server_url, token))
        if client is None:
            from ..serving.client import AsyncZRewardClient

            client = targets[(server_url, token)] = AsyncZRewardClient(server_url, token=token)
        result = (await client.score([image], [prompt], dims=dims)).raise_for_errors()
        return {"score": float(result.reward[0]), **{d: float(v[0]) for d, v in result.dims.items()}}
    model_path = model_path or os.environ.get("ZREWARD_MODEL")
    if not model_path:
        raise ZRewardInputError(
            "server_url", "give server_url (or $ZREWARD_URL) or model_path (or $ZREWARD_MODEL)"
        )
    return await _score_local(model_path, image, prompt, dims)


async def _score_local(model_path: str, image: Any, prompt: str, dims: list[str] | None) -> dict[str, float]:
    from ..serving.client import ZRewardClientError
    from ..serving.protocol import ItemScore

    loop = asyncio.get_running_loop()
    tasks = _per_loop.setdefault(loop, {})
    if model_path not in tasks:
        # one load per model and loop, however many coroutines arrive at once: the first schedules it,
        # the others await the same future (concurrent from_pretrained calls in threads also race on
        # transformers' process-wide init state)
        tasks[model_path] = loop.create_task(_load_batcher(model_path))
    batcher = await tasks[model_path]
    scorer = batcher.scorer
    names = scorer.dimension_names(dims)
    pixels = await asyncio.to_thread(scorer.processor.model_image, image, 0)
    (outcome,) = await batcher.submit([prompt], [pixels], names, deadline_s=600.0)
    if not isinstance(outcome, ItemScore):
        raise ZRewardClientError(f"the item failed: {outcome}")
    return {"score": outcome.reward, **dict(zip(names, outcome.mean, strict=True))}


async def _load_batcher(model_path: str) -> Any:
    from ..scoring import load_scorer
    from ..serving.batcher import MicroBatcher

    scorer = await asyncio.to_thread(load_scorer, model_path)
    return MicroBatcher(scorer, max_batch_size=32, max_wait_ms=5.0)


def _to_hwc(image: Any) -> Any:
    """uint8 ``[C, H, W]`` (verl-omni's pixel tensor) -> ``[H, W, C]`` numpy; PIL and HWC arrays pass."""
    import numpy as np

    try:
        import torch

        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
    except ModuleNotFoundError:
        pass
    if (
        isinstance(image, np.ndarray)
        and image.ndim == 3
        and image.shape[0] in (1, 3)
        and image.shape[-1] not in (1, 3)
    ):
        image = np.ascontiguousarray(image.transpose(1, 2, 0))
    return image
