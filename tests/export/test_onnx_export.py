"""ONNX export (export/onnx.py): the graph contract, validation at untraced shapes, broken exports caught.

Tiny presets (a few seconds per export) for the three text-model families in fp32 and fp16.
"""

from __future__ import annotations

import json
import shutil
from importlib.util import find_spec

import numpy as np
import onnx
import pytest
import torch

from zreward_deploy.errors import MissingDependencyError, UnknownDimensionError, ZRewardInputError
from zreward_deploy.export import onnx as onnx_module
from zreward_deploy.export.contract import ATOL, EXPORTERS, read_export_metadata
from zreward_deploy.export.onnx import (
    OnnxExportConfig,
    ZRewardOnnxModel,
    export_graph,
    export_onnx,
    resolve_exporter,
)
from zreward_deploy.export.ort import create_session
from zreward_deploy.export.validation import (
    OnnxValidationError,
    check_validation,
    trace_inputs,
    validate_onnx,
    validation_inputs,
)

TEXT_MODELS = ("qwen2", "qwen3", "llama")
DTYPES = ("fp32", "fp16")
# Found, not imported, at collection: optimum-onnx installs only beside transformers 4.57.
HAS_OPTIMUM = find_spec("optimum") is not None and find_spec("optimum.exporters.onnx") is not None
EACH_EXPORTER = [
    pytest.param(
        "optimum",
        marks=pytest.mark.skipif(
            not HAS_OPTIMUM,
            reason="optimum-onnx is not installed (it pins transformers<4.58; the `optimum` extra)",
        ),
    ),
    "torch",
]


@pytest.fixture(scope="module")
def own_tiny():
    """A tiny model of this module's own: optimum's exporter sets ``use_cache`` on the configs of the
    module it traces, so the session-wide ``tiny`` fixture is not handed to it."""
    from zreward_deploy.presets import build_preset

    return build_preset("tiny", seed=0)


def _reference(model, processor, dims=None):
    rubric = model.config.get_rubric()
    names = [d.name for d in rubric.select(dims)]
    return ZRewardOnnxModel(model.float().eval(), processor.suffix_ids(names), rubric.weights(names)).eval()


def _onnx_io(path):
    graph = onnx.load(str(path)).graph
    elem = onnx.TensorProto

    def describe(values):
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out[v.name] = (elem.DataType.Name(t.elem_type), dims)
        return out

    return describe(graph.input), describe(graph.output)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("text_model", TEXT_MODELS)
