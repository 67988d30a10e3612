"""ONNX export of a :class:`~zreward_deploy.modeling.ZRewardModel` (docs/design.md §9, docs/export.md).

Pipeline: :class:`ZRewardOnnxModel` (the graph contract: three inputs, four outputs, the rubric's suffixes
and reward weights baked in as constants) -> one of two exporters, both tracing that module with the same
:func:`trace_inputs`, :data:`~.contract.DYNAMIC_AXES` and opset -> validation in ONNX Runtime at shapes
the trace never saw -> a self-describing folder::

    model.onnx              the graph
    config.json             the model config; its rubric lists the exported dimensions in graph order
    tokenizer files         so ZRewardProcessor.from_pretrained(folder) preprocesses exactly as for torch
    zreward_processor.json
    zreward_onnx.json       rubric, score scale, reward weights, dtype, exporter, contract, versions,
                            validation

The exporters (``OnnxExportConfig.exporter``; the one used is the metadata's ``exporter``):

* ``optimum`` — optimum-onnx's ``export`` with :class:`~.optimum_config.ZRewardOnnxConfig`. optimum-onnx
  0.1.0, its newest release, pins ``transformers<4.58``, so it exists only on the 4.57 line.
* ``torch`` — ``torch.onnx.export`` (the TorchScript exporter, ``dynamo=False``), on every transformers
  line. optimum-onnx calls the same function underneath; what it adds are patches for ops and masking
  helpers that this graph does not reach (the model builds its own 4-D mask and never uses a KV cache).
* ``auto`` (default) — ``optimum`` where it is installed, ``torch`` otherwise.

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
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from zreward_deploy.errors import InvalidModelError, MissingDependencyError, ZRewardInputError
from zreward_deploy.fileio import atomic_directory, check_output_dir
from zreward_deploy.modeling import ZRewardModel
from zreward_deploy.native import NativeRewardModel, is_native_dir, load_native
from zreward_deploy.processing import ZRewardProcessor

from .config import OnnxExportConfig
from .contract import (
    ATOL,
    DYNAMIC_AXES,
    EXPORTERS,
    EXTERNAL_DATA_FILE,
    FORMAT,
    FORMAT_VERSION,
    INPUT_NAMES,
    METADATA_FILE,
    ONNX_FILE,
    OPSET,
    OUTPUT_NAMES,
    PROTOBUF_LIMIT,
    UnvalidatedExportWarning,
    file_sha256,
    verify_export,
)
from .native_graph import NativeOnnxModel, write_native_files
from .ort import TORCH_DTYPES
from .validation import (
    OnnxValidationError,
    ValidationCase,
    check_validation,
    trace_inputs,
    validate_onnx,
    validation_record,
)

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
# Trace inputs and the two exporters
# --------------------------------------------------------------------------------------------------


def optimum_available() -> bool:
    """Whether optimum-onnx's exporter imports here (the ``optimum`` extra, on transformers 4.57)."""
    try:
        import optimum.exporters.onnx  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_exporter(name: str) -> str:
    """``auto`` -> ``optimum`` where optimum-onnx imports, else ``torch``; an explicit ``optimum`` without
    it raises :class:`~zreward_deploy.errors.MissingDependencyError` naming the extra."""
    if name not in ("auto", *EXPORTERS):
        raise ZRewardInputError("exporter", f"must be one of {('auto', *EXPORTERS)}, got {name!r}")
    if name == "auto":
        return "optimum" if optimum_available() else "torch"
    if name == "optimum" and not optimum_available():
        raise MissingDependencyError(
            "optimum-onnx",
            "optimum",
            "ONNX export with --exporter optimum",
            "(which installs transformers 4.57, optimum-onnx's pin), or use --exporter torch, which works "
            "on every transformers line",
        )
    return name


