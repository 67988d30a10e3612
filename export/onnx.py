"""ONNX export of a :class:`~zreward_deploy.modeling.ZRewardModel` through optimum-onnx (docs/design.md §9).

Pipeline: :class:`ZRewardOnnxModel` (the graph contract: three inputs, four outputs, the rubric's suffixes
and reward weights baked in as constants) -> :class:`ZRewardOnnxConfig` (optimum's declarative description:
inputs, outputs, dynamic axes, opset, ATOL, dummy inputs) -> ``optimum.exporters.onnx.export`` -> validation
in ONNX Runtime at shapes the trace never saw -> a self-describing folder::

    model.onnx              the graph
    config.json             the model config; its rubric lists the exported dimensions in graph order
    tokenizer files         so ZRewardProcessor.from_pretrained(folder) preprocesses exactly as for torch
    zreward_processor.json
    zreward_onnx.json       rubric, score scale, reward weights, dtype, contract, versions, validation

Why validation at other shapes: the exporter traces one batch (B=2, S=16 by default). Anything the trace
turned into a constant by accident (a Python ``int`` taken from a shape, a branch on a value) still
matches at the trace shape and only breaks at another one; so every case here has a batch size *and* a
text length different from the trace, one with ragged right padding and one long single prompt.
A mismatch raises :class:`OnnxValidationError` and the folder is not marked valid.

fp16: the whole model runs in fp16 (weights, activations, ``pixel_values``); the score head upcasts to
fp32 before its matmul (``kernels/score_head.py``), so softmax over the K scores, the moments and all four
outputs are fp32 in both variants; RMSNorm upcasts internally in Qwen2/Qwen3/Llama. The fp16 graph is
validated against the *fp32* torch model, the deployment reference, with the looser fp16 tolerance.
On ONNX Runtime's CPU provider, ops without an fp16 kernel run in fp32 between inserted casts (ORT's
InsertCastTransformer), so fp16 on CPU is for checking, not for speed (docs/export.md).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from zreward_deploy.errors import InvalidModelError, MissingDependencyError, ZRewardInputError
from zreward_deploy.fileio import atomic_directory, check_output_dir
from zreward_deploy.modeling import ZRewardModel
from zreward_deploy.processing import ZRewardProcessor

from .config import OnnxExportConfig
from .contract import (
    FORMAT,
    FORMAT_VERSION,
    INPUT_NAMES,
    METADATA_FILE,
    ONNX_FILE,
    OPSET,
    OUTPUT_NAMES,
    UnvalidatedExportWarning,
    file_sha256,
    verify_export,
)
from .ort import TORCH_DTYPES, OrtSessionConfig, create_session  # validation runs the graph in ONNX Runtime

try:  # optimum-onnx is the `onnx` extra; without it this module cannot work, so say which extra
    from optimum.exporters.onnx import OnnxConfig
    from optimum.exporters.onnx import export as optimum_export
    from optimum.utils import DummyInputGenerator, NormalizedTextAndVisionConfig
    from optimum.utils.input_generators import DTYPE_MAPPER
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("optimum-onnx", "onnx", "ONNX export") from _exc


class OnnxValidationError(RuntimeError):
    """The exported graph disagrees with the torch model (or fails to run) at a validation shape."""


# --------------------------------------------------------------------------------------------------
# The exporter's config
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# The graph contract as a module
# --------------------------------------------------------------------------------------------------


class ZRewardOnnxModel(nn.Module):
    """The exported graph: ``(input_ids, attention_mask, pixel_values) -> probs, mean, std, reward``.

    The D dimension suffixes and the normalised reward weights are buffers (constants of the graph), so
    the graph takes exactly the three tensors a serving client has. ``ZRewardModel.forward`` takes the
    suffixes as a Python list of tensors, which a tracer cannot take as an input: that is why this wrapper
    exists.

    Args:
        model: the reward model (any dtype).
        suffix_ids: D one-dimensional id tensors (``ZRewardProcessor.suffix_ids(dimensions)``).
        reward_weights: ``[D]`` weights of the scalar reward (normalised to sum 1 here).
    """

    def __init__(self, model: ZRewardModel, suffix_ids: Sequence[torch.Tensor], reward_weights: torch.Tensor):
        super().__init__()
        if len(suffix_ids) != reward_weights.numel() or not suffix_ids:
            raise ZRewardInputError("dimensions", "need one suffix and one weight per dimension (D >= 1)")
        self.model = model
        self.config = model.config  # optimum reads and sets `config.return_dict`
        self.num_dimensions = len(suffix_ids)
        for i, ids in enumerate(suffix_ids):
            self.register_buffer(f"suffix_{i}", ids.detach().clone().long(), persistent=False)
        weights = reward_weights.detach().float()
        self.register_buffer("reward_weights", weights / weights.sum(), persistent=False)

    def suffixes(self) -> list[torch.Tensor]:
        return [getattr(self, f"suffix_{i}") for i in range(self.num_dimensions)]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``input_ids``/``attention_mask [B, S]`` int64, ``pixel_values [B, 3, H, W]`` ->
        ``probs [B, D, K]``, ``mean [B, D]``, ``std [B, D]``, ``reward [B]`` (all fp32)."""
        out = self.model(pixel_values, input_ids, attention_mask, self.suffixes())
        return {
            "probs": out.probs.float(),
            "mean": out.mean.float(),
            "std": out.std.float(),
            "reward": out.mean.float() @ self.reward_weights,
        }