def test_export_validates_at_untraced_shapes(onnx_exports, text_model, dtype):
    out, model, _ = onnx_exports(text_model, dtype)
    meta = read_export_metadata(out)
    # self-describing folder: graph, config, tokenizer, preprocessing, metadata
    for name in (
        "model.onnx",
        "config.json",
        "tokenizer.json",
        "zreward_processor.json",
        "zreward_onnx.json",
    ):
        assert (out / name).exists(), name
    assert meta["dtype"] == dtype and meta["text_model_type"] == text_model
    assert meta["dimensions"] == model.config.get_rubric().names
    assert meta["score_scale"] == model.config.score_scale
    assert meta["rubric"] == model.config.rubric
    assert abs(sum(meta["reward_weights"]) - 1) < 1e-6
    assert meta["versions"]["torch"] and meta["versions"]["onnxruntime"]
    # auto: optimum-onnx where it is installed, torch.onnx otherwise
    assert meta["exporter"] == ("optimum" if HAS_OPTIMUM else "torch")
    assert meta["export_config"]["exporter"] == "auto"
    assert bool(meta["versions"]["optimum-onnx"]) == HAS_OPTIMUM

    # validation ran at batch sizes AND text lengths the trace never saw, and passed
    validation = meta["validation"]
    assert validation["passed"] and validation["reference"] == "torch eager, fp32"
    trace = meta["trace_shapes"]
    assert len(validation["cases"]) >= 2
    for case in validation["cases"]:
        assert (
            case["batch_size"] != trace["batch_size"] and case["sequence_length"] != trace["sequence_length"]
        )
        assert set(case["max_abs_diff"]) == {"probs", "mean", "std", "reward"}
        assert all(case["max_abs_diff"][k] <= case["tolerance"][k] for k in case["tolerance"])
    assert {c["sequence_length"] for c in validation["cases"]} != {trace["sequence_length"]}

    # the graph contract: names, dtypes, dynamic batch and text axes, fixed image size, fp32 outputs
    inputs, outputs = _onnx_io(out / "model.onnx")
    size = model.config.image_size
    assert inputs["input_ids"] == ("INT64", ["batch_size", "sequence_length"])
    assert inputs["attention_mask"] == ("INT64", ["batch_size", "sequence_length"])
    assert inputs["pixel_values"] == (
        "FLOAT16" if dtype == "fp16" else "FLOAT",
        ["batch_size", 3, size, size],
    )
    d, k = len(meta["dimensions"]), len(meta["score_scale"]["values"])
    assert outputs == {
        "probs": ("FLOAT", ["batch_size", d, k]),
        "mean": ("FLOAT", ["batch_size", d]),
        "std": ("FLOAT", ["batch_size", d]),
        "reward": ("FLOAT", ["batch_size"]),
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_exported_graph_matches_torch_at_another_shape(onnx_exports, dtype):
    """Independent of the exporter's own validation: batch 5, padded text length 41, random token ids."""
    out, model, processor = onnx_exports("qwen2", dtype)
    reference = _reference(model, processor)
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, model.config.text_config.vocab_size, (5, 41), generator=gen)
    mask = (torch.arange(41)[None, :] < torch.tensor([41, 30, 12, 1, 25])[:, None]).long()
    pixel_values = torch.randn(5, 3, model.config.image_size, model.config.image_size, generator=gen)
    with torch.no_grad():
        want = reference(ids, mask, pixel_values)
    session = create_session(out / "model.onnx")
    feeds = {
        "input_ids": ids.numpy(),
        "attention_mask": mask.numpy(),
        "pixel_values": pixel_values.to(torch.float16 if dtype == "fp16" else torch.float32).numpy(),
    }
    got = dict(zip(("probs", "mean", "std", "reward"), session.run(None, feeds), strict=True))
    atol = ATOL[dtype]
    np.testing.assert_allclose(got["probs"], want["probs"].numpy(), rtol=0, atol=atol)
    np.testing.assert_allclose(got["reward"], want["reward"].numpy(), rtol=0, atol=4 * atol)
    np.testing.assert_allclose(got["probs"].sum(-1), 1.0, rtol=0, atol=1e-5)  # fp32 softmax even in fp16
    if dtype == "fp16":  # fp16 is really fp16 (not silently fp32): it differs from fp32 torch a little
        assert np.abs(got["probs"] - want["probs"].numpy()).max() > 1e-7


def test_tampered_graph_fails_validation(onnx_exports, tmp_path):
    """Edit the exported graph so `mean` comes out 1% too large: validation must refuse it."""
    out, model, processor = onnx_exports("qwen2", "fp32")
    graph_model = onnx.load(str(out / "model.onnx"))
    graph = graph_model.graph
    producer = next(n for n in graph.node if "mean" in n.output)
    producer.output[list(producer.output).index("mean")] = "mean_unscaled"
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.01, np.float32), "mean_scale"))
    graph.node.append(onnx.helper.make_node("Mul", ["mean_unscaled", "mean_scale"], ["mean"]))
    onnx.save(graph_model, str(tmp_path / "model.onnx"))

    reference = _reference(model, processor)
    with pytest.raises(OnnxValidationError, match=r"mean max\|Δ\|"):
        validate_onnx(tmp_path / "model.onnx", reference, processor, "fp32", 1e-4, 2, 16)
    # the untouched graph passes the same check
    cases = validate_onnx(out / "model.onnx", reference, processor, "fp32", 1e-4, 2, 16)
    assert all(c.passed for c in cases)


class _TrimPadding(ZRewardOnnxModel):
    """A plausible optimisation with a tracing bug: trimming padding through a Python int freezes the
    trace's text length into the graph. Right at the trace shape the graph is still correct."""

    def forward(self, input_ids, attention_mask, pixel_values):
        n = int(attention_mask.sum(1).max())
        return super().forward(input_ids[:, :n], attention_mask[:, :n], pixel_values)


