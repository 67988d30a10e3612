"""Triton model repository writer (export/triton_repo.py); config.pbtxt is parsed with Triton's own
protobuf definitions (``tritonclient.grpc.model_config_pb2``)."""

from __future__ import annotations

import json

import pytest

from zreward_deploy.errors import InvalidModelError, ZRewardInputError
from zreward_deploy.export.contract import read_export_metadata
from zreward_deploy.export.tensorrt import TENSORRT_METADATA_FILE, TensorRTBuildConfig, export_tensorrt
from zreward_deploy.export.triton_repo import TritonRepoConfig, triton_config_text, write_triton_repository
from zreward_deploy.processing import ZRewardProcessor

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="Triton's protobuf definitions come with tritonclient[grpc] (pip install 'tritonclient[grpc]')",
)
text_format = pytest.importorskip("google.protobuf.text_format")


def parse(path):
    """Strict parse: an unknown field or a wrong type is an error, as in Triton itself."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def dtype_name(value):
    return model_config_pb2.DataType.Name(value)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_onnx_repository_parses_with_tritons_definitions(onnx_exports, tmp_path, dtype):
    out, model, _ = onnx_exports("qwen2", dtype)
    meta = read_export_metadata(out)
    paths = write_triton_repository(
        out, tmp_path / "repo", TritonRepoConfig(max_batch_size=16, preferred_batch_sizes=(4, 16))
    )
    assert paths["model"] == tmp_path / "repo" / "model_repository" / "zreward" / "1" / "model.onnx"
    assert paths["model"].read_bytes() == (out / "model.onnx").read_bytes()
    config = parse(paths["config"])

    assert config.name == "zreward" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    inputs = {i.name: (dtype_name(i.data_type), list(i.dims)) for i in config.input}
    size = model.config.image_size
    assert inputs == {
        "input_ids": ("TYPE_INT64", [-1]),
        "attention_mask": ("TYPE_INT64", [-1]),
        "pixel_values": ("TYPE_FP16" if dtype == "fp16" else "TYPE_FP32", [3, size, size]),
    }
    outputs = {o.name: (dtype_name(o.data_type), list(o.dims)) for o in config.output}
    d, k = len(meta["dimensions"]), len(meta["score_scale"]["values"])
    assert outputs == {
        "probs": ("TYPE_FP32", [d, k]),
        "mean": ("TYPE_FP32", [d]),
        "std": ("TYPE_FP32", [d]),
        "reward": ("TYPE_FP32", [1]),
    }
    reward = next(o for o in config.output if o.name == "reward")
    assert reward.HasField("reshape") and list(reward.reshape.shape) == []  # [B] in the graph
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert config.parameters["zreward.text_length_buckets"].string_value == "32,64,128,256"
    assert config.parameters["zreward.dimensions"].string_value == ",".join(meta["dimensions"])
    assert [w.name for w in config.model_warmup] == ["bucket_32", "bucket_64", "bucket_128", "bucket_256"]
    assert list(config.model_warmup[1].inputs["input_ids"].dims) == [64]
    (group,) = config.instance_group
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU" and not group.profile

    # the client folder preprocesses exactly as every backend does
    client = paths["client"]
    processor = ZRewardProcessor.from_pretrained(client)
    info = json.loads((client / "zreward_triton.json").read_text())
    assert info["text_length_buckets"] == [32, 64, 128, 256]
    assert info["pad_token_id"] == processor.tokenizer.pad_token_id
    assert not (paths["repository"] / "client").exists()  # nothing but models inside the repository


def test_tensorrt_repository_lists_one_profile_per_bucket(onnx_exports, tmp_path):
    """A TensorRT folder (its engine file stands in here: no TensorRT on this machine) -> platform
    tensorrt_plan, the engine's buckets, every profile usable by the instances."""
    out, _, _ = onnx_exports("qwen2", "fp16")
    trt_dir = tmp_path / "trt"
    cfg = TensorRTBuildConfig(max_batch_size=8, opt_batch_size=4, text_length_buckets=(48, 96, 256))
    export_tensorrt(out, trt_dir, cfg, build=False)
    record = json.loads((trt_dir / TENSORRT_METADATA_FILE).read_text())
    with pytest.raises(InvalidModelError, match="without a built engine"):
        write_triton_repository(trt_dir, tmp_path / "no_engine")
    (trt_dir / "engines").mkdir()
    (trt_dir / "engines" / "k.plan").write_bytes(b"plan bytes")
    record["engine"] = {"file": "engines/k.plan", "key": "k"}
    (trt_dir / TENSORRT_METADATA_FILE).write_text(json.dumps(record))

    with pytest.raises(ZRewardInputError, match="largest batch"):
        write_triton_repository(
            trt_dir, tmp_path / "too_big", TritonRepoConfig(max_batch_size=16, preferred_batch_sizes=(16,))
        )
    paths = write_triton_repository(
        trt_dir, tmp_path / "repo", TritonRepoConfig(max_batch_size=8, preferred_batch_sizes=(8,))
    )
    assert paths["model"].name == "model.plan" and paths["model"].read_bytes() == b"plan bytes"
    config = parse(paths["config"])
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    (group,) = config.instance_group
    assert list(group.profile) == ["0", "1", "2"]
    assert config.parameters["zreward.text_length_buckets"].string_value == "48,96,256"
    assert [w.name for w in config.model_warmup] == ["bucket_48", "bucket_96", "bucket_256"]
    assert dtype_name(next(i for i in config.input if i.name == "pixel_values").data_type) == "TYPE_FP16"


def test_cpu_instances_and_no_warmup_parse(onnx_exports):
    out, _, _ = onnx_exports("qwen2", "fp32")
    meta = read_export_metadata(out)
    cfg = TritonRepoConfig(model_name="zr-cpu", instance_kind="cpu", instance_count=2, warmup=False)
    config = text_format.Parse(
        triton_config_text(meta, "onnxruntime_onnx", cfg, (256,)), model_config_pb2.ModelConfig()
    )
    (group,) = config.instance_group
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_CPU" and group.count == 2
    assert not config.model_warmup and config.name == "zr-cpu"


def test_settings_are_validated(onnx_exports, tmp_path):
    out, _, _ = onnx_exports("qwen2", "fp32")
    with pytest.raises(ZRewardInputError):
        TritonRepoConfig(preferred_batch_sizes=(64,), max_batch_size=32)
    with pytest.raises(ZRewardInputError):
        TritonRepoConfig(model_name="a b")
    with pytest.raises(ZRewardInputError, match="prompt limit"):
        write_triton_repository(out, tmp_path / "r", TritonRepoConfig(text_length_buckets=(32, 64)))
