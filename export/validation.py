"""Validation of an exported graph: run it in ONNX Runtime at shapes the trace never saw and compare every
output with the torch model (why other shapes: :mod:`.onnx`'s docstring). A mismatch is
:class:`OnnxValidationError`; the cases land in the export's metadata either way."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from zreward_deploy.processing import ZRewardProcessor

from .contract import (
    OUTPUT_NAMES,
)
from .ort import TORCH_DTYPES, OrtSessionConfig, create_session  # validation runs the graph in ONNX Runtime


class OnnxValidationError(RuntimeError):
    """The exported graph disagrees with the torch model (or fails to run) at a validation shape."""


_WORDS = ("three", "blue", "spheres", "left", "of", "a", "large", "yellow", "cone", "on", "wooden", "table")


@dataclass
class ValidationCase:
    """One validation run: its shape, the largest absolute difference per output and the tolerance."""

    name: str
    batch_size: int
    sequence_length: int
    max_abs_diff: dict[str, float]
    tolerance: dict[str, float]
    passed: bool
    error: str | None = None


def _prompt_of_length(processor: ZRewardProcessor, tokens: int) -> str:
    """The shortest prefix-of-``_WORDS`` prompt (repeated) whose template-filled ids reach ``tokens``."""
    words: list[str] = []
    limit = processor.config.max_prompt_tokens
    while True:
        words.append(_WORDS[len(words) % len(_WORDS)])
        prompt = " ".join(words)
        n = len(processor.prompt_ids(prompt))
        if n >= tokens or n + 4 > limit:  # long enough, or the next word could pass the prompt limit
            return prompt


def validation_inputs(
    processor: ZRewardProcessor, trace_batch_size: int, trace_sequence_length: int, seed: int = 1234
) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Two input sets whose batch size and text length both differ from the trace's.

    ``ragged``: 3 prompts of different lengths, right-padded to a length above the trace's.
    ``long``: 1 long prompt (about twice the trace length plus a few tokens).
    Batch sizes move to 4 / 5 when the trace used 3 / 1. Images: seeded uniform noise in [0, 1], through
    the processor's own resize and normalisation.
    """
    batches = [b if b != trace_batch_size else b + 2 for b in (3, 1)]
    target = {"ragged": trace_sequence_length + 7, "long": 2 * trace_sequence_length + 5}
    cases = []
    for (name, tokens), batch in zip(target.items(), batches, strict=True):
        longest = _prompt_of_length(processor, tokens)
        prompts = [" ".join(longest.split()[: max(1, len(longest.split()) - 3 * i)]) for i in range(batch)]
        ids, mask = processor.encode_prompts(prompts)
        if ids.shape[1] == trace_sequence_length:  # a short template can land on the trace length exactly
            prompts[0] += " indeed"
            ids, mask = processor.encode_prompts(prompts)
        generator = torch.Generator().manual_seed(seed + batch)
        images = torch.rand(batch, 3, 48, 40, generator=generator)  # non-square: exercises the resize
        cases.append(
            (
                name,
                {
                    "input_ids": ids,
                    "attention_mask": mask,
                    "pixel_values": processor.preprocess_tensor(images),
                },
            )
        )
    return cases


def tolerances(atol: float, score_range: float) -> dict[str, float]:
    """Per-output tolerance: ``atol`` on probs; ``atol * range`` on mean, std and reward (score units)."""
    return {
        "probs": atol,
        "mean": atol * score_range,
        "std": atol * score_range,
        "reward": atol * score_range,
    }


