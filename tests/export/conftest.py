"""Fixtures of the export tests, and the skip hook of the TensorRT engine tests.

Engine tests carry ``@pytest.mark.tensorrt``; they run wherever ``import tensorrt`` works and are skipped,
with the reason, elsewhere. ``import tensorrt`` is tried once, while the session's collection is being
modified, never when a test module is imported; CUDA is only queried inside the engine tests themselves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TENSORRT_SKIP_REASON = (
    "TensorRT is not installed here (its libraries are not on the package index reachable from this machine)"
)
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    mine = [i for i in items if "tensorrt" in i.keywords and _HERE in Path(str(i.path)).resolve().parents]
    if not mine:
        return
    try:
        import tensorrt  # noqa: F401
    except Exception:  # not installed, or PyPI's stub without its libraries
        for item in mine:
            item.add_marker(pytest.mark.skip(reason=TENSORRT_SKIP_REASON))


@pytest.fixture(scope="session")
def onnx_exports(tmp_path_factory):
    """``get(text_model_type, dtype, dimensions=None) -> (export_dir, model, processor)``: tiny-preset ONNX
    exports, made once per session and shared (tests must not modify them)."""
    from zreward_deploy.export.onnx import OnnxExportConfig, export_onnx
    from zreward_deploy.presets import build_preset

    cache: dict[tuple, tuple] = {}

    def get(text_model_type: str = "qwen2", dtype: str = "fp32", dimensions: tuple[str, ...] | None = None):
        key = (text_model_type, dtype, dimensions)
        if key not in cache:
            model, processor = build_preset("tiny", text_model_type=text_model_type, seed=0)
            out = tmp_path_factory.mktemp(f"onnx_{text_model_type}_{dtype}")
            export_onnx(model, out, OnnxExportConfig(dtype=dtype, dimensions=dimensions), processor=processor)
            cache[key] = (out, model, processor)
        return cache[key]

    return get