@contextlib.contextmanager
def tracing_context() -> Iterator[None]:
    """Scope of the TorchScript trace that both exporters run.

    optimum-onnx 0.1.0 calls ``torch.onnx.export(..., dynamo=False)``, as the ``torch`` exporter does (the
    dynamo exporter also needs ``onnxscript``, which the ``onnx`` extra does not install). That exporter warns
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
    output: Path,
    exporter: str,
    opset: int = OPSET,
    dtype: str = "fp32",
    trace_shapes: dict[str, int] | None = None,
) -> None:
    """Trace ``module`` (a :class:`ZRewardOnnxModel` or a test double whose ``config`` is the model's) to
    ``output`` with ``exporter`` (``optimum`` or ``torch``; see :func:`resolve_exporter`)."""
    shapes = {"batch_size": 2, "sequence_length": 16, **(trace_shapes or {})}
    config = module.config
    with tracing_context():
        if exporter == "optimum":
            from .optimum_config import export_with_optimum

            export_with_optimum(module, config, output, opset, dtype, shapes)
        elif exporter == "torch":
            inputs = trace_inputs(
                int(config.text_config.vocab_size),
                int(config.image_size),
                shapes["batch_size"],
                shapes["sequence_length"],
                dtype,
            )
            torch.onnx.export(
                module.eval(),
                (),
                str(output),
                kwargs=inputs,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: dict(axes) for name, axes in DYNAMIC_AXES.items()},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        else:
            raise ZRewardInputError("exporter", f"must be one of {EXPORTERS}, got {exporter!r}")


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
    model: ZRewardModel | NativeRewardModel | str | os.PathLike, processor: ZRewardProcessor | None
) -> tuple[ZRewardModel | NativeRewardModel, ZRewardProcessor, str | None]:
    if isinstance(model, (ZRewardModel, NativeRewardModel)):
        if processor is None:
            raise ZRewardInputError("processor", "pass the processor together with a model object")
        return model, processor, None
    model_dir = Path(model)
    if is_native_dir(model_dir):  # a native HF VLM checkpoint folder, as published
        native, native_processor = load_native(model_dir)
        return native, processor or native_processor, str(model_dir)
    loaded = ZRewardModel.from_pretrained(model_dir)
    return (
        loaded,
        processor or ZRewardProcessor.from_pretrained(model_dir, config=loaded.config),
        str(model_dir),
    )


def _source_dir(model: ZRewardModel | NativeRewardModel | str | os.PathLike) -> Path | None:
    return None if isinstance(model, (ZRewardModel, NativeRewardModel)) else Path(model)


def _graph_module(
    model: ZRewardModel | NativeRewardModel, suffixes: list[torch.Tensor], weights: torch.Tensor
) -> nn.Module:
    """The traced module of a model: :class:`ZRewardOnnxModel`, or for a native model
    :class:`~.native_graph.NativeOnnxModel` (static vision tower, the same contract)."""
    if isinstance(model, NativeRewardModel):
        return NativeOnnxModel(model, suffixes, weights)
    return ZRewardOnnxModel(model, suffixes, weights)


def store_external_data(tmp: Path, mode: str) -> dict[str, Any] | None:
    """Leave the exported graph in ``tmp`` as one self-contained ``model.onnx`` or as ``model.onnx`` plus
    one ``model.onnx.data`` (``mode``: ``auto`` = only when the exporter already wrote external data or
    the graph passes protobuf's 2 GB limit, ``always``, ``never``). Returns the ``external_data`` record
    (file, SHA-256, bytes) or ``None``.

    The TorchScript exporter writes a model over 2 GB as one file per weight next to the graph; those are
    gathered here into a single file, so a folder holds exactly the files its metadata names.

    Raises:
        OnnxValidationError: ``mode`` is ``never`` and the graph needs external data.
    """
    graph = tmp / ONNX_FILE
    strays = [p for p in tmp.iterdir() if p.name != ONNX_FILE]
    needed = bool(strays) or graph.stat().st_size > PROTOBUF_LIMIT
    if mode == "never" and needed:
        raise OnnxValidationError(
            f"{graph}: the graph is over protobuf's 2 GB limit and needs external data, but "
            "external_data is 'never'; use --external-data auto (or always)"
        )
    if not (mode == "always" or needed):
        return None
    import onnx

    proto = onnx.load(str(graph), load_external_data=True)  # the exporter's per-weight files, if any
    for path in strays:
        path.unlink() if path.is_file() else shutil.rmtree(path)
    onnx.save_model(
        proto, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
        location=EXTERNAL_DATA_FILE, size_threshold=1024,
    )  # fmt: skip
    data = tmp / EXTERNAL_DATA_FILE
    if not data.exists():  # every tensor under the threshold: nothing went out
        data.write_bytes(b"")
    return {"file": EXTERNAL_DATA_FILE, "sha256": file_sha256(data), "bytes": data.stat().st_size}


def export_onnx(
    model: ZRewardModel | NativeRewardModel | str | os.PathLike,
    out_dir: str | os.PathLike,
    config: OnnxExportConfig | None = None,
    processor: ZRewardProcessor | None = None,
) -> dict[str, Any]:
    """Export a model (object or model directory) to a self-describing ONNX folder and validate it.

    The whole folder (graph, config, tokenizer, processor settings, metadata) is built under a hidden
    temporary sibling of ``out_dir`` and renamed into place only once the metadata is written
    (:func:`~zreward_deploy.fileio.atomic_directory`): an error or a kill part-way leaves the previous
    folder as it was (or nothing), never a new graph beside old metadata.

    A native Hugging Face VLM (a :class:`~zreward_deploy.native.NativeRewardModel`, or a Qwen2-VL /
    Qwen2.5-VL / Qwen3-VL / SmolVLM checkpoint folder) gives the same graph and folder contract, through
    :class:`~.native_graph.NativeOnnxModel` (a static vision tower at the model's image size), validated
    against the model's own forward (docs/export.md, "Native VLM checkpoints").

    Args:
        model: a :class:`ZRewardModel` or :class:`~zreward_deploy.native.NativeRewardModel` (with
            ``processor``), or a model directory (the package's, or a native checkpoint folder).
        out_dir: the export folder (created; must be empty unless ``config.overwrite``, which replaces it;
            never the model directory, inside it, or containing it).
        config: export settings (dtype, dimensions, opset, trace shape, tolerance, exporter, external
            data).
        processor: the model's processor when ``model`` is an object.

    Returns:
        The metadata written to ``zreward_onnx.json`` (``validation.passed`` is True).

    Raises:
        ZRewardInputError: ``out_dir`` is not allowed (see :func:`~zreward_deploy.fileio.check_output_dir`).
        MissingDependencyError: ``config.exporter`` is ``optimum`` and optimum-onnx is not installed.
        OnnxValidationError: the graph disagrees with torch at a validation shape. The folder is still
            written, with ``validation.passed: false`` for inspection; loaders refuse it unless told
            ``allow_failed_validation``.
    """
    cfg = config or OnnxExportConfig()
    exporter = resolve_exporter(cfg.exporter)  # before any work: an exporter that is missing is named now
    source_dir = _source_dir(model)
    # Before loading anything: the folder rule, and never a folder that is, holds or lies in the source.
    out = check_output_dir(
        out_dir,
        cfg.overwrite,
        flag="--overwrite",
        protect=[source_dir] if source_dir else [],
        marker=[METADATA_FILE],
    )
    source, processor, source_name = _load(model, processor)
    native = isinstance(source, NativeRewardModel)
    scoring = processor.config if native else source.config  # rubric, scale, image size, prompt limit
    rubric = scoring.get_rubric()
    dims = [d.name for d in rubric.select(cfg.dimensions)]
    weights = rubric.weights(dims)
    suffixes = processor.suffix_ids(dims)

    # the reference is always the model's own forward (a native model's: its HF tower and masked writes)
    reference = ZRewardOnnxModel(copy.deepcopy(source).float().eval(), suffixes, weights)
    exported = copy.deepcopy(source).to(TORCH_DTYPES[cfg.dtype]).eval()
    graph = _graph_module(exported, suffixes, weights)
    atol = cfg.atol if cfg.atol is not None else ATOL[cfg.dtype]
    trace = {"batch_size": cfg.trace_batch_size, "sequence_length": cfg.trace_sequence_length}

    cases: list[ValidationCase] = []
    with atomic_directory(out) as tmp:
        export_graph(graph, tmp / ONNX_FILE, exporter, cfg.opset, cfg.dtype, trace)
        external = store_external_data(tmp, cfg.external_data)
        written = {p.name for p in tmp.iterdir()}
        if native:
            write_native_files(tmp, source, processor, [rubric[n] for n in dims])
        else:
            _write_model_files(tmp, source.config, processor, [rubric[n] for n in dims])
        files = {
            p.relative_to(tmp).as_posix(): file_sha256(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name not in (*written, METADATA_FILE)
        }
        onnx_sha256 = file_sha256(tmp / ONNX_FILE)
        facts = _model_facts(source, scoring)
        entries = [asdict(rubric[n]) for n in dims]
        meta = _metadata(cfg, facts, entries, dims, weights, files, onnx_sha256, source_name)
        meta["exporter"] = exporter  # what ran (cfg.exporter, in export_config, may say "auto")
        meta["external_data"] = external
        if cfg.validate:
            cases = validate_onnx(
                tmp / ONNX_FILE, reference, processor, cfg.dtype, atol,
                cfg.trace_batch_size, cfg.trace_sequence_length, raise_on_mismatch=False,
            )  # fmt: skip
            meta["validation"] = validation_record(cases, atol)
        # Written last: the folder is switched to the new export only once it describes itself.
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    # After the rename: a failed folder is in place with its evidence, and loaders refuse it.
    check_validation(cases, out / ONNX_FILE)
    return meta


def _write_model_files(tmp: Path, config: Any, processor: ZRewardProcessor, dimensions: list[Any]) -> Any:
    """The folder's config (its rubric: the exported dimensions, in graph order) and the processor's
    files; returns that config. (The caller hashes every file but the graph, its data and the metadata:
    the loader refuses a folder whose tokenizer or config is not this export's; the graph and the metadata
    are covered by ``onnx_sha256`` and the atomic rename.)"""
    folder_config = copy.deepcopy(config)
    folder_config.rubric = [asdict(d) for d in dimensions]
    folder_config.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    return folder_config


def _model_facts(model: ZRewardModel | NativeRewardModel, scoring: Any) -> dict[str, Any]:
    """What the metadata says about the model: score scale and temperature, image size, image tokens,
    prompt limit, and the model types of the language and vision parts."""
    hf = model.config
    return {
        "score_scale": scoring.score_scale,
        "score_temperature": scoring.score_temperature,
        "image_size": int(scoring.image_size),
        "num_image_tokens": int(
            model.num_image_tokens if isinstance(model, NativeRewardModel) else hf.num_image_tokens
        ),
        "max_prompt_tokens": scoring.max_prompt_tokens,
        "model_type": hf.model_type,
        "text_model_type": hf.text_config.model_type,
        "vision_model_type": hf.vision_config.model_type,
    }


def _metadata(
    cfg: OnnxExportConfig,
    facts: dict[str, Any],
    rubric: list[dict[str, Any]],
    dims: list[str],
    weights: torch.Tensor,
    files: dict[str, str],
    onnx_sha256: str,
    source_name: str | None,
) -> dict[str, Any]:
    """The export's ``zreward_onnx.json`` before validation: what the graph takes and returns, what it
    scores, where it came from, and the SHA-256 of every file (export contract, :mod:`.contract`)."""
    config = SimpleNamespace(**facts)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "onnx_file": ONNX_FILE,
        "onnx_sha256": onnx_sha256,
        "files": files,
        "dtype": cfg.dtype,
        "opset": cfg.opset,
        "dimensions": dims,
        "reward_weights": [float(w) for w in weights],
        "rubric": rubric,
        **facts,
        "inputs": {
            "input_ids": {"dtype": "int64", "shape": ["batch_size", "sequence_length"]},
            "attention_mask": {"dtype": "int64", "shape": ["batch_size", "sequence_length"]},
            "pixel_values": {
                "dtype": "float16" if cfg.dtype == "fp16" else "float32",
                "shape": ["batch_size", 3, config.image_size, config.image_size],
            },
        },
        "outputs": {
            "probs": {
                "dtype": "float32",
                "shape": ["batch_size", len(dims), len(config.score_scale["values"])],
            },
            "mean": {"dtype": "float32", "shape": ["batch_size", len(dims)]},
            "std": {"dtype": "float32", "shape": ["batch_size", len(dims)]},
            "reward": {"dtype": "float32", "shape": ["batch_size"]},
        },
        "trace_shapes": {"batch_size": cfg.trace_batch_size, "sequence_length": cfg.trace_sequence_length},
        "source_model": source_name,
        "source_weights_sha256": weights_sha256(source_name) if source_name else None,
        "export_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "validation": None,
    }


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