def validate_onnx(
    onnx_path: str | os.PathLike,
    reference: torch.nn.Module,  # the fp32 ZRewardOnnxModel (export/onnx.py)
    processor: ZRewardProcessor,
    dtype: str,
    atol: float,
    trace_batch_size: int,
    trace_sequence_length: int,
    session_config: OrtSessionConfig | None = None,
    raise_on_mismatch: bool = True,
) -> list[ValidationCase]:
    """Compare ONNX Runtime (CPU provider) against the torch ``reference`` at untraced shapes.

    Args:
        onnx_path: the exported graph.
        reference: the fp32 torch graph module (the deployment reference for both dtypes).
        processor: the model's processor (prompts and images go through it, as in serving).
        dtype: the graph's float dtype (``pixel_values`` is fed in it).
        atol: probs tolerance (see :func:`tolerances` for the other outputs).
        trace_batch_size, trace_sequence_length: the trace shape, which every case avoids.
        session_config: ORT settings (default: all graph optimizations, as deployed).
        raise_on_mismatch: raise :class:`OnnxValidationError` when any case fails.

    Returns:
        One :class:`ValidationCase` per input set; all four outputs must match in shape, be float32 and
        finite, and lie within tolerance.
    """
    session = create_session(onnx_path, "cpu", session_config)
    tol = tolerances(atol, processor.config.get_score_scale().range)
    results = []
    for name, inputs in validation_inputs(processor, trace_batch_size, trace_sequence_length):
        b, s = inputs["input_ids"].shape
        with torch.no_grad():
            expected = reference(**inputs)
        feeds = {k: v.numpy() for k, v in inputs.items()}
        feeds["pixel_values"] = inputs["pixel_values"].to(TORCH_DTYPES[dtype]).numpy()
        diffs: dict[str, float] = {}
        error = None
        try:
            got = dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feeds), strict=True))
            for out in OUTPUT_NAMES:
                want = expected[out].numpy()
                if got[out].dtype != np.float32:
                    error = f"output {out} is {got[out].dtype}, the contract says float32"
                elif got[out].shape != want.shape:
                    error = f"output {out} has shape {got[out].shape}, expected {want.shape}"
                elif not np.isfinite(got[out]).all():
                    error = f"output {out} has non-finite values"
                if error:
                    break
                diffs[out] = float(np.abs(got[out].astype(np.float64) - want).max())
        except Exception as exc:  # ORT refusing the shapes is a validation failure like any mismatch
            error = f"ONNX Runtime failed: {type(exc).__name__}: {exc}"
        passed = error is None and all(diffs[k] <= tol[k] for k in OUTPUT_NAMES)
        results.append(ValidationCase(name, int(b), int(s), diffs, tol, passed, error))
    if raise_on_mismatch:
        check_validation(results, onnx_path)
    return results


def check_validation(cases: Sequence[ValidationCase], onnx_path: str | os.PathLike) -> None:
    """Raise :class:`OnnxValidationError` naming every failed case, its shape and what differed."""
    failed = [c for c in cases if not c.passed]
    if not failed:
        return

    def why(c: ValidationCase) -> str:
        if c.error:
            return c.error
        over = [
            f"{k} max|Δ| {v:.3g} > {c.tolerance[k]:.3g}"
            for k, v in c.max_abs_diff.items()
            if v > c.tolerance[k]
        ]
        return ", ".join(over)

    raise OnnxValidationError(
        f"{onnx_path}: the exported graph does not match the torch model at untraced shapes: "
        + "; ".join(f"{c.name} (batch {c.batch_size}, length {c.sequence_length}): {why(c)}" for c in failed)
    )


def validation_record(cases: Sequence[ValidationCase], atol: float) -> dict[str, Any]:
    """The ``validation`` entry of an export's metadata: reference, provider, tolerance, verdict, cases."""
    return {
        "reference": "torch eager, fp32",
        "provider": "CPUExecutionProvider",
        "atol_probs": atol,
        "passed": all(c.passed for c in cases),
        "cases": [asdict(c) for c in cases],
    }


def trace_inputs(
    vocab_size: int,
    image_size: int,
    batch_size: int,
    sequence_length: int,
    dtype: str = "fp32",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Deterministic trace inputs: token ids, a right-padded ragged mask, and images of the model's size.

    Seeded (``numpy.random.default_rng([seed, input index])``), so an export is reproducible. Row ``i`` of
    the mask keeps ``max(1, S - i)`` tokens: the trace sees padding, as real batches do.
    """
    b, s = batch_size, sequence_length
    ids = np.random.default_rng([seed, 0]).integers(0, vocab_size, (b, s))
    lengths = np.maximum(1, s - np.arange(b))
    mask = np.arange(s)[None, :] < lengths[:, None]
    pixels = np.random.default_rng([seed, 2]).standard_normal((b, 3, image_size, image_size))
    return {
        "input_ids": torch.from_numpy(ids).long(),
        "attention_mask": torch.from_numpy(mask).long(),
        "pixel_values": torch.from_numpy(pixels).to(TORCH_DTYPES[dtype]),
    }
