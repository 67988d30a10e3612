"""ONNX Runtime backend: a :class:`~zreward_deploy.scoring.BaseScorer` over an exported ONNX folder.

An export folder (written by :func:`zreward_deploy.export.onnx.export_onnx`) holds ``model.onnx``, the
model's ``config.json`` (its rubric lists the exported dimensions, in graph order), the tokenizer and
``zreward_processor.json`` (so :class:`~zreward_deploy.processing.ZRewardProcessor` preprocesses exactly as
for the torch backend) and ``zreward_onnx.json`` (rubric, score scale, dtype, versions, validation).

The graph and folder contract (input and output names, dtypes, the metadata and its verification) is
:mod:`.contract`'s; :class:`OrtScorer` selects (and reorders) the columns a caller asks for.

Providers: ``CPUExecutionProvider`` (``device="cpu"``) and ``CUDAExecutionProvider`` (``device="cuda[:N]"``,
needs ``onnxruntime-gpu``) with IO binding, so inputs and outputs stay in torch CUDA tensors and ORT does no
host round trip. ``onnxruntime`` is imported only when a session is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zreward_deploy.errors import (
    InvalidModelError,
    MissingDependencyError,
    UnknownDimensionError,
    ZRewardInputError,
)
from zreward_deploy.processing import ZRewardProcessor
from zreward_deploy.scoring import BaseScorer

from .contract import (
    INPUT_NAMES,
    METADATA_FILE,
    ONNX_FILE,
    OUTPUT_NAMES,
    check_graph_outputs,
    check_unchanged,
    verify_export_files,
)

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}

_OPT_LEVELS = ("disable", "basic", "extended", "all")

# --------------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------------


def import_onnxruntime() -> Any:
    """``import onnxruntime``, or :class:`MissingDependencyError` naming the ``onnx`` extra."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "onnx", "the ONNX Runtime backend") from exc
    return onnxruntime


@dataclass
class OrtSessionConfig:
    """ONNX Runtime session settings (one per scorer)."""

    graph_optimization_level: str = field(
        default="all",
        metadata={"help": "ORT graph optimizations: disable, basic, extended or all (fusions need 'all')"},
    )
    intra_op_num_threads: int = field(
        default=0, metadata={"help": "threads inside one operator; 0 = ORT's default (the physical cores)"}
    )
    inter_op_num_threads: int = field(
        default=0, metadata={"help": "threads across operators (parallel mode only); 0 = ORT's default"}
    )
    parallel_execution: bool = field(
        default=False, metadata={"help": "run independent graph branches in parallel (rarely helps here)"}
    )
    io_binding: bool = field(
        default=True, metadata={"help": "CUDA provider: bind torch CUDA tensors as inputs/outputs"}
    )
    optimized_model_path: str | None = field(
        default=None, metadata={"help": "write the optimized graph here (to inspect which fusions ran)"}
    )

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in _OPT_LEVELS:
            raise ZRewardInputError(
                "graph_optimization_level",
                f"must be one of {_OPT_LEVELS}, got {self.graph_optimization_level!r}",
            )
        if self.intra_op_num_threads < 0 or self.inter_op_num_threads < 0:
            raise ZRewardInputError("threads", "thread counts must be >= 0 (0 = ORT's default)")


