"""Every documented CLI path runs: score (table and JSON, errors), model create/info/compose. `zreward demo`
runs in tests/test_demo.py."""

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from zreward_deploy.cli import main


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_images")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(d / f"{name}.png")
    (d / "broken.png").write_bytes(b"nope")
    return d


def test_entry_point_is_installed():
    exe = shutil.which("zreward")
    assert exe, "the `zreward` console script is not on PATH; install the package (pip install -e .)"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    for group in ("demo", "score", "model"):
        assert group in out.stdout


def test_score_json(tiny_dir, image_files, capsys):
    code = main(
        [
            "score",
            "--model",
            str(tiny_dir),
            "--image",
            str(image_files / "a.png"),
            "--image",
            str(image_files / "b.png"),
            "--prompt",
            "two red cubes",
            "--json",
            "--dimensions",
            "realism,alignment",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dimensions"] == ["realism", "alignment"] and len(data["items"]) == 2
    assert data["items"][1]["image"].endswith("b.png")
    assert abs(sum(data["items"][0]["dimensions"]["realism"]["probs"].values()) - 1) < 1e-5


def test_score_table_reports_bad_items_and_keeps_good_ones(tiny_dir, image_files, capsys):
    code = main(
        [
            "score",
            "--model",
            str(tiny_dir),
            "--image",
            str(image_files / "a.png"),
            "--image",
            str(image_files / "broken.png"),
            "--prompt",
            "a star",
            "--prompt",
            "a cube",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "reward" in out and "realism" in out
    assert "broken.png" in out and "not a readable image" in out


def test_score_unknown_dimension_is_a_clean_error(tiny_dir, image_files, capsys):
    code = main(
        [
            "score",
            "--model",
            str(tiny_dir),
            "--image",
            str(image_files / "a.png"),
            "--prompt",
            "x",
            "--dimensions",
            "sharpness",
        ]
    )
    assert code == 2
    assert "sharpness" in capsys.readouterr().err


def test_model_create_and_info(tmp_path, capsys):
    assert (
        main(["model", "create", "--preset", "tiny", "--text-model", "llama", "--out", str(tmp_path / "m")])
        == 0
    )
    assert main(["model", "info", str(tmp_path / "m")]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["text"] == "llama" and info["image_tokens"] == 16


def test_model_compose(tmp_path, capsys):
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from zreward_deploy.tokenization import build_tokenizer

    tok = build_tokenizer()
    SiglipVisionModel(
        SiglipVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    ).save_pretrained(tmp_path / "v")
    Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(tmp_path / "l")
    tok.save_pretrained(tmp_path / "l")
    assert (
        main(
            [
                "model",
                "compose",
                "--vision",
                str(tmp_path / "v"),
                "--language",
                str(tmp_path / "l"),
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 0
    )
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out