# --------------------------------------------------------------------------------------------------
# optimum: dummy inputs and the OnnxConfig
# --------------------------------------------------------------------------------------------------


class ZRewardDummyInputGenerator(DummyInputGenerator):
    """Deterministic trace inputs: token ids, a right-padded ragged mask, and images of the model's size.

    Seeded (``numpy.random.default_rng(seed)``), unlike optimum's generic generators that draw from the
    global ``random`` module, so an export is reproducible. Row ``i`` of the mask keeps
    ``max(1, S - i)`` tokens: the trace sees padding, as real batches do.
    """

    SUPPORTED_INPUT_NAMES = INPUT_NAMES

    def __init__(
        self,
        task: str,
        normalized_config: Any,
        batch_size: int = 2,
        sequence_length: int = 16,
        seed: int = 0,
        **kwargs: Any,
    ):
        self.task = task
        self.vocab_size = int(normalized_config.vocab_size)
        self.image_size = int(normalized_config.image_size)
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.seed = seed

    def generate(
        self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"
    ) -> Any:
        rng = np.random.default_rng([self.seed, INPUT_NAMES.index(input_name)])
        b, s = self.batch_size, self.sequence_length
        if input_name == "input_ids":
            array, dtype = rng.integers(0, self.vocab_size, (b, s)), int_dtype
        elif input_name == "attention_mask":
            lengths = np.maximum(1, s - np.arange(b))
            array, dtype = (np.arange(s)[None, :] < lengths[:, None]), int_dtype
        else:
            array, dtype = rng.standard_normal((b, 3, self.image_size, self.image_size)), float_dtype
        if framework == "pt":
            return torch.from_numpy(np.ascontiguousarray(array)).to(DTYPE_MAPPER.pt(dtype))
        return np.ascontiguousarray(array).astype(DTYPE_MAPPER.np(dtype))


class ZRewardOnnxConfig(OnnxConfig):
    """optimum-onnx description of the ``zreward_vlm`` graph contract (docs/design.md §9).

    Batch and text length are dynamic; the image size is fixed by the vision tower; D and K are fixed by
    the rubric and the score scale. Not registered in optimum's ``TasksManager`` (no global registration):
    :func:`export_onnx` passes it explicitly.
    """

    NORMALIZED_CONFIG_CLASS = NormalizedTextAndVisionConfig.with_args(
        text_config="text_config", vision_config="vision_config"
    )
    DUMMY_INPUT_GENERATOR_CLASSES = (ZRewardDummyInputGenerator,)
    DEFAULT_ONNX_OPSET = OPSET
    # Tolerance on probs, by float dtype; mean/std/reward are compared at this times the score range.
    ATOL_FOR_VALIDATION: ClassVar[dict[str, float]] = {"fp32": 1e-4, "fp16": 1e-2}

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        text = {0: "batch_size", 1: "sequence_length"}
        return {"input_ids": dict(text), "attention_mask": dict(text), "pixel_values": {0: "batch_size"}}

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {name: {0: "batch_size"} for name in OUTPUT_NAMES}

    @property
    def values_override(self) -> dict[str, Any] | None:
        return None  # the model never uses a KV cache when scoring; nothing to override in its config


