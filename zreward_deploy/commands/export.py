"""``zreward export onnx|tensorrt|triton-repo``: deployable artefacts of a model (docs/export.md).

Each command's options are the fields of its config dataclass (``OnnxExportConfig``,
``TensorRTBuildConfig``, ``TritonRepoConfig``) turned into flags by :mod:`zreward_deploy.cliargs`, so the
CLI takes what the library takes. The configs live in the torch-free :mod:`zreward_deploy.export.config`,
and their flags are added only when their own command is parsed, so every ``--help`` is instant. The older, shorter
spellings are kept: ``--buckets`` (``text_length_buckets``), ``--name`` (``model_name``) and ``--kind``
(``instance_kind``).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..cliargs import ArgumentParser, dataclass_from_namespace, defer_dataclass_arguments

# field -> flag, where a command keeps a flag spelled otherwise than its field
TENSORRT_FLAGS = {"text_length_buckets": "--buckets"}
TRITON_FLAGS = {"model_name": "--name", "text_length_buckets": "--buckets", "instance_kind": "--kind"}


def _onnx_config() -> type:
    from ..export.config import OnnxExportConfig

    return OnnxExportConfig


def _tensorrt_config() -> type:
    from ..export.config import TensorRTBuildConfig

    return TensorRTBuildConfig


def _triton_config() -> type:
    from ..export.config import TritonRepoConfig

    return TritonRepoConfig


def _loading_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the commands that read an export folder and write a new one."""
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument(
        "--allow-failed-validation",
        action="store_true",
        help="accept an ONNX export whose validation failed (refused otherwise; docs/export.md, Integrity)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``zreward export onnx|tensorrt|triton-repo`` and their arguments."""
    group = subparsers.add_parser(
        "export", help="export to ONNX, build TensorRT engines, write a Triton repo"
    )
    sub = group.add_subparsers(
        dest="export_command", metavar="<command>", required=True, parser_class=ArgumentParser
    )

    onnx = sub.add_parser("onnx", help="export a model directory to a validated, self-describing ONNX folder")
    onnx.add_argument(
        "--model",
        required=True,
        help="model directory (config.json, *.safetensors, tokenizer): the package's, or a native "
        "Qwen2-VL / Qwen2.5-VL / Qwen3-VL / SmolVLM checkpoint folder",
    )
    onnx.add_argument(
        "--out",
        required=True,
        help="output folder (new or empty unless --overwrite; never the model directory, inside or around it)",
    )
    defer_dataclass_arguments(onnx, _onnx_config)  # --dtype, --dimensions, --opset, --atol, --no-validate ...
    onnx.set_defaults(func=run_onnx)

    trt = sub.add_parser(
        "tensorrt", help="build a TensorRT engine from an ONNX folder (needs TensorRT and a GPU)"
    )
    trt.add_argument("--onnx", required=True, help="ONNX folder written by `zreward export onnx`")
    trt.add_argument("--out", required=True, help="output folder (new or empty unless --overwrite)")
    defer_dataclass_arguments(trt, _tensorrt_config, flags=TENSORRT_FLAGS)
    _loading_flags(trt)
    trt.set_defaults(func=run_tensorrt)

    triton = sub.add_parser("triton-repo", help="write a Triton Inference Server model repository")
    triton.add_argument("--source", required=True, help="ONNX folder or TensorRT folder to serve")
    triton.add_argument("--out", required=True, help="output folder (new or empty unless --overwrite)")
    defer_dataclass_arguments(triton, _triton_config, flags=TRITON_FLAGS)
    _loading_flags(triton)
    triton.set_defaults(func=run_triton)


def run_onnx(args: argparse.Namespace) -> int:
    """``zreward export onnx``: 0 on a validated export, 1 when validation failed (folder kept), 2 on bad
    input (printed by the CLI as one line)."""
    from ..export.onnx import OnnxExportConfig, OnnxValidationError, export_onnx

    config = dataclass_from_namespace(OnnxExportConfig, args)
    try:
        meta = export_onnx(args.model, args.out, config)
    except OnnxValidationError as exc:
        print(
            f"zreward: export failed validation: {exc} (the folder is kept for inspection; loading it "
            "needs --allow-failed-validation)",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {args.out}: {meta['dtype']} graph, dimensions {meta['dimensions']}, opset {meta['opset']}")
    if meta["validation"]:
        for case in meta["validation"]["cases"]:
            diffs = ", ".join(f"{k} {v:.2g}" for k, v in case["max_abs_diff"].items())
            print(
                f"  validated {case['name']} (batch {case['batch_size']}, length {case['sequence_length']}): {diffs}"
            )
    return 0


def run_tensorrt(args: argparse.Namespace) -> int:
    """``zreward export tensorrt``: copy a verified ONNX folder and build its engine."""
    from ..export.tensorrt import TensorRTBuildConfig, export_tensorrt

    config = dataclass_from_namespace(TensorRTBuildConfig, args, TENSORRT_FLAGS)
    record = export_tensorrt(
        args.onnx,
        args.out,
        config,
        overwrite=args.overwrite,
        allow_failed_validation=args.allow_failed_validation,
    )
    print(json.dumps(record["engine"], indent=2))
    return 0


def run_triton(args: argparse.Namespace) -> int:
    """``zreward export triton-repo``: a Triton model repository and client folder of a verified folder."""
    from ..export.triton_repo import TritonRepoConfig, write_triton_repository

    config = dataclass_from_namespace(TritonRepoConfig, args, TRITON_FLAGS)
    paths = write_triton_repository(
        args.source,
        args.out,
        config,
        overwrite=args.overwrite,
        allow_failed_validation=args.allow_failed_validation,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
