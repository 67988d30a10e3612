"""Triton Inference Server model repository for the ONNX or TensorRT artefact (docs/design.md §9).

Layout written by :func:`write_triton_repository`::

    <out>/model_repository/<name>/config.pbtxt
    <out>/model_repository/<name>/<version>/model.onnx      (platform onnxruntime_onnx)
                                         or model.plan      (platform tensorrt_plan)
    <out>/client/   config.json, tokenizer, zreward_processor.json, zreward_onnx.json, zreward_triton.json

The client folder sits *outside* the repository because Triton treats every folder in a repository as a
model. A client tokenizes with ``ZRewardProcessor.from_pretrained(client_dir)`` (the same preprocessing as
every other backend), right-pads ``input_ids``/``attention_mask`` to the smallest text-length bucket that
holds the batch (``zreward_triton.json`` lists the buckets and the pad id) and sends the three tensors.

Why buckets: Triton's dynamic batcher only merges requests whose tensors have the same shape, so free
text lengths would leave most requests in batches of one. Padding to a few fixed lengths makes requests
batchable and, for TensorRT, matches one optimization profile per bucket (``instance_group.profile`` lists
them all; the backend picks the profile that holds the request's shape). Right padding does not change
the scores (see ``export/tensorrt.py``). ``model_warmup`` runs each bucket once at load, so no first
request pays for lazy initialisation.

The config is plain text written here; ``tests/export/test_triton_repo.py`` parses it with Triton's own
protobuf definitions (``tritonclient.grpc.model_config_pb2``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from zreward_deploy.errors import InvalidModelError, ZRewardInputError
from zreward_deploy.fileio import atomic_directory, check_output_dir

from .config import TensorRTBuildConfig, TritonRepoConfig
from .contract import METADATA_FILE, verify_export
from .tensorrt import read_tensorrt_record

TRITON_CLIENT_FILE = "zreward_triton.json"
# zreward_native.json and preprocessor_config.json: a native model's scoring settings and normalisation
_CLIENT_FILES = (
    "config.json",
    "zreward_processor.json",
    METADATA_FILE,
    "zreward_native.json",
    "preprocessor_config.json",
)
_TRITON_TYPES = {"int64": "TYPE_INT64", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def _dims(values: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def triton_config_text(
    meta: dict[str, Any], platform: str, config: TritonRepoConfig, buckets: tuple[int, ...]
) -> str:
    """The ``config.pbtxt`` text for an export's graph contract.

    Args:
        meta: the export's ``zreward_onnx.json`` (dtype, dimensions, score scale, image size).
        platform: ``"onnxruntime_onnx"`` or ``"tensorrt_plan"``.
        config: repository settings.
        buckets: text-length buckets (TensorRT: one profile each, in order).
    """
    d, k = len(meta["dimensions"]), len(meta["score_scale"]["values"])
    size = meta["image_size"]
    pixel_type = _TRITON_TYPES[meta["inputs"]["pixel_values"]["dtype"]]
    lines = [
        f'name: "{config.model_name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {config.max_batch_size}",
        "input [",
        f'  {{ name: "input_ids" data_type: TYPE_INT64 dims: {_dims([-1])} }},',
        f'  {{ name: "attention_mask" data_type: TYPE_INT64 dims: {_dims([-1])} }},',
        f'  {{ name: "pixel_values" data_type: {pixel_type} dims: {_dims([3, size, size])} }}',
        "]",
        "output [",
        f'  {{ name: "probs" data_type: TYPE_FP32 dims: {_dims([d, k])} }},',
        f'  {{ name: "mean" data_type: TYPE_FP32 dims: {_dims([d])} }},',
        f'  {{ name: "std" data_type: TYPE_FP32 dims: {_dims([d])} }},',
        # a [B] output: Triton needs non-empty dims, so [1] reshaped to the model's [] per item
        f'  {{ name: "reward" data_type: TYPE_FP32 dims: {_dims([1])} reshape: {{ shape: [ ] }} }}',
        "]",
        "dynamic_batching {",
        *(f"  preferred_batch_size: {b}" for b in config.preferred_batch_sizes),
        f"  max_queue_delay_microseconds: {config.max_queue_delay_us}",
        "}",
    ]
    kind = "KIND_GPU" if platform == "tensorrt_plan" or config.instance_kind == "gpu" else "KIND_CPU"
    group = [f"  {{ count: {config.instance_count} kind: {kind}"]
    if platform == "tensorrt_plan":
        group.append("    profile: [ " + ", ".join(f'"{i}"' for i in range(len(buckets))) + " ]")
    lines += ["instance_group [", *group, "  }", "]"]
    lines += [
        "parameters [",
        f'  {{ key: "zreward.text_length_buckets" value: {{ string_value: "{",".join(map(str, buckets))}" }} }},',
        f'  {{ key: "zreward.dimensions" value: {{ string_value: "{",".join(meta["dimensions"])}" }} }},',
        f'  {{ key: "zreward.score_values" value: {{ string_value: "{",".join(str(v) for v in meta["score_scale"]["values"])}" }} }}',
        "]",
    ]
    if config.warmup:
        lines.append("model_warmup [")
        for i, length in enumerate(buckets):
            comma = "," if i < len(buckets) - 1 else ""
            lines += [
                "  {",
                f'    name: "bucket_{length}" batch_size: 1 count: 1',
                f'    inputs {{ key: "input_ids" value: {{ data_type: TYPE_INT64 dims: {_dims([length])} zero_data: true }} }}',
                f'    inputs {{ key: "attention_mask" value: {{ data_type: TYPE_INT64 dims: {_dims([length])} zero_data: true }} }}',
                f'    inputs {{ key: "pixel_values" value: {{ data_type: {pixel_type} dims: {_dims([3, size, size])} random_data: true }} }}',
                "  }" + comma,
            ]
        lines.append("]")
    return "\n".join(lines) + "\n"


def _artefact(directory: Path, meta: dict[str, Any]) -> tuple[str, Path, dict[str, Any] | None]:
    """(platform, model file, TensorRT record) of an ONNX or TensorRT folder; file names come from the
    checked metadata and record, so they stay inside the folder."""
    record = read_tensorrt_record(directory)
    if record is not None:
        if not record.get("engine"):
            raise InvalidModelError(str(directory), "is a TensorRT folder without a built engine")
        return "tensorrt_plan", directory / record["engine"]["file"], record
    return "onnxruntime_onnx", directory / meta["onnx_file"], None


def write_triton_repository(
    artefact_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TritonRepoConfig | None = None,
    overwrite: bool = False,
    allow_failed_validation: bool = False,
) -> dict[str, Path]:
    """Write a model repository and a client folder for an ONNX or TensorRT folder.

    The source goes through :func:`~zreward_deploy.export.contract.verify_export`; ``out_dir`` is built under a
    temporary name and renamed into place when complete, so Triton never sees half a repository.

    Args:
        artefact_dir: an ONNX export folder or a TensorRT folder (never inside ``out_dir`` or containing it).
        out_dir: where ``model_repository/`` and ``client/`` go (new or empty unless ``overwrite``).
        config: repository settings.
        overwrite: replace a non-empty ``out_dir``.
        allow_failed_validation: accept a source whose ONNX validation failed.

    Returns:
        ``{"repository": ..., "config": .../config.pbtxt, "model": the copied model file, "client": ...}``.
    """
    cfg = config or TritonRepoConfig()
    src = Path(artefact_dir)
    meta = verify_export(src, allow_failed_validation=allow_failed_validation)
    platform, model_file, record = _artefact(src, meta)
    buckets = _text_length_buckets(src, meta, record, cfg)
    # a model repository holds one folder per model, each with its config.pbtxt
    out = check_output_dir(out_dir, overwrite, protect=[src], marker=["*/config.pbtxt"])
    model_rel = Path("model_repository", cfg.model_name)
    target_rel = (
        model_rel / str(cfg.model_version) / ("model.plan" if platform == "tensorrt_plan" else "model.onnx")
    )
    with atomic_directory(out) as tmp:
        (tmp / target_rel).parent.mkdir(parents=True)
        shutil.copyfile(model_file, tmp / target_rel)
        external = meta.get("external_data")
        if platform == "onnxruntime_onnx" and external is not None:
            # the graph names its weights file by this relative path: it goes beside the copy
            shutil.copyfile(src / external["file"], (tmp / target_rel).parent / external["file"])
        (tmp / model_rel / "config.pbtxt").write_text(triton_config_text(meta, platform, cfg, buckets))

        _write_client(src, tmp / "client", meta, platform, cfg, buckets)
    return {
        "repository": out / "model_repository",
        "config": out / model_rel / "config.pbtxt",
        "model": out / target_rel,
        "client": out / "client",
    }


def _text_length_buckets(
    src: Path, meta: dict[str, Any], record: dict[str, Any] | None, cfg: TritonRepoConfig
) -> tuple[int, ...]:
    """The prompt-length buckets of the repository: a TensorRT engine's own (fixed by its profiles), else
    the configured ones; the largest must hold the model's prompt limit."""
    if record is not None:
        try:
            build = TensorRTBuildConfig(**record["build_config"])
        except TypeError as exc:
            raise InvalidModelError(str(src), f"has an invalid TensorRT build_config ({exc})") from None
        if cfg.max_batch_size > build.max_batch_size:
            raise ZRewardInputError(
                "max_batch_size",
                f"{cfg.max_batch_size} exceeds the engine's largest batch {build.max_batch_size}",
            )
        if cfg.text_length_buckets not in (None, build.text_length_buckets):
            raise ZRewardInputError(
                "text_length_buckets", "a TensorRT engine's buckets are fixed by its profiles"
            )
        buckets = build.text_length_buckets
    else:
        buckets = cfg.text_length_buckets or TensorRTBuildConfig().text_length_buckets
    if buckets[-1] < meta["max_prompt_tokens"]:
        raise ZRewardInputError(
            "text_length_buckets",
            f"the largest bucket must hold {meta['max_prompt_tokens']} tokens (the prompt limit)",
        )
    return buckets


def _write_client(
    src: Path,
    client: Path,
    meta: dict[str, Any],
    platform: str,
    cfg: TritonRepoConfig,
    buckets: tuple[int, ...],
) -> None:
    """The client folder: the tokenizer's files, the model's description and ``TRITON_CLIENT_FILE`` (what a
    client needs to pad prompts into the repository's buckets and read the outputs)."""
    from .native_graph import load_export_processor

    client.mkdir()
    for path in src.iterdir():  # the tokenizer's files plus the model's own description
        if path.is_file() and (
            path.name in _CLIENT_FILES or path.name.startswith(("tokenizer", "special_tokens"))
        ):
            shutil.copyfile(path, client / path.name)
    pad_id = load_export_processor(client).tokenizer.pad_token_id
    (client / TRITON_CLIENT_FILE).write_text(
        json.dumps(
            {
                "model_name": cfg.model_name,
                "platform": platform,
                "text_length_buckets": list(buckets),
                "pad_token_id": pad_id,
                "inputs": meta["inputs"],
                "outputs": meta["outputs"],
                "dimensions": meta["dimensions"],
                "repository_config": {
                    k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                },
            },
            indent=2,
        )
        + "\n"
    )
