"""The scoring API: ``Scorer.score(images, prompts) -> ScoreResult`` (docs/design.md §9).

Every runtime (torch here; ONNX Runtime and TensorRT in ``zreward_deploy.export``) implements the same
interface, so evaluation, benchmarks and serving take any of them (:func:`load_scorer`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .config import ZRewardConfig, format_score
from .devices import resolve_device
from .errors import InvalidImageError, InvalidModelError, InvalidPromptError, ZRewardInputError
from .modeling import ZRewardModel
from .processing import ImageInput, ZRewardProcessor

ErrorMode = Literal["raise", "collect"]


@dataclass
class ScoreResult:
    """Scores of B items on D dimensions over K score values.

    Attributes:
        probs: ``[B, D, K]`` score distributions q(s | p, I, d) (fp32).
        mean: ``[B, D]`` expectations mu_d = sum_s s q(s) (the per-dimension rewards).
        std: ``[B, D]`` standard deviations of q.
        reward: ``[B]`` scalar reward R = sum_d w_d mu_d with the rubric weights normalised over D.
        dimensions: names of the D axis, in order.
        values: the K score values.
        errors: item index -> the error that item raised (``errors="collect"``); those rows are NaN.
        untrained: the dimensions of D that the model's training record says were never trained: their
            scores carry no learned signal (empty when the model has no record).
    """

    probs: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    reward: torch.Tensor
    dimensions: list[str]
    values: list[float]
    errors: dict[int, ZRewardInputError] = field(default_factory=dict)
    untrained: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.probs.shape[0]

    @property
    def ok(self) -> torch.Tensor:
        """``[B]`` bool: True where the item was scored."""
        ok = torch.ones(len(self), dtype=torch.bool)
        if self.errors:
            ok[list(self.errors)] = False
        return ok

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-friendly dict per item: reward, per-dimension mean/std/probs, or the error."""
        records = []
        probs, mean, std, reward = (
            t.detach().float().cpu() for t in (self.probs, self.mean, self.std, self.reward)
        )
        for i in range(len(self)):
            if i in self.errors:
                records.append({"index": i, "error": str(self.errors[i])})
                continue
            dims = {
                name: {
                    "mean": float(mean[i, d]),
                    "std": float(std[i, d]),
                    "probs": {format_score(v): float(probs[i, d, k]) for k, v in enumerate(self.values)},
                    "trained": name not in self.untrained,
                }
                for d, name in enumerate(self.dimensions)
            }
            records.append({"index": i, "reward": float(reward[i]), "dimensions": dims})
        return records