@pytest.mark.parametrize("exporter", EACH_EXPORTER)
def test_shape_freezing_export_is_caught_only_at_untraced_shapes(own_tiny, tmp_path, exporter):
    model, processor = own_tiny
    names = model.config.get_rubric().names
    weights = model.config.get_rubric().weights(names)
    broken = _TrimPadding(model, processor.suffix_ids(names), weights)
    path = tmp_path / "model.onnx"
    export_graph(broken, path, exporter, 18, "fp32", {"batch_size": 2, "sequence_length": 16})

    # at the trace shape (the exporter's own trace inputs) the broken graph agrees with torch ...
    reference = ZRewardOnnxModel(model, processor.suffix_ids(names), weights).eval()
    inputs = trace_inputs(model.config.text_config.vocab_size, model.config.image_size, 2, 16)
    with torch.no_grad():
        want = reference(**inputs)["probs"].numpy()
    got = create_session(path).run(["probs"], {k: v.numpy() for k, v in inputs.items()})[0]
    assert np.abs(got - want).max() < 1e-5

    # ... and validation at other shapes catches it
    cases = validate_onnx(path, reference, processor, "fp32", 1e-4, 2, 16, raise_on_mismatch=False)
    assert cases and not any(c.passed for c in cases)
    with pytest.raises(OnnxValidationError, match="ragged"):
        check_validation(cases, path)


def test_failed_validation_keeps_evidence_and_raises(tmp_path, monkeypatch, own_tiny):
    """export_onnx raises on a mismatch and marks the folder's metadata as not passed."""
    model, processor = own_tiny
    from zreward_deploy.export import onnx as onnx_export

    monkeypatch.setattr(onnx_export, "ZRewardOnnxModel", _TrimPadding)  # every graph module is broken
    with pytest.raises(OnnxValidationError):
        export_onnx(model, tmp_path / "bad", OnnxExportConfig(), processor=processor)
    meta = json.loads((tmp_path / "bad" / "zreward_onnx.json").read_text())
    assert meta["validation"]["passed"] is False


def test_validation_inputs_avoid_the_trace_shape(own_tiny):
    _, processor = own_tiny
    for trace_batch, trace_len in ((2, 16), (3, 30), (1, 8)):
        for _, inputs in validation_inputs(processor, trace_batch, trace_len):
            b, s = inputs["input_ids"].shape
            assert b != trace_batch and s != trace_len
            assert inputs["attention_mask"][:, 0].all()  # right padding: every row starts with tokens
            assert inputs["pixel_values"].shape[-1] == processor.config.image_size


def test_dimension_subset_export(onnx_exports):
    out, _, _ = onnx_exports("qwen2", "fp32", ("realism", "alignment"))
    meta = read_export_metadata(out)
    assert meta["dimensions"] == ["realism", "alignment"]
    config = json.loads((out / "config.json").read_text())
    assert [d["name"] for d in config["rubric"]] == ["realism", "alignment"]  # graph order
    _, outputs = _onnx_io(out / "model.onnx")
    assert outputs["probs"][1][1] == 2


def test_export_refuses_bad_settings(own_tiny, tmp_path):
    model, processor = own_tiny
    with pytest.raises(ZRewardInputError, match="dtype"):
        OnnxExportConfig(dtype="bf16")
    with pytest.raises(UnknownDimensionError):
        export_onnx(
            model, tmp_path / "a", OnnxExportConfig(dimensions=("colourfulness",)), processor=processor
        )
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with pytest.raises(ZRewardInputError, match="not empty"):
        export_onnx(model, tmp_path / "b", processor=processor)


def test_export_from_model_directory(tiny_dir, tmp_path):
    """The CLI path: a saved model directory in, a folder that loads back out (fp32, validated)."""
    meta = export_onnx(tiny_dir, tmp_path / "out")
    assert meta["source_model"] == str(tiny_dir) and meta["source_weights_sha256"]
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "out", copy)
    assert read_export_metadata(copy)["onnx_sha256"] == meta["onnx_sha256"]


# --------------------------------------------------------------------------------------------------
# Two exporters on one contract: optimum-onnx (transformers 4.57) and torch.onnx (every line)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports_by_exporter(own_tiny, tmp_path_factory):
    """``get(exporter) -> (folder, metadata)``: the tiny model exported (fp32, validated) by each exporter."""
    model, processor = own_tiny
    cache: dict[str, tuple] = {}

    def get(exporter):
        if exporter not in cache:
            out = tmp_path_factory.mktemp(f"by_{exporter}")
            meta = export_onnx(model, out, OnnxExportConfig(exporter=exporter), processor=processor)
            cache[exporter] = (out, meta)
        return cache[exporter]

    return get