@contextlib.contextmanager
def tracing_context() -> Iterator[None]:
    """Scope of the TorchScript trace that optimum runs.

    optimum-onnx 0.1.0 calls ``torch.onnx.export(..., dynamo=False)`` (the TorchScript exporter; the dynamo
    exporter also needs ``onnxscript``, which the ``onnx`` extra does not install). That exporter warns
    (``TracerWarning``) wherever a Python number comes out of a tensor. In ``ZRewardModel.forward`` these
    are the suffix lengths, constants of the rubric by design (the answer positions are static indices),
    so the warnings are silenced here, and only here; validation at other shapes is what proves that no
    *data-dependent* value was frozen.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        with torch.no_grad():
            yield


def export_graph(
    module: nn.Module,
    onnx_config: ZRewardOnnxConfig,
    output: Path,
    opset: int,
    trace_shapes: dict[str, int],
) -> None:
    """Run optimum's exporter on ``module`` (a :class:`ZRewardOnnxModel` or a test double)."""
    with tracing_context():
        optimum_export(
            model=module.eval(),
            config=onnx_config,
            output=output,
            opset=opset,
            device="cpu",
            input_shapes=trace_shapes,
            # optimum casts its numpy dummies to fp16 for the dynamic-axes check only when told
            dtype="fp16" if onnx_config.float_dtype == "fp16" else None,
        )


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

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
    reference: ZRewardOnnxModel,
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