class BaseScorer:
    """Shared scoring logic of every runtime: validation, lazy image decoding, length-sorted
    micro-batches, per-item error collection and the reward. A runtime implements :meth:`_forward`.

    Subclasses set ``processor`` (a :class:`ZRewardProcessor`), ``config`` and ``max_batch_size``. A
    runtime that reads the score otherwise than in one pass (:class:`ReasoningScorer`) overrides
    :meth:`_score_chunk` instead.
    """

    backend = "base"
    processor: ZRewardProcessor
    max_batch_size: int

    @property
    def config(self) -> ZRewardConfig:
        return self.processor.config

    def _forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        dimensions: list[str],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the model on one padded micro-batch -> ``probs [b, D, K]``, ``mean [b, D]``, ``std [b, D]``
        (CPU or device tensors; the caller moves them to CPU)."""
        raise NotImplementedError

    def forward_batch(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        dimensions: Sequence[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The runtime alone on one prepared micro-batch (normalised ``pixel_values [b, 3, S, S]``, padded
        prompt ids and mask, as ``processor.pixel_values`` and ``processor.pad`` make them) ->
        ``probs [b, D, K]``, ``mean [b, D]``, ``std [b, D]`` on the runtime's device: no decoding, no
        checks. What latency benchmarks time; :meth:`score` is the call for anything else."""
        names = self.dimension_names(dimensions)
        return self._forward(pixel_values, input_ids, attention_mask, names)

    # -- file / PIL / numpy / tensor images, no gradients ---------------------------------------------
    def score(
        self,
        images: Sequence[ImageInput],
        prompts: Sequence[str] | str,
        dimensions: Sequence[str] | str | None = None,
        errors: ErrorMode = "raise",
        progress: Callable[[int], None] | None = None,
    ) -> ScoreResult:
        """Score each image against its prompt on the chosen dimensions (all by default).

        Args:
            images: B images: file paths, PIL images, numpy ``HxWxC`` arrays or torch ``CxHxW`` tensors.
            prompts: B prompts, or one prompt for all images.
            dimensions: rubric dimension names (default: the dimensions the model was trained on, from
                its training record; all of them, in rubric order, when it names none).
            errors: ``"raise"`` stops at the first bad item found (prompts are checked before any image is
                decoded); ``"collect"`` scores the valid items, puts NaN
                in the rows of bad ones and records their errors in ``ScoreResult.errors``.
            progress: called with the number of items finished after each micro-batch (progress bars).

        Returns:
            :class:`ScoreResult` with ``probs [B, D, K]``, ``mean``/``std`` ``[B, D]``, ``reward [B]``.
        """
        if errors not in ("raise", "collect"):
            raise ZRewardInputError("errors", f"must be 'raise' or 'collect', got {errors!r}")
        check_image_sequence(images)
        prompts = _broadcast_prompts(prompts, len(images))
        names = self.dimension_names(dimensions)
        failures: dict[int, ZRewardInputError] = {}
        prompt_ids: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            try:
                prompt_ids[i] = item_call(self.processor.prompt_ids, prompt, i, InvalidPromptError)
            except ZRewardInputError as exc:
                if errors == "raise":
                    raise
                failures[i] = exc

        k = self.config.get_score_scale().num_scores
        probs = torch.full((len(images), len(names), k), math.nan)
        mean = torch.full((len(images), len(names)), math.nan)
        std = torch.full_like(mean, math.nan)
        for chunk in self._chunks(prompt_ids):
            tensors, kept = [], []
            for i in chunk:
                # Decoded lazily, one at a time, and resized to the model's resolution at once: the
                # memory in flight is one decoded image plus a micro-batch of S x S images.
                try:
                    tensors.append(item_call(self.processor.model_image, images[i], i, InvalidImageError))
                    kept.append(i)
                except ZRewardInputError as exc:
                    if errors == "raise":
                        raise
                    failures[i] = exc
            if kept:
                out = self._score_chunk(
                    tensors, [prompts[i] for i in kept], [prompt_ids[i] for i in kept], names
                )
                index = torch.tensor(kept)
                probs[index], mean[index], std[index] = (t.float().cpu() for t in out)
                for i in non_finite_rows(probs[index], kept):
                    exc = InvalidModelError(i, NON_FINITE_REASON)
                    if errors == "raise":
                        raise exc
                    failures[i] = exc
                    probs[i], mean[i], std[i] = math.nan, math.nan, math.nan
            if progress is not None:
                progress(len(chunk))
        if progress is not None and failures:
            progress(sum(1 for i in failures if i not in prompt_ids))
        return self._result(probs, mean, std, names, dict(sorted(failures.items())))

    def _score_chunk(
        self,
        images: list[torch.Tensor],
        prompts: list[str],
        prompt_ids: list[list[int]],
        dimensions: list[str],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One micro-batch of decoded ``[3, S, S]`` images in [0, 1] -> ``probs``, ``mean``, ``std``: the
        prompts padded and the pixels normalised for :meth:`_forward`."""
        input_ids, attention_mask = self.processor.pad(prompt_ids)
        return self._forward(self.processor.pixel_values(images), input_ids, attention_mask, dimensions)

    def _chunks(self, prompt_ids: dict[int, list[int]]) -> Iterator[list[int]]:
        order = self._order(prompt_ids)
        for start in range(0, len(order), self.max_batch_size):
            yield order[start : start + self.max_batch_size]

    def _order(self, prompt_ids: dict[int, list[int]]) -> list[int]:
        # Longest prompts first: micro-batches of similar lengths waste little compute on padding.
        return sorted(prompt_ids, key=lambda i: -len(prompt_ids[i]))

    def dimension_names(self, dimensions: Sequence[str] | str | None = None) -> list[str]:
        """The dimensions a call scores: those named (any rubric dimension, in the order given); by
        default the ones the model was trained on (its training record, ``config.training``), or every
        rubric dimension when the record names none (an untrained preset, or no record)."""
        if dimensions is None and (trained := self.config.trained_dimensions()):
            return trained
        return [d.name for d in self.config.get_rubric().select(dimensions)]

    def untrained_dimensions(self, names: Sequence[str]) -> list[str]:
        """Those of ``names`` the model's training record says were never trained ([] without a record:
        unknown is not marked)."""
        trained = self.config.trained_dimensions()
        return [] if trained is None else [n for n in names if n not in trained]

    def _result(
        self,
        probs: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        names: list[str],
        failures: dict[int, ZRewardInputError],
    ) -> ScoreResult:
        weights = self.config.get_rubric().weights(names).to(mean.device)
        return ScoreResult(
            probs=probs,
            mean=mean,
            std=std,
            reward=mean @ weights,
            dimensions=names,
            values=list(self.config.get_score_scale().values),
            errors=failures,
            untrained=self.untrained_dimensions(names),
        )


class Scorer(BaseScorer):
    """Scores (image, prompt) pairs with a :class:`ZRewardModel` in PyTorch (the ``torch`` backend).

    Args:
        model: the reward model.
        processor: its processor (tokenizer + templates + image preprocessing).
        device: where to run (default: the model's device).
        dtype: cast the model to this dtype (default: keep). Probabilities are fp32 regardless.
        max_batch_size: micro-batch size; calls with more items are split.
    """

    backend = "torch"

    def __init__(
        self,
        model: ZRewardModel,
        processor: ZRewardProcessor,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_batch_size: int = 32,
    ):
        if max_batch_size < 1:
            raise ZRewardInputError("max_batch_size", f"must be >= 1, got {max_batch_size}")
        self.device = resolve_device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.processor = processor
        self.max_batch_size = max_batch_size

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, **kwargs: Any) -> Scorer:
        """Load model and processor from a local model directory (see :class:`Scorer` for kwargs): a
        package model, or a native Qwen2-VL / Qwen2.5-VL / Qwen3-VL / SmolVLM checkpoint folder as published
        (:func:`zreward_deploy.native.load_native`)."""
        from .native import is_native_dir, load_native

        dtype = kwargs.get("dtype")
        if is_native_dir(model_dir):
            native, native_processor = load_native(model_dir, dtype=dtype)
            return cls(native, native_processor, **kwargs)
        load = {"dtype": dtype} if dtype is not None else {}
        model = ZRewardModel.from_pretrained(model_dir, **load)
        processor = ZRewardProcessor.from_pretrained(model_dir, config=model.config)
        return cls(model, processor, **kwargs)

    @torch.no_grad()
    def _forward(self, pixel_values, input_ids, attention_mask, dimensions):
        out = self.model(
            pixel_values.to(self.device),
            input_ids.to(self.device),
            attention_mask.to(self.device),
            [s.to(self.device) for s in self.processor.suffix_ids(dimensions)],
        )
        return out.probs, out.mean, out.std

    # -- the differentiable tensor path ----------------------------------------------------------------
    def score_tensor(
        self,
        images: torch.Tensor,
        prompts: Sequence[str] | str,
        dimensions: Sequence[str] | str | None = None,
    ) -> ScoreResult:
        """Score a batch of images already on the device, keeping the autograd graph.

        Args:
            images: ``[B, 3, H, W]`` float16/bfloat16/float32/float64 in [0, 1] (e.g. a generator's decoded
                output), B >= 1, any H, W up to the model's pixel limit. Refused with
                :class:`InvalidImageError`: uint8 (divide by 255 first), other value ranges, NaN or
                infinity, empty batches, other shapes (``processing.check_image_batch``).
            prompts: B prompts, or one prompt for all images.
            dimensions: rubric dimension names (default: as in :meth:`score`).

        Returns:
            :class:`ScoreResult` on the images' device; ``reward`` is differentiable w.r.t. ``images``
            (ReFL / DRaFT-style generator training). No micro-batching: the caller sizes the batch.
            Scores are never NaN: a non-finite output raises :class:`InvalidModelError`.
        """
        pixel_values = self.processor.preprocess_tensor(images)
        prompts = _broadcast_prompts(prompts, images.shape[0])
        names = self.dimension_names(dimensions)
        input_ids, attention_mask = self.processor.pad(
            [item_call(self.processor.prompt_ids, p, i, InvalidPromptError) for i, p in enumerate(prompts)]
        )
        out = self.model(
            pixel_values.to(self.device),
            input_ids.to(self.device),
            attention_mask.to(self.device),
            [s.to(self.device) for s in self.processor.suffix_ids(names)],
        )
        bad = non_finite_rows(out.probs.detach(), range(len(prompts)))
        if bad:
            raise InvalidModelError(bad[0], f"{NON_FINITE_REASON} (items {bad[:10]})")
        return self._result(out.probs, out.mean, out.std, names, {})


NON_FINITE_REASON = (
    "the model produced non-finite scores for valid inputs (fp16 overflow, or weights damaged after loading)"
)


class ReasoningScorer(BaseScorer):
    """The teacher's read-out as a scorer (backend ``reasoning``): per (image, prompt, dimension), sample
    ``num_samples`` reasoning traces and average the score distributions read after them
    (:func:`~zreward_deploy.generation.generate_reasoning`). Everything else, validation, the per-item
    error contract, the default dimensions and the reward, is :class:`BaseScorer`'s.

    Sampling is seeded (``seed`` and the call's running count), so an evaluation is reproducible. It also
    counts the reasoning tokens it generates (``tokens_generated``) and the images it scored, for the
    teacher-vs-student cost comparison.
    """

    backend = "reasoning"

    def __init__(
        self,
        model: ZRewardModel,
        processor: ZRewardProcessor,
        num_samples: int = 1,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        max_batch_size: int = 16,
    ):
        self.model = model.eval()
        self.processor = processor
        self.num_samples = num_samples
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.max_batch_size = max_batch_size
        self.tokens_generated = 0
        self.images_scored = 0
        self._calls = 0

    def _order(self, prompt_ids: dict[int, list[int]]) -> list[int]:
        # In input order (sampling is seeded per call: the same items, the same traces)
        return sorted(prompt_ids)

    def _score_chunk(
        self,
        images: list[torch.Tensor],
        prompts: list[str],
        prompt_ids: list[list[int]],
        dimensions: list[str],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from .generation import derive_seed, generate_reasoning

        device = next(self.model.parameters()).device
        pixels = torch.stack(images).to(device)  # [b, 3, S, S] in [0, 1]; generate_reasoning normalises
        scale = self.config.get_score_scale()
        k = scale.num_scores
        probs = torch.empty(len(images), len(dimensions), k)
        for d, name in enumerate(dimensions):
            self._calls += 1
            out = generate_reasoning(
                self.model,
                self.processor,
                pixels,
                prompts,
                name,
                num_samples=self.num_samples,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                seed=derive_seed(self.seed, "eval", self._calls),
            )
            self.tokens_generated += int(out.reasoning_mask.sum())
            probs[:, d] = out.probs.detach().float().cpu().reshape(len(images), self.num_samples, k).mean(1)
        self.images_scored += len(images)
        values = scale.values_tensor().to(probs)
        mean = (probs * values).sum(-1)
        # centred: E[v^2] - mu^2 cancels catastrophically for peaked distributions
        var = (probs * (values - mean.unsqueeze(-1)) ** 2).sum(-1)
        return probs, mean, var.sqrt()


def non_finite_rows(probs: torch.Tensor, items: Sequence[int]) -> list[int]:
    """The items (``items[r]`` for row r of ``probs [b, D, K]``) whose scores hold NaN or infinity: a
    score is never returned as NaN without an error saying so. One device synchronisation."""
    finite = torch.isfinite(probs.reshape(probs.shape[0], -1)).all(dim=1).cpu()
    return [items[r] for r in (~finite).nonzero().flatten().tolist()]


def item_call(fn: Callable[..., Any], value: Any, item: int, error: type[ZRewardInputError]) -> Any:
    """``fn(value, item=item)`` with the per-item error contract: whatever fails while one item is read
    (a decoder's own exception type, a tokenizer's TypeError, an allocation failure) becomes ``error``
    naming that item, so ``errors="collect"`` keeps every other item's result."""
    try:
        return fn(value, item=item)
    except ZRewardInputError:
        raise
    except Exception as exc:
        raise error(item, f"could not be processed ({type(exc).__name__}: {exc})") from exc


def check_image_sequence(images: Any) -> None:
    """``score`` takes a sequence of images (or a batched ``[B, ...]`` array or tensor). One image given
    alone (a path string, a PIL image, a single ``[C, H, W]`` tensor) would be iterated as characters or
    rows: refuse it with a message saying to wrap it in a list."""
    from PIL import Image

    single = isinstance(images, (str, bytes, os.PathLike, Image.Image)) or (
        isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim < 4
    )
    if single:
        raise InvalidImageError(
            "images",
            f"expected a list of images, got one {type(images).__name__}; to score one image pass [image]",
        )
    if not isinstance(images, (Sequence, torch.Tensor, np.ndarray)):
        raise InvalidImageError(
            "images", f"expected a list of images (paths, PIL, numpy or torch), got {type(images).__name__}"
        )


def _broadcast_prompts(prompts: Sequence[str] | str, n: int) -> list[str]:
    if isinstance(prompts, str):
        return [prompts] * n
    if isinstance(prompts, bytes) or not isinstance(prompts, Sequence):
        raise InvalidPromptError(
            "prompts", f"expected a string or a list of strings, got {type(prompts).__name__}"
        )
    prompts = list(prompts)
    if len(prompts) == 1 and n > 1:
        return prompts * n
    if len(prompts) != n:
        raise ZRewardInputError(
            "prompts", f"got {len(prompts)} prompts for {n} images; give one per image or one for all"
        )
    return prompts


SCORER_BACKENDS: dict[str, str] = {
    "torch": "zreward_deploy.scoring:Scorer",
    "onnx": "zreward_deploy.export.ort:OrtScorer",
    "tensorrt": "zreward_deploy.export.tensorrt:TensorRTScorer",
}


def load_scorer(model_dir: str | os.PathLike, backend: str = "torch", **kwargs: Any) -> BaseScorer:
    """Load a scorer for ``model_dir`` with the named backend (``torch``; exported runtimes add theirs).

    Keyword arguments go to the backend's ``from_pretrained`` (``device``, ``dtype``, ``max_batch_size``).
    """
    if backend not in SCORER_BACKENDS:
        raise ZRewardInputError(backend, f"unknown backend; available: {sorted(SCORER_BACKENDS)}")
    import importlib

    from .errors import MissingDependencyError

    module_name, cls_name = SCORER_BACKENDS[backend].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:  # an optional dependency of the backend is not installed
        if (exc.name or "").startswith("zreward_deploy"):
            raise
        extra = {"onnx": "onnx", "tensorrt": "gpu"}.get(backend, backend)
        raise MissingDependencyError(exc.name or "?", extra, f"the {backend!r} backend") from exc
    return getattr(module, cls_name).from_pretrained(model_dir, **kwargs)
