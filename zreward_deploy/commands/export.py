"""``zreward export onnx|tensorrt|triton-repo``: deployable artefacts of a model (docs/export.md)."""

from __future__ import annotations

import argparse
import json
import sys

from .args import parse_list


def _csv(text: str | None, flag: str, cast: type = str) -> tuple | None:
    values = parse_list(text, flag, cast)
    return tuple(values) if values is not None else None


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
    sub = group.add_subparsers(dest="export_command", metavar="<command>", required=True)

    onnx = sub.add_parser(
        "onnx", help="export a model directory to a validated, self-describing ONNX folder (optimum-onnx)"
    )
    onnx.add_argument(
        "--model", required=True, help="model directory (config.json, *.safetensors, tokenizer)"
    )
    onnx.add_argument(
        "--out",
        required=True,
        help="output folder (new or empty unless --overwrite; never the model directory, inside or around it)",
    )
    onnx.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"], help="graph dtype (default fp32)")
    onnx.add_argument("--dimensions", help="comma-separated rubric dimensions to bake in (default: all)")
    onnx.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    onnx.add_argument(
        "--atol", type=float, help="validation tolerance on probs (default 1e-4 fp32, 1e-2 fp16)"
    )
    onnx.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime validation")
    onnx.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty folder (atomically, once the export is written)",
    )
    onnx.set_defaults(func=run_onnx)

    trt = sub.add_parser(
        "tensorrt", help="build a TensorRT engine from an ONNX folder (needs TensorRT and a GPU)"
    )
    trt.add_argument("--onnx", required=True, help="ONNX folder written by `zreward export onnx`")
    trt.add_argument("--out", required=True, help="output folder (new or empty unless --overwrite)")
    trt.add_argument("--max-batch-size", type=int, default=32, help="largest batch (default 32)")
    trt.add_argument("--opt-batch-size", type=int, default=8, help="batch TensorRT tunes for (default 8)")
    trt.add_argument("--buckets", default="32,64,128,256", help="text-length buckets (default 32,64,128,256)")
    trt.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace, GiB (default 4)")
    _loading_flags(trt)
    trt.set_defaults(func=run_tensorrt)

    triton = sub.add_parser("triton-repo", help="write a Triton Inference Server model repository")
    triton.add_argument("--source", required=True, help="ONNX folder or TensorRT folder to serve")
    triton.add_argument("--out", required=True, help="output folder (new or empty unless --overwrite)")
    triton.add_argument("--name", default="zreward", help="model name in the repository (default zreward)")
    triton.add_argument("--max-batch-size", type=int, default=32, help="largest dynamic batch (default 32)")
    triton.add_argument(
        "--preferred-batch-sizes", default="8,16,32", help="dynamic batcher targets (default 8,16,32)"
    )
    triton.add_argument(
        "--max-queue-delay-us", type=int, default=2000, help="batching delay, µs (default 2000)"
    )
    triton.add_argument("--buckets", help="text-length buckets (default: the engine's, else 32,64,128,256)")
    triton.add_argument("--kind", default="gpu", choices=["gpu", "cpu"], help="instance kind (ONNX only)")
    triton.add_argument("--no-warmup", action="store_true", help="no model_warmup entries")
    _loading_flags(triton)
    triton.set_defaults(func=run_triton)


def run_onnx(args: argparse.Namespace) -> int:
    """``zreward export onnx``: 0 on a validated export, 1 when validation failed (folder kept), 2 on bad
    input (printed by the CLI as one line)."""
    from ..export.onnx import OnnxExportConfig, OnnxValidationError, export_onnx

    config = OnnxExportConfig(
        dtype=args.dtype,
        dimensions=_csv(args.dimensions, "--dimensions"),
        opset=args.opset,
        atol=args.atol,
        validate=not args.no_validate,
        overwrite=args.overwrite,
    )
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

    config = TensorRTBuildConfig(
        max_batch_size=args.max_batch_size,
        opt_batch_size=args.opt_batch_size,
        text_length_buckets=_csv(args.buckets, "--buckets", int),
        workspace_gib=args.workspace_gib,
    )
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

    config = TritonRepoConfig(
        model_name=args.name,
        max_batch_size=args.max_batch_size,
        preferred_batch_sizes=_csv(args.preferred_batch_sizes, "--preferred-batch-sizes", int),
        max_queue_delay_us=args.max_queue_delay_us,
        text_length_buckets=_csv(args.buckets, "--buckets", int),
        instance_kind=args.kind,
        warmup=not args.no_warmup,
    )
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
