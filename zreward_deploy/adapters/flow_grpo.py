"""Flow-GRPO family (Flow-GRPO, DiffusionNFT, TempFlow-GRPO): ``make_score_fn(target, dim=None)``.

The contract met is that of ``yifan123/flow_grpo: flow_grpo/rewards.py`` (the same in
``NVlabs/DiffusionNFT: flow_grpo/rewards.py``): a reward factory returns ``_fn(images, prompts, metadata)
-> (scores, info)``, where ``images`` is the pipeline's float ``[B, 3, H, W]`` tensor in [0, 1] on the
GPU (``output_type="pt"``; some callers pass uint8 NHWC arrays or PIL images), ``prompts`` a list of B
strings, ``metadata`` the prompts' dataset records; the trainer reads ``torch.as_tensor(scores).float()``
and drops ``info``. ``scripts/train_sd3.py`` submits the function to an 8-thread pool while it samples, and
``multi_score`` calls every registered reward on the same ``images`` object in turn.

Use (one line in Flow-GRPO's ``multi_score`` dict)::

    from zreward_deploy.adapters.flow_grpo import make_score_fns
    fns = make_score_fns("http://127.0.0.1:8000", names=["zreward", "zreward_alignment"])
    # score_functions = {..., "zreward": fns["zreward"], "zreward_alignment": fns["zreward_alignment"]}

Names ``zreward_<dim>`` share one forward per batch: the functions of one ``make_score_fns`` call keep
the scores of the last few ``images`` objects they saw, keyed by identity and prompts.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import resolve_target, score_target

ScoreFn = Callable[[Any, Sequence[str], Any], tuple[np.ndarray, dict]]


def images_to_list(images: Any) -> list[Any]:
    """Flow-GRPO's image batch -> a list the scorer or the client takes.

    A float ``[B, 3, H, W]`` tensor in [0, 1] stays float for a local scorer (no 8-bit rounding, on its
    device); the client rounds it to uint8 as Flow-GRPO's own scorers do (``(x * 255).round()``).
    uint8 ``[B, H, W, 3]`` arrays/tensors and lists of PIL images pass as they are.
    """
    import torch

    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"expected images [B, 3, H, W] or [B, H, W, 3], got {tuple(images.shape)}")
        if images.dtype == torch.uint8 and images.shape[-1] == 3:  # NHWC uint8
            return list(images.detach().cpu().numpy())
        return list(images.detach())  # [3, H, W] each: float in [0, 1] (or uint8 CHW), on its device
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"expected numpy images [B, H, W, 3], got {images.shape}")
        return list(images)
    return list(images)


class _Memo:
    """The scores of the last few batches, by ``(id(images), prompts)``; the images object is held, so an
    id is never reused while its entry lives. Thread-safe (Flow-GRPO calls from a thread pool)."""

    def __init__(self, size: int = 8):
        self.size = size
        self.lock = threading.Lock()
        self.entries: collections.OrderedDict[tuple, tuple[Any, Any]] = collections.OrderedDict()

    def get_or_score(self, images: Any, prompts: list[str], score: Callable[[], Any]) -> Any:
        key = (id(images), tuple(prompts))
        with self.lock:
            if key in self.entries and self.entries[key][0] is images:
                return self.entries[key][1]
        value = score()
        with self.lock:
            self.entries[key] = (images, value)
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return value


def make_score_fns(
    target: Any, names: Sequence[str] = ("zreward",), **client_options: Any
) -> dict[str, ScoreFn]:
    """Reward functions by name sharing one forward per batch: ``"zreward"`` is the scalar reward R,
    ``"zreward_<dim>"`` the mean of that rubric dimension. ``target``: a scorer, a model folder or the URL
    of ``zreward serve`` (``client_options`` go to its client: ``token``, ``timeout_s``, ``max_retries``)."""
    scorer = resolve_target(target, **client_options)
    memo = _Memo()
    dims = sorted({n.removeprefix("zreward_") for n in names if n != "zreward"}) or None
    if dims is not None:
        all_dims = [d.name for d in scorer_dimensions(scorer)]
        dims = [d for d in all_dims if d in dims] + [d for d in dims if d not in all_dims]

    def make(name: str) -> ScoreFn:
        dim = None if name == "zreward" else name.removeprefix("zreward_")

        def _fn(
            images: Any, prompts: Sequence[str], metadata: Any = None, **_: Any
        ) -> tuple[np.ndarray, dict]:
            prompts = list(prompts)
            reward, per_dim = memo.get_or_score(
                images, prompts, lambda: score_target(scorer, images_to_list(images), prompts, dims)
            )
            scores = reward if dim is None else per_dim[dim]
            return np.asarray(scores, dtype=np.float32), {}

        _fn.__name__ = f"{name}_score"
        return _fn

    return {name: make(name) for name in names}


def scorer_dimensions(scorer: Any) -> list[Any]:
    if hasattr(scorer, "config"):
        return list(scorer.config.get_rubric().dimensions)
    return []


def make_score_fn(target: Any, dim: str | None = None, **client_options: Any) -> ScoreFn:
    """One Flow-GRPO reward function: R (``dim=None``) or the mean of rubric dimension ``dim``
    (see :func:`make_score_fns` to register several names on one forward)."""
    name = "zreward" if dim is None else f"zreward_{dim}"
    return make_score_fns(target, [name], **client_options)[name]
