"""Every CLI path of the export work runs: ``zreward export onnx|tensorrt|triton-repo`` and the exported
backends through ``zreward score`` and ``zreward eval``."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from zreward_deploy.cli import main


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_export") / "onnx"
    code = main(
        ["export", "onnx", "--model", str(tiny_dir), "--out", str(out), "--dimensions", "realism,alignment"]
    )
    assert code == 0
    return out


def test_export_onnx_prints_validation(exported, tiny_dir, tmp_path, capsys):
    meta = json.loads((exported / "zreward_onnx.json").read_text())
    assert meta["dimensions"] == ["realism", "alignment"] and meta["validation"]["passed"]
    code = main(["export", "onnx", "--model", str(tiny_dir), "--out", str(tmp_path / "h"), "--dtype", "fp16"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fp16 graph" in printed and printed.count("validated") == 2
    # a non-empty output folder is refused with a clear message and exit code 2
    assert main(["export", "onnx", "--model", str(tiny_dir), "--out", str(tmp_path / "h")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_score_with_the_onnx_backend(exported, tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
        paths += ["--image", str(tmp_path / f"{name}.png")]
    code = main(
        [
            "score",
            "--model",
            str(exported),
            "--backend",
            "onnx",
            *paths,
            "--prompt",
            "two red cubes",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dimensions"] == ["realism", "alignment"] and len(result["items"]) == 2
    for item in result["items"]:
        assert abs(sum(item["dimensions"]["realism"]["probs"].values()) - 1) < 1e-5
    code = main(
        [
            "score",
            "--model",
            str(exported),
            "--backend",
            "onnx",
            *paths,
            "--prompt",
            "x",
            "--dimensions",
            "aesthetics",
        ]
    )
    assert code == 2 and "aesthetics" in capsys.readouterr().err


def test_eval_with_the_onnx_backend(exported, tmp_path, capsys):
    from zreward_deploy.data.synth import SynthConfig, generate_dataset

    generate_dataset(tmp_path / "data", SynthConfig(prompts=4, images_per_prompt=2, image_size=32, seed=1))
    code = main(
        [
            "eval",
            "--model",
            str(exported),
            "--backend",
            "onnx",
            "--data",
            str(tmp_path / "data"),
            "--split",
            "train",
            "--json",
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    # the synthetic split labels all four dimensions; this export has two: the evaluator says so
    assert code == 2 and "aesthetics" in captured.err


def test_eval_with_the_onnx_backend_on_all_dimensions(tiny_dir, tmp_path, capsys):
    from zreward_deploy.data.synth import SynthConfig, generate_dataset

    out = tmp_path / "onnx"
    assert main(["export", "onnx", "--model", str(tiny_dir), "--out", str(out)]) == 0
    generate_dataset(tmp_path / "data", SynthConfig(prompts=4, images_per_prompt=2, image_size=32, seed=1))
    capsys.readouterr()
    args = ["eval", "--data", str(tmp_path / "data"), "--split", "train", "--json", "--quiet"]
    assert main([*args, "--model", str(out), "--backend", "onnx"]) == 0
    onnx_metrics = json.loads(capsys.readouterr().out)
    assert main([*args, "--model", str(tiny_dir)]) == 0
    torch_metrics = json.loads(capsys.readouterr().out)
    assert onnx_metrics["backend"] == "onnx" and onnx_metrics["n_records"] == torch_metrics["n_records"] > 0
    assert onnx_metrics["hpa"] == pytest.approx(torch_metrics["hpa"], abs=1e-9, nan_ok=True)
    assert onnx_metrics["plcc"] == pytest.approx(torch_metrics["plcc"], abs=1e-4)


def test_triton_repo_command(exported, tmp_path, capsys):
    code = main(
        [
            "export",
            "triton-repo",
            "--source",
            str(exported),
            "--out",
            str(tmp_path / "t"),
            "--kind",
            "cpu",
            "--max-batch-size",
            "8",
            "--preferred-batch-sizes",
            "4,8",
        ]
    )
    assert code == 0
    assert (tmp_path / "t" / "model_repository" / "zreward" / "config.pbtxt").exists()
    assert "config.pbtxt" in capsys.readouterr().out


def test_tensorrt_command_without_tensorrt(exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on this project's machines
    code = main(["export", "tensorrt", "--onnx", str(exported), "--out", str(tmp_path / "trt")])
    assert code == 2
    assert "zreward-deploy[gpu]" in capsys.readouterr().err


def test_export_onnx_exits_1_when_validation_fails(tiny_dir, tmp_path, capsys, monkeypatch):
    from zreward_deploy.export import onnx as onnx_export

    class FrozenLength(onnx_export.ZRewardOnnxModel):  # trims padding through a Python int (trace bug)
        def forward(self, input_ids, attention_mask, pixel_values):
            n = int(attention_mask.sum(1).max())
            return super().forward(input_ids[:, :n], attention_mask[:, :n], pixel_values)

    monkeypatch.setattr(onnx_export, "ZRewardOnnxModel", FrozenLength)
    code = main(["export", "onnx", "--model", str(tiny_dir), "--out", str(tmp_path / "bad")])
    assert code == 1 and "failed validation" in capsys.readouterr().err
    assert json.loads((tmp_path / "bad" / "zreward_onnx.json").read_text())["validation"]["passed"] is False