# --------------------------------------------------------------------------------------------------
# The whole export
# --------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("zreward-deploy", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def weights_sha256(model_dir: str | os.PathLike) -> str:
    """One SHA-256 over a model directory's ``*.safetensors`` files (names and bytes, sorted by name)."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        digest.update(path.name.encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def _load(
    model: ZRewardModel | str | os.PathLike, processor: ZRewardProcessor | None
) -> tuple[ZRewardModel, ZRewardProcessor, str | None]:
    if isinstance(model, ZRewardModel):
        if processor is None:
            raise ZRewardInputError("processor", "pass the processor together with a model object")
        return model, processor, None
    model_dir = Path(model)
    loaded = ZRewardModel.from_pretrained(model_dir)
    return (
        loaded,
        processor or ZRewardProcessor.from_pretrained(model_dir, config=loaded.config),
        str(model_dir),
    )


def _source_dir(model: ZRewardModel | str | os.PathLike) -> Path | None:
    return None if isinstance(model, ZRewardModel) else Path(model)


def export_onnx(
    model: ZRewardModel | str | os.PathLike,
    out_dir: str | os.PathLike,
    config: OnnxExportConfig | None = None,
    processor: ZRewardProcessor | None = None,
) -> dict[str, Any]:
    """Export a model (object or model directory) to a self-describing ONNX folder and validate it.

    The whole folder (graph, config, tokenizer, processor settings, metadata) is built under a hidden
    temporary sibling of ``out_dir`` and renamed into place only once the metadata is written
    (:func:`~zreward_deploy.fileio.atomic_directory`): an error or a kill part-way leaves the previous
    folder as it was (or nothing), never a new graph beside old metadata.

    Args:
        model: a :class:`ZRewardModel` (with ``processor``) or a model directory.
        out_dir: the export folder (created; must be empty unless ``config.overwrite``, which replaces it;
            never the model directory, inside it, or containing it).
        config: export settings (dtype, dimensions, opset, trace shape, tolerance).
        processor: the model's processor when ``model`` is an object.

    Returns:
        The metadata written to ``zreward_onnx.json`` (``validation.passed`` is True).

    Raises:
        ZRewardInputError: ``out_dir`` is not allowed (see :func:`~zreward_deploy.fileio.check_output_dir`).
        OnnxValidationError: the graph disagrees with torch at a validation shape. The folder is still
            written, with ``validation.passed: false`` for inspection; loaders refuse it unless told
            ``allow_failed_validation``.
    """
    cfg = config or OnnxExportConfig()
    source_dir = _source_dir(model)
    # Before loading anything: the folder rule, and never a folder that is, holds or lies in the source.
    out = check_output_dir(
        out_dir,
        cfg.overwrite,
        flag="--overwrite (overwrite=True)",
        protect=[source_dir] if source_dir else [],
        marker=[METADATA_FILE],
    )
    source, processor, source_name = _load(model, processor)
    rubric = source.config.get_rubric()
    dims = [d.name for d in rubric.select(cfg.dimensions)]
    weights = rubric.weights(dims)
    suffixes = processor.suffix_ids(dims)

    reference = ZRewardOnnxModel(copy.deepcopy(source).float().eval(), suffixes, weights)
    exported = copy.deepcopy(source).to(TORCH_DTYPES[cfg.dtype]).eval()
    graph = ZRewardOnnxModel(exported, suffixes, weights)
    onnx_config = ZRewardOnnxConfig(exported.config, task="feature-extraction", float_dtype=cfg.dtype)
    atol = cfg.atol if cfg.atol is not None else ZRewardOnnxConfig.ATOL_FOR_VALIDATION[cfg.dtype]
    trace = {"batch_size": cfg.trace_batch_size, "sequence_length": cfg.trace_sequence_length}

    cases: list[ValidationCase] = []
    with atomic_directory(out) as tmp:
        export_graph(graph, onnx_config, tmp / ONNX_FILE, cfg.opset, trace)
        if any(p.name != ONNX_FILE for p in tmp.iterdir()):
            raise OnnxValidationError(
                "the export wrote external data files; models over 2 GB are not supported yet"
            )
        # The folder's config describes the graph: its rubric holds the exported dimensions in graph order.
        folder_config = copy.deepcopy(source.config)
        folder_config.rubric = [asdict(rubric[name]) for name in dims]
        folder_config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        # Every other file, hashed too: the loader refuses a folder whose tokenizer or config is not this
        # export's (the graph and its metadata are covered by onnx_sha256 and the atomic rename).
        files = {
            p.relative_to(tmp).as_posix(): file_sha256(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name not in (ONNX_FILE, METADATA_FILE)
        }

        meta: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "onnx_file": ONNX_FILE,
            "onnx_sha256": file_sha256(tmp / ONNX_FILE),
            "files": files,
            "dtype": cfg.dtype,
            "opset": cfg.opset,
            "dimensions": dims,
            "reward_weights": [float(w) for w in weights],
            "rubric": folder_config.rubric,
            "score_scale": source.config.score_scale,
            "score_temperature": source.config.score_temperature,
            "image_size": source.config.image_size,
            "num_image_tokens": source.config.num_image_tokens,
            "max_prompt_tokens": source.config.max_prompt_tokens,
            "text_model_type": source.config.text_config.model_type,
            "vision_model_type": source.config.vision_config.model_type,
            "inputs": {
                "input_ids": {"dtype": "int64", "shape": ["batch_size", "sequence_length"]},
                "attention_mask": {"dtype": "int64", "shape": ["batch_size", "sequence_length"]},
                "pixel_values": {
                    "dtype": "float16" if cfg.dtype == "fp16" else "float32",
                    "shape": ["batch_size", 3, source.config.image_size, source.config.image_size],
                },
            },
            "outputs": {
                "probs": {
                    "dtype": "float32",
                    "shape": ["batch_size", len(dims), len(source.config.score_scale["values"])],
                },
                "mean": {"dtype": "float32", "shape": ["batch_size", len(dims)]},
                "std": {"dtype": "float32", "shape": ["batch_size", len(dims)]},
                "reward": {"dtype": "float32", "shape": ["batch_size"]},
            },
            "trace_shapes": trace,
            "source_model": source_name,
            "source_weights_sha256": weights_sha256(source_name) if source_name else None,
            "export_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "versions": _versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "validation": None,
        }
        if cfg.validate:
            cases = validate_onnx(
                tmp / ONNX_FILE,
                reference,
                processor,
                cfg.dtype,
                atol,
                cfg.trace_batch_size,
                cfg.trace_sequence_length,
                raise_on_mismatch=False,
            )
            meta["validation"] = {
                "reference": "torch eager, fp32",
                "provider": "CPUExecutionProvider",
                "atol_probs": atol,
                "passed": all(c.passed for c in cases),
                "cases": [asdict(c) for c in cases],
            }
        # Written last: the folder is switched to the new export only once it describes itself.
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    # After the rename: a failed folder is in place with its evidence, and loaders refuse it.
    check_validation(cases, out / ONNX_FILE)
    return meta


def ensure_onnx_export(
    model_dir: str | os.PathLike, out_dir: str | os.PathLike, config: OnnxExportConfig | None = None
) -> Path:
    """``out_dir`` holding a validated export of ``model_dir`` with ``config``: reused when it passes
    :func:`~zreward_deploy.export.contract.verify_export` and its metadata names the same weights (SHA-256) and
    settings, exported again (replacing it) otherwise. For benchmarks, which compare several runtimes of
    one model and should not pay for the export twice."""
    cfg = config or OnnxExportConfig()
    out = Path(out_dir)
    if (out / METADATA_FILE).exists():
        wanted = {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k != "overwrite"
        }
        try:
            with warnings.catch_warnings():
                if not cfg.validate:  # an unvalidated export is what was asked for; no warning about it
                    warnings.simplefilter("ignore", UnvalidatedExportWarning)
                meta = verify_export(out)  # a failed validation is refused here, so it is exported again
            recorded = meta.get("export_config")
            same = (
                isinstance(recorded, dict)
                and meta.get("source_weights_sha256") == weights_sha256(model_dir)
                and {k: v for k, v in recorded.items() if k != "overwrite"} == wanted
                and (meta["validation"] is not None) == cfg.validate
            )
        except InvalidModelError:
            same = False
        if same:
            return out
    export_onnx(model_dir, out, dataclasses.replace(cfg, overwrite=True))
    return out
