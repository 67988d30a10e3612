"""The optimum-onnx exporter of the ``zreward_vlm`` graph contract: its ``OnnxConfig`` and dummy inputs.

Imported only when :func:`zreward_deploy.export.onnx.export_onnx` runs the ``optimum`` exporter (the
``optimum`` extra, on transformers 4.57; optimum-onnx 0.1.0, its newest release, pins ``transformers<4.58``).
The trace inputs, the dynamic axes and the tolerances come from :mod:`.validation` and :mod:`.contract`, which
the ``torch`` exporter uses too, so both exporters trace the same module at the same inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from zreward_deploy.errors import MissingDependencyError

from .contract import ATOL, DYNAMIC_AXES, INPUT_NAMES, OPSET, OUTPUT_NAMES
from .validation import trace_inputs

try:  # optimum-onnx is the `onnx` extra; without it this module cannot work, so say which extra
    from optimum.exporters.onnx import OnnxConfig
    from optimum.exporters.onnx import export as optimum_export
    from optimum.utils import DummyInputGenerator, NormalizedTextAndVisionConfig
except ImportError as _exc:  # exercised on transformers 5, where optimum-onnx does not install
    raise MissingDependencyError("optimum-onnx", "optimum", "the optimum ONNX exporter") from _exc


class ZRewardDummyInputGenerator(DummyInputGenerator):
    """optimum's view of :func:`zreward_deploy.export.validation.trace_inputs` (seeded, right-padded, ragged)."""

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
        inputs = trace_inputs(
            self.vocab_size, self.image_size, self.batch_size, self.sequence_length, float_dtype, self.seed
        )
        tensor = inputs[input_name]
        if input_name != "pixel_values" and int_dtype != "int64":
            raise ValueError(f"the graph contract's {input_name} is int64, not {int_dtype}")
        return tensor if framework == "pt" else tensor.numpy()


class ZRewardOnnxConfig(OnnxConfig):
    """optimum-onnx description of the ``zreward_vlm`` graph contract (docs/design.md §9).

    Not registered in optimum's ``TasksManager`` (no global registration): :func:`export_with_optimum`
    passes it explicitly.
    """

    NORMALIZED_CONFIG_CLASS = NormalizedTextAndVisionConfig.with_args(
        text_config="text_config", vision_config="vision_config"
    )
    DUMMY_INPUT_GENERATOR_CLASSES = (ZRewardDummyInputGenerator,)
    DEFAULT_ONNX_OPSET = OPSET
    ATOL_FOR_VALIDATION: ClassVar[dict[str, float]] = dict(ATOL)

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        return {name: dict(DYNAMIC_AXES[name]) for name in INPUT_NAMES}

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        return {name: dict(DYNAMIC_AXES[name]) for name in OUTPUT_NAMES}

    @property
    def values_override(self) -> dict[str, Any] | None:
        return None  # the model never uses a KV cache when scoring; nothing to override in its config


def export_with_optimum(
    module: nn.Module, config: Any, output: Path, opset: int, dtype: str, trace_shapes: dict[str, int]
) -> None:
    """``optimum.exporters.onnx.export`` of ``module`` (a graph module whose ``config`` is ``config``)."""
    onnx_config = ZRewardOnnxConfig(config, task="feature-extraction", float_dtype=dtype)
    optimum_export(
        model=module.eval(),
        config=onnx_config,
        output=output,
        opset=opset,
        device="cpu",
        input_shapes=trace_shapes,
        # optimum casts its numpy dummies to fp16 for the dynamic-axes check only when told
        dtype="fp16" if dtype == "fp16" else None,
    )
