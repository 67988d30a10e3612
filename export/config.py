"""The settings of the exporters and writers (``zreward export onnx|tensorrt|triton-repo``), torch-free so
that a command's ``--help`` lists them without loading torch, optimum or TensorRT (their flags come from
these fields through :mod:`zreward_deploy.cliargs`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from zreward_deploy.errors import ZRewardInputError

from .contract import DTYPES, EXPORTERS, EXTERNAL_DATA_MODES, OPSET, OPSET_RANGE


@dataclass
class OnnxExportConfig:
    """Settings of one ONNX export (``zreward export onnx``)."""

    dtype: str = field(
        default="fp32", metadata={"help": "graph dtype (the outputs are fp32 in both)", "choices": DTYPES}
    )
    dimensions: tuple[str, ...] | None = field(
        default=None, metadata={"help": "rubric dimensions to bake into the graph, in order (default: all)"}
    )
    opset: int = field(default=OPSET, metadata={"help": f"ONNX opset, {OPSET_RANGE[0]} to {OPSET_RANGE[1]}"})
    trace_batch_size: int = field(
        default=2, metadata={"help": "batch size of the dummy inputs the graph is traced with (>= 1)"}
    )
    trace_sequence_length: int = field(
        default=16, metadata={"help": "text length of the dummy inputs the graph is traced with (>= 2)"}
    )
    atol: float | None = field(
        default=None,
        metadata={
            "help": "probs tolerance of the validation (default: 1e-4 fp32, 1e-2 fp16; mean/std/reward "
            "get atol times the score range)"
        },
    )
    validate: bool = field(
        default=True,
        metadata={
            "help": "compare the graph with the torch model in ONNX Runtime at shapes the trace never saw"
        },
    )
    overwrite: bool = field(
        default=False, metadata={"help": "replace a non-empty output folder (atomically, once written)"}
    )
    exporter: str = field(
        default="auto",
        metadata={
            "help": "optimum (optimum-onnx; installs only beside transformers 4.57), torch (torch.onnx, "
            "any transformers line), or auto: optimum where it is installed, torch otherwise",
            "choices": ("auto", *EXPORTERS),
        },
    )

    external_data: str = field(
        default="auto",
        metadata={
            "help": "store the weights in one model.onnx.data file beside model.onnx: auto (only when the "
            "graph would pass protobuf's 2 GB limit), always, or never (a larger model is refused)",
            "choices": EXTERNAL_DATA_MODES,
        },
    )

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ZRewardInputError("dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        if self.external_data not in EXTERNAL_DATA_MODES:
            raise ZRewardInputError(
                "external_data", f"must be one of {EXTERNAL_DATA_MODES}, got {self.external_data!r}"
            )
        if self.exporter not in ("auto", *EXPORTERS):
            raise ZRewardInputError(
                "exporter", f"must be one of {('auto', *EXPORTERS)}, got {self.exporter!r}"
            )
        if self.dimensions is not None:
            self.dimensions = tuple(self.dimensions)
        # 14: scaled_dot_product_attention's lowering; 20: the TorchScript exporter's maximum (torch 2.13)
        if not OPSET_RANGE[0] <= self.opset <= OPSET_RANGE[1]:
            raise ZRewardInputError(
                "--opset", f"must be in {OPSET_RANGE[0]}..{OPSET_RANGE[1]}, got {self.opset}"
            )
        if self.trace_batch_size < 1 or self.trace_sequence_length < 2:
            field_name = "trace_batch_size" if self.trace_batch_size < 1 else "trace_sequence_length"
            raise ZRewardInputError(field_name, "trace batch >= 1 and trace text length >= 2 are required")
        if self.atol is not None and not self.atol > 0:
            raise ZRewardInputError("atol", f"must be > 0, got {self.atol}")


@dataclass
class TensorRTBuildConfig:
    """Settings of one engine build (``zreward export tensorrt``)."""

    max_batch_size: int = field(default=32, metadata={"help": "largest batch any profile accepts"})
    opt_batch_size: int = field(default=8, metadata={"help": "batch size TensorRT tunes kernels for"})
    text_length_buckets: tuple[int, ...] = field(
        default=(32, 64, 128, 256),
        metadata={"help": "ascending text-length bucket edges; one profile each; batches pad up to an edge"},
    )
    workspace_gib: float = field(default=4.0, metadata={"help": "builder workspace memory pool limit, GiB"})
    builder_optimization_level: int = field(
        default=3, metadata={"help": "TensorRT builder optimization level 0-5 (higher: longer build, faster)"}
    )

    def __post_init__(self) -> None:
        self.text_length_buckets = tuple(int(b) for b in self.text_length_buckets)
        if self.max_batch_size < 1 or not 1 <= self.opt_batch_size <= self.max_batch_size:
            raise ZRewardInputError(
                "max_batch_size" if self.max_batch_size < 1 else "opt_batch_size",
                f"need 1 <= opt ({self.opt_batch_size}) <= max ({self.max_batch_size})",
            )
        b = self.text_length_buckets
        if not b or b[0] < 1 or any(y <= x for x, y in itertools.pairwise(b)):
            raise ZRewardInputError(
                "text_length_buckets", f"must be positive and strictly ascending, got {b}"
            )
        if not self.workspace_gib > 0:
            raise ZRewardInputError("workspace_gib", f"must be > 0, got {self.workspace_gib}")
        if not 0 <= self.builder_optimization_level <= 5:
            raise ZRewardInputError("builder_optimization_level", "must be in 0..5")


@dataclass
class TritonRepoConfig:
    """Settings of a Triton model repository (``zreward export triton-repo``)."""

    model_name: str = field(default="zreward", metadata={"help": "model name in the repository"})
    model_version: int = field(default=1, metadata={"help": "version folder to write"})
    max_batch_size: int = field(default=32, metadata={"help": "largest batch Triton forms (≤ engine's max)"})
    preferred_batch_sizes: tuple[int, ...] = field(
        default=(8, 16, 32), metadata={"help": "batch sizes the dynamic batcher aims for"}
    )
    max_queue_delay_us: int = field(
        default=2000, metadata={"help": "longest a request waits for others to batch with, microseconds"}
    )
    text_length_buckets: tuple[int, ...] | None = field(
        default=None,
        metadata={"help": "text-length buckets (default: the TensorRT record's, else 32,64,128,256)"},
    )
    instance_count: int = field(default=1, metadata={"help": "model instances per device"})
    instance_kind: str = field(
        default="gpu", metadata={"help": "gpu or cpu (ONNX only; TensorRT is gpu)", "choices": ("gpu", "cpu")}
    )
    warmup: bool = field(default=True, metadata={"help": "warm every bucket up when the model loads"})

    def __post_init__(self) -> None:
        if not self.model_name or not self.model_name.replace("_", "").replace("-", "").isalnum():
            raise ZRewardInputError("model_name", f"must be a plain name, got {self.model_name!r}")
        for name in ("model_version", "max_batch_size", "instance_count"):
            if getattr(self, name) < 1:
                raise ZRewardInputError(name, f"must be >= 1, got {getattr(self, name)}")
        self.preferred_batch_sizes = tuple(int(b) for b in self.preferred_batch_sizes)
        if any(not 1 <= b <= self.max_batch_size for b in self.preferred_batch_sizes):
            raise ZRewardInputError("preferred_batch_sizes", f"must lie in 1..{self.max_batch_size}")
        if self.max_queue_delay_us < 0:
            raise ZRewardInputError("max_queue_delay_us", "must be >= 0")
        if self.instance_kind not in ("gpu", "cpu"):
            raise ZRewardInputError("instance_kind", f"must be 'gpu' or 'cpu', got {self.instance_kind!r}")
        if self.text_length_buckets is not None:
            buckets = tuple(int(b) for b in self.text_length_buckets)
            if not buckets or buckets[0] < 1 or list(buckets) != sorted(set(buckets)):
                raise ZRewardInputError(
                    "text_length_buckets", f"must be positive and ascending, got {buckets}"
                )
            self.text_length_buckets = buckets