@pytest.mark.parametrize("exporter", EACH_EXPORTER)
def test_each_exporter_writes_the_contract_and_records_itself(exports_by_exporter, own_tiny, exporter):
    out, meta = exports_by_exporter(exporter)
    model, _ = own_tiny
    assert meta["exporter"] == exporter and meta["export_config"]["exporter"] == exporter
    assert read_export_metadata(out)["exporter"] == exporter  # what the folder says, verified
    assert meta["validation"]["passed"]
    inputs, outputs = _onnx_io(out / "model.onnx")
    size, d, k = model.config.image_size, len(meta["dimensions"]), len(meta["score_scale"]["values"])
    assert inputs == {
        "input_ids": ("INT64", ["batch_size", "sequence_length"]),
        "attention_mask": ("INT64", ["batch_size", "sequence_length"]),
        "pixel_values": ("FLOAT", ["batch_size", 3, size, size]),
    }
    assert outputs == {
        "probs": ("FLOAT", ["batch_size", d, k]),
        "mean": ("FLOAT", ["batch_size", d]),
        "std": ("FLOAT", ["batch_size", d]),
        "reward": ("FLOAT", ["batch_size"]),
    }
    # fp32 parity with torch at every untraced validation shape: well inside the tolerance (1e-4)
    assert max(max(c["max_abs_diff"].values()) for c in meta["validation"]["cases"]) < 1e-5


@pytest.mark.skipif(not HAS_OPTIMUM, reason="needs both exporters; optimum-onnx installs only beside 4.57")
def test_the_two_exporters_compute_the_same_function(exports_by_exporter, own_tiny):
    """Same module, same trace inputs, same axes: the two graphs agree with each other at a shape neither
    trace saw far more closely than either has to agree with torch."""
    model, _ = own_tiny
    gen = torch.Generator().manual_seed(3)
    b, s = 3, 29
    feeds = {
        "input_ids": torch.randint(0, model.config.text_config.vocab_size, (b, s), generator=gen).numpy(),
        "attention_mask": (torch.arange(s)[None, :] < torch.tensor([29, 7, 18])[:, None]).long().numpy(),
        "pixel_values": torch.randn(b, 3, model.config.image_size, model.config.image_size, generator=gen)
        .float()
        .numpy(),
    }
    got = {e: create_session(exports_by_exporter(e)[0] / "model.onnx").run(None, feeds) for e in EXPORTERS}
    for a, c in zip(got["optimum"], got["torch"], strict=True):
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-6)


def test_auto_takes_optimum_where_installed_and_torch_otherwise(monkeypatch):
    monkeypatch.setattr(onnx_module, "optimum_available", lambda: True)
    assert resolve_exporter("auto") == "optimum" and resolve_exporter("torch") == "torch"
    monkeypatch.setattr(onnx_module, "optimum_available", lambda: False)
    assert resolve_exporter("auto") == "torch"
    with pytest.raises(MissingDependencyError, match=r"zreward-deploy\[optimum\].*--exporter torch"):
        resolve_exporter("optimum")
    with pytest.raises(ZRewardInputError, match="exporter"):
        OnnxExportConfig(exporter="tf2onnx")


def test_a_missing_exporter_is_named_before_any_work(monkeypatch, tmp_path, tiny_dir):
    """--exporter optimum without optimum-onnx: refused before the output folder is created."""
    monkeypatch.setattr(onnx_module, "optimum_available", lambda: False)
    with pytest.raises(MissingDependencyError, match="optimum-onnx"):
        export_onnx(tiny_dir, tmp_path / "out", OnnxExportConfig(exporter="optimum"))
    assert not (tmp_path / "out").exists()


def test_trace_inputs_are_seeded_ragged_and_typed():
    a = trace_inputs(100, 16, 3, 5, "fp16", seed=1)
    b = trace_inputs(100, 16, 3, 5, "fp16", seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], trace_inputs(100, 16, 3, 5, seed=2)["input_ids"])
    assert a["attention_mask"].tolist() == [[1] * 5, [1] * 4 + [0], [1] * 3 + [0] * 2]
    assert a["input_ids"].dtype == torch.int64 and int(a["input_ids"].max()) < 100
    assert a["pixel_values"].dtype == torch.float16 and a["pixel_values"].shape == (3, 3, 16, 16)


def test_a_folder_naming_an_unknown_exporter_is_refused(exports_by_exporter, tmp_path):
    from zreward_deploy.errors import InvalidModelError
    from zreward_deploy.export.contract import verify_export

    out, _ = exports_by_exporter("torch")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    meta = json.loads((copy / "zreward_onnx.json").read_text())
    meta["exporter"] = "tf2onnx"
    (copy / "zreward_onnx.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidModelError, match="exporter 'tf2onnx'"):
        verify_export(copy)
    del meta["exporter"]  # exports made before there were two exporters still load
    (copy / "zreward_onnx.json").write_text(json.dumps(meta))
    assert verify_export(copy)["dimensions"] == meta["dimensions"]