def parse_device(device: str | torch.device | None) -> tuple[str, int]:
    """``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` -> ``("cpu" | "cuda", device index)``."""
    dev = torch.device(device if device is not None else "cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ZRewardInputError(device, "the ONNX Runtime backend runs on 'cpu' or 'cuda[:N]'")
    return dev.type, dev.index or 0


def create_session(
    onnx_path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    session_config: OrtSessionConfig | None = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``onnx_path`` on the CPU or CUDA provider.

    Raises :class:`MissingDependencyError` when ``onnxruntime`` (or, for CUDA, ``onnxruntime-gpu``'s CUDA
    provider) is not installed.
    """
    ort = import_onnxruntime()
    cfg = session_config or OrtSessionConfig()
    kind, index = parse_device(device)
    if kind == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MissingDependencyError(
                "onnxruntime-gpu", "gpu", "ONNX Runtime on CUDA (the CUDA execution provider)"
            )
        providers: list[Any] = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.graph_optimization_level]
    options.intra_op_num_threads = cfg.intra_op_num_threads
    options.inter_op_num_threads = cfg.inter_op_num_threads
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if cfg.parallel_execution else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    if cfg.optimized_model_path:
        options.optimized_model_filepath = str(cfg.optimized_model_path)
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)


# --------------------------------------------------------------------------------------------------
# The scorer
# --------------------------------------------------------------------------------------------------

_NUMPY_OF_TORCH = {torch.float32: "float32", torch.float16: "float16", torch.int64: "int64"}
_ORT_TYPES = {"fp32": "tensor(float)", "fp16": "tensor(float16)"}


class OrtScorer(BaseScorer):
    """Scores (image, prompt) pairs with an exported ONNX graph in ONNX Runtime (the ``onnx`` backend).

    Args:
        session: an ``onnxruntime.InferenceSession`` of the export's ``model.onnx``.
        processor: the export's processor (same preprocessing as the torch backend).
        metadata: the export's ``zreward_onnx.json``.
        device: ``"cpu"`` or ``"cuda[:N]"`` (must match the session's provider).
        max_batch_size: micro-batch size; calls with more items are split.
        io_binding: on CUDA, bind torch CUDA tensors instead of copying through numpy.
    """

    backend = "onnx"

    def __init__(
        self,
        session: Any,
        processor: ZRewardProcessor,
        metadata: dict[str, Any],
        device: str | torch.device | None = "cpu",
        max_batch_size: int = 32,
        io_binding: bool = True,
    ):
        if max_batch_size < 1:
            raise ZRewardInputError("max_batch_size", f"must be >= 1, got {max_batch_size}")
        self.session = session
        self.processor = processor
        self.metadata = metadata
        self.max_batch_size = max_batch_size
        self.device_type, self.device_index = parse_device(device)
        self.io_binding = io_binding and self.device_type == "cuda"
        self.dtype = metadata["dtype"]
        self.dimensions: list[str] = list(metadata["dimensions"])
        self.num_scores = len(metadata["score_scale"]["values"])
        graph = str(metadata.get("onnx_file", ONNX_FILE))
        inputs = {i.name: i for i in session.get_inputs()}
        if sorted(inputs) != sorted(INPUT_NAMES):
            raise InvalidModelError(graph, f"graph inputs {sorted(inputs)} are not {list(INPUT_NAMES)}")
        pixel_type = _ORT_TYPES[self.dtype]
        if inputs["pixel_values"].type != pixel_type:
            raise InvalidModelError(
                graph, f"pixel_values is {inputs['pixel_values'].type} but {METADATA_FILE} says {self.dtype}"
            )
        # The graph's own static shapes against the metadata: a D or K mismatch is refused, not misread.
        check_graph_outputs(metadata, {o.name: o.shape for o in session.get_outputs()}, graph)

    @classmethod
    def from_pretrained(
        cls,
        export_dir: str | os.PathLike,
        device: str | torch.device | None = "cpu",
        max_batch_size: int = 32,
        dtype: str | torch.dtype | None = None,
        session_config: OrtSessionConfig | None = None,
        provider: str | None = None,
        allow_failed_validation: bool = False,
    ) -> OrtScorer:
        """Load an export folder (``zreward export onnx``).

        Args:
            export_dir: the export folder.
            device: ``"cpu"`` (CPU provider) or ``"cuda[:N]"`` (CUDA provider, ``onnxruntime-gpu``).
            max_batch_size: micro-batch size.
            dtype: optional check: the dtype the caller expects (``"fp16"``/``torch.float16``, ...); the
                graph's dtype is fixed at export, so a different one raises instead of silently running it.
            session_config: ORT session settings (threads, graph optimization level).
            provider: ``"cpu"`` or ``"cuda"``, an alias of ``device`` kept for ORT users.
            allow_failed_validation: load an export whose validation failed (``validation.passed:
                false``), e.g. to inspect it; refused otherwise.

        Raises:
            InvalidModelError: the folder fails :func:`verify_export` (a tampered, mixed or half-written
                export, a failed validation, a file name leaving the folder), or its graph's inputs and
                static output shapes disagree with the metadata.
        """
        meta, hashed = verify_export_files(export_dir, allow_failed_validation=allow_failed_validation)
        if provider is not None:
            device = provider
        if dtype is not None:
            wanted = {torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, dtype)
            if wanted != meta["dtype"]:
                raise ZRewardInputError(
                    "dtype",
                    f"this export is {meta['dtype']}; export again with --dtype {wanted} to run in {wanted}",
                )
        from .native_graph import load_export_processor  # a native model's export, or the package's

        processor = load_export_processor(export_dir)
        cfg = session_config or OrtSessionConfig()
        graph = Path(export_dir) / meta["onnx_file"]
        session = create_session(graph, device, cfg)
        for name, identity in hashed.items():  # ORT read the very files (graph, external data) checked
            check_unchanged(Path(export_dir) / name, identity)
        return cls(session, processor, meta, device, max_batch_size, io_binding=cfg.io_binding)

    # -- raw graph ------------------------------------------------------------------------------------
    def run(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Run the graph on one padded batch.

        Args:
            input_ids, attention_mask: ``[B, S]`` int64 (right-padded prompt part).
            pixel_values: ``[B, 3, H, W]`` float (cast to the export's dtype here).

        Returns:
            ``{"probs": [B, D, K], "mean": [B, D], "std": [B, D], "reward": [B]}`` float32 tensors over all
            exported dimensions (CPU tensors, or CUDA tensors with IO binding).
        """
        feeds = {
            "input_ids": input_ids.to(torch.int64),
            "attention_mask": attention_mask.to(torch.int64),
            "pixel_values": pixel_values.to(TORCH_DTYPES[self.dtype]),
        }
        if self.io_binding:
            return self._run_bound(feeds)
        arrays = {name: t.detach().cpu().contiguous().numpy() for name, t in feeds.items()}
        outputs = self.session.run(list(OUTPUT_NAMES), arrays)
        return {name: torch.from_numpy(out) for name, out in zip(OUTPUT_NAMES, outputs, strict=True)}

    def _run_bound(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """CUDA provider with IO binding: ORT reads and writes torch CUDA memory directly."""
        import numpy as np

        dev = torch.device("cuda", self.device_index)
        binding = self.session.io_binding()
        inputs = {name: t.to(dev).contiguous() for name, t in feeds.items()}  # kept alive until the run ends
        for name, t in inputs.items():
            binding.bind_input(
                name,
                "cuda",
                self.device_index,
                np.dtype(_NUMPY_OF_TORCH[t.dtype]),
                tuple(t.shape),
                t.data_ptr(),
            )
        b, d, k = inputs["input_ids"].shape[0], len(self.dimensions), self.num_scores
        shapes = {"probs": (b, d, k), "mean": (b, d), "std": (b, d), "reward": (b,)}
        outputs = {
            name: torch.empty(shape, dtype=torch.float32, device=dev) for name, shape in shapes.items()
        }
        for name, t in outputs.items():
            binding.bind_output(name, "cuda", self.device_index, np.float32, tuple(t.shape), t.data_ptr())
        # torch wrote the inputs on its current stream; ORT runs on its own stream
        torch.cuda.current_stream(dev).synchronize()
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return outputs

    def columns(self, dimensions: list[str]) -> list[int]:
        """Graph columns of ``dimensions``; a dimension that was not exported raises."""
        missing = [d for d in dimensions if d not in self.dimensions]
        if missing:
            raise UnknownDimensionError(
                missing[0], f"was not exported to this ONNX graph; it has {self.dimensions}"
            )
        return [self.dimensions.index(d) for d in dimensions]

    def _forward(self, pixel_values, input_ids, attention_mask, dimensions):
        cols = self.columns(list(dimensions))
        out = self.run(input_ids, attention_mask, pixel_values)
        index = torch.tensor(cols, device=out["probs"].device)
        return (
            out["probs"].index_select(1, index),
            out["mean"].index_select(1, index),
            out["std"].index_select(1, index),
        )

    def describe(self) -> dict[str, Any]:
        """Provider, threads and dtype, for benchmark records."""
        options = self.session.get_session_options()
        return {
            "backend": self.backend,
            "dtype": self.dtype,
            "providers": self.session.get_providers(),
            "intra_op_num_threads": options.intra_op_num_threads,
            "graph_optimization_level": str(options.graph_optimization_level),
        }
