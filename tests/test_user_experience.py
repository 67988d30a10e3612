"""A new user's first hour: a model says what it was trained on, every command that writes a folder asks
before replacing it (naming the flag), ordinary use never ends in a traceback, messages name flags and
valid ranges, and the README maps every command group.

Training's resume rule, progress and Ctrl-C are in tests/training/test_run_rules.py; the benchmarks'
stability rule, progress and plotting fallback in tests/bench/test_stability.py.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zreward_deploy.cli import main

ROOT = Path(__file__).resolve().parents[1]
ALL_DIMS = ["alignment", "realism", "aesthetics", "plausibility"]


@pytest.fixture(scope="module")
def realism_model(tmp_path_factory):
    """A tiny model whose training record says it was trained (sft) on realism only."""
    from zreward_deploy.presets import build_preset

    model, processor = build_preset("tiny", seed=0)
    model.config.training = {"method": "sft", "dimensions": ["realism"], "data": "data/", "steps": 12}
    path = tmp_path_factory.mktemp("realism_model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("ux_images") / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from zreward_deploy.data.synth import SynthConfig, generate_dataset

    path = tmp_path_factory.mktemp("ux_data") / "data"
    generate_dataset(path, SynthConfig(prompts=8, images_per_prompt=2, annotators=2, image_size=32))
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------------------------------
# 3. A model says what it was trained on; score, eval and model info default to it and mark the rest
# --------------------------------------------------------------------------------------------------


def test_training_record_survives_save_and_load(realism_model):
    from zreward_deploy.config import load_config

    config = load_config(realism_model)
    assert config.training["method"] == "sft" and config.training["steps"] == 12
    assert config.trained_dimensions() == ["realism"]


def test_score_defaults_to_the_trained_dimensions(realism_model, image, capsys):
    code = main(["score", "--model", str(realism_model), "--image", str(image), "--prompt", "a", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dimensions"] == ["realism"]
    assert data["untrained_dimensions"] == []
    assert data["training"]["method"] == "sft"
    assert list(data["items"][0]["dimensions"]) == ["realism"]


def test_score_marks_untrained_dimensions_when_asked_for(realism_model, image, capsys):
    args = ["score", "--model", str(realism_model), "--image", str(image), "--prompt", "a"]
    assert main([*args, "--dimensions", "realism,aesthetics", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["untrained_dimensions"] == ["aesthetics"]
    dims = data["items"][0]["dimensions"]
    assert dims["realism"]["trained"] is True and dims["aesthetics"]["trained"] is False

    assert main([*args, "--dimensions", "realism,aesthetics"]) == 0
    table = capsys.readouterr().out
    (aesthetics_row,) = [line for line in table.splitlines() if line.strip().startswith("aesthetics")]
    (realism_row,) = [line for line in table.splitlines() if line.strip().startswith("realism")]
    assert aesthetics_row.endswith("(untrained)") and "(untrained)" not in realism_row
    assert "trained (sft) on realism only" in table


def test_score_of_a_never_trained_preset_says_so(tiny_dir, image, capsys):
    from zreward_deploy.config import load_config

    assert load_config(tiny_dir).training["method"] == "none"
    assert main(["score", "--model", str(tiny_dir), "--image", str(image), "--prompt", "a"]) == 0
    out = capsys.readouterr().out
    assert "never trained" in out
    assert all(f"  {d}" in out for d in ALL_DIMS)  # nothing trained: every dimension, all marked
    assert out.count("(untrained)") == len(ALL_DIMS)


def test_python_api_defaults_to_trained_dimensions(realism_model, image):
    from zreward_deploy.scoring import Scorer

    scorer = Scorer.from_pretrained(realism_model)
    result = scorer.score([str(image)], "a")
    assert result.dimensions == ["realism"] and result.untrained == []
    result = scorer.score([str(image)], "a", dimensions=ALL_DIMS)
    assert result.untrained == ["alignment", "aesthetics", "plausibility"]
    assert [r["dimensions"]["alignment"]["trained"] for r in result.to_records()] == [False]


def test_model_info_shows_the_training_record(realism_model, capsys):
    assert main(["model", "info", str(realism_model)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["trained_dimensions"] == ["realism"]
    assert info["training"]["method"] == "sft" and info["training"]["data"] == "data/"


def test_eval_defaults_to_trained_dimensions_and_marks_others(realism_model, dataset, capsys):
    args = ["eval", "--model", str(realism_model), "--data", str(dataset), "--quiet"]
    assert main([*args, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["dimensions"] == ["realism"] and metrics["untrained_dimensions"] == []

    assert main([*args, "--dimensions", "realism,alignment"]) == 0
    table = capsys.readouterr().out
    (alignment_row,) = [line for line in table.splitlines() if line.startswith("alignment")]
    assert alignment_row.endswith("(untrained)")
    assert "alignment were never trained" in table


def test_eval_refuses_a_dimension_the_data_does_not_label(realism_model, dataset, tmp_path, capsys):
    # a copy of the dataset labelling realism only: asking for alignment names it and what is labelled
    data = tmp_path / "realism_only"
    shutil.copytree(dataset, data)
    for split in ("train", "val", "test"):
        records = [json.loads(line) for line in (data / f"{split}.jsonl").read_text().splitlines()]
        for rec in records:
            rec["scores"] = {"realism": rec["scores"]["realism"]}
            rec["annotations"] = {"realism": rec["annotations"]["realism"]}
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    code = main(
        ["eval", "--model", str(realism_model), "--data", str(data), "--quiet", "--dimensions", "alignment"]
    )
    assert code == 2
    err = _one_line_error(capsys)
    assert "alignment" in err and "not labelled" in err


# --------------------------------------------------------------------------------------------------
# 2. One folder rule for every command that writes a folder: refuse unless --overwrite, named
# --------------------------------------------------------------------------------------------------


def _trained_model_folder(path: Path) -> bytes:
    """A folder that looks like a saved model (what must not be lost); returns its weights' bytes."""
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "zreward"}')
    (path / "model.safetensors").write_bytes(b"trained weights")
    return b"trained weights"


def test_model_create_does_not_overwrite_a_trained_model(tmp_path, capsys):
    out = tmp_path / "model"
    weights = _trained_model_folder(out)
    assert main(["model", "create", "--out", str(out)]) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert (out / "model.safetensors").read_bytes() == weights
    assert main(["model", "create", "--out", str(out), "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != weights


@pytest.mark.parametrize(
    "command",
    [
        ["model", "create"],
        ["data", "synth", "--prompts", "2", "--images-per-prompt", "2", "--image-size", "16"],
        ["demo", "--quick"],
    ],
    ids=["model-create", "data-synth", "demo"],
)
def test_overwrite_only_replaces_a_folder_of_the_same_kind(tmp_path, capsys, command):
    # --overwrite deletes the folder: a typo (--out ~) must not delete a folder of something else
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    assert main([*command, "--out", str(out), "--overwrite"]) == 2
    err = _one_line_error(capsys)
    assert "does not look like" in err and "--overwrite" in err
    assert (out / "thesis.txt").read_text() == "years of work"


def test_demo_refuses_a_non_empty_folder_without_overwrite(tmp_path, capsys):
    (tmp_path / "report.md").write_text("an earlier demo")
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in _one_line_error(capsys)
    assert (tmp_path / "report.md").read_text() == "an earlier demo"


def test_export_onnx_overwrite_refuses_a_folder_that_is_no_export(tiny_dir, tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    assert main(["export", "onnx", "--model", str(tiny_dir), "--out", str(out), "--overwrite"]) == 2
    err = _one_line_error(capsys)
    assert "does not look like" in err and "--overwrite" in err
    assert (out / "thesis.txt").read_text() == "years of work"


# --------------------------------------------------------------------------------------------------
# 6. No traceback in ordinary use: a closed pipe, Ctrl-C
# --------------------------------------------------------------------------------------------------


def test_json_into_a_closed_pipe_exits_quietly(tiny_dir, image):
    # `zreward score ... --json | head -c 10`: the reader goes away after 10 bytes; the output (~150 KB)
    # is far more than a pipe buffers, so the writer meets a closed pipe.
    images = [arg for _ in range(200) for arg in ("--image", str(image))]
    cmd = [sys.executable, "-m", "zreward_deploy.cli", "score", "--model", str(tiny_dir), *images]
    proc = subprocess.Popen([*cmd, "--prompt", "a", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import zreward_deploy.commands.model as model_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_command, "run_info", interrupted)
    try:
        code = main(["model", "info", "anywhere"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main() (a traceback for the user)")
    assert code == 130
    assert _one_line_error(capsys) == "zreward: error: interrupted"


# --------------------------------------------------------------------------------------------------
# 7. Messages in the user's words: the flag, the valid range, one list convention
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--images-per-prompt", "1"], "--images-per-prompt: must be >= 2"),
        (["--image-size", "8"], "--image-size: must be between 16 and 1024 pixels, got 8"),
        (["--prompts", "0"], "--prompts: must be >= 1, got 0"),
    ],
)
def test_synth_errors_name_the_flag_and_the_valid_range(tmp_path, capsys, flags, words):
    assert main(["data", "synth", "--out", str(tmp_path / "d"), *flags]) == 2
    assert words in _one_line_error(capsys)


def test_no_message_names_a_python_keyword_instead_of_the_flag(tmp_path, capsys):
    (tmp_path / "x").write_text("x")
    for command in (["model", "create"], ["data", "synth"]):
        assert main([*command, "--out", str(tmp_path)]) == 2
        err = _one_line_error(capsys)
        assert "--overwrite" in err and "=True" not in err


def test_list_flags_take_commas_everywhere(realism_model, image, dataset, capsys):
    # score, eval and export take one comma-separated argument; spaces around entries are fine
    args = ["score", "--model", str(realism_model), "--image", str(image), "--prompt", "a", "--json"]
    assert main([*args, "--dimensions", "realism, alignment"]) == 0
    assert json.loads(capsys.readouterr().out)["dimensions"] == ["realism", "alignment"]
    eval_args = ["eval", "--model", str(realism_model), "--data", str(dataset), "--quiet", "--json"]
    assert main([*eval_args, "--dimensions", "alignment,realism"]) == 0
    assert json.loads(capsys.readouterr().out)["dimensions"] == ["alignment", "realism"]


# --------------------------------------------------------------------------------------------------
# 8. The README is the map
# --------------------------------------------------------------------------------------------------


def _command_groups() -> list[str]:
    from zreward_deploy.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return list(sub.choices)


def test_readme_command_table_lists_every_command_group():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `zreward (\w+)", table, flags=re.M)
    groups = _command_groups()
    assert len(groups) == 10
    assert set(rows) == set(groups), f"README lacks {sorted(set(groups) - set(rows))}"


def test_every_preset_is_in_the_help():
    from zreward_deploy.commands.model import PRESET_NAMES
    from zreward_deploy.presets import PRESETS

    assert tuple(PRESETS) == PRESET_NAMES
    out = subprocess.run(
        [sys.executable, "-m", "zreward_deploy.cli", "model", "create", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in PRESETS:
        assert name in out
    readme = (ROOT / "README.md").read_text()
    for name in PRESETS:
        assert f"`{name}`" in readme or f"{name}\\|" in readme or f"|{name}`" in readme


def test_durations_are_stated_once_with_the_machine():
    # --help points at the README, which states each measured duration with the machine it was measured on
    help_text = (
        subprocess.run(
            [sys.executable, "-m", "zreward_deploy.cli", "demo", "--help"], capture_output=True, text=True
        ).stdout
        + subprocess.run(
            [sys.executable, "-m", "zreward_deploy.cli", "--help"], capture_output=True, text=True
        ).stdout
    )
    assert not re.search(r"~\s*\d+\s*(s|min)\b", help_text), help_text
    readme = (ROOT / "README.md").read_text()
    (durations,) = re.findall(r"^Measured durations.*$", readme, flags=re.M)
    assert "cores" in durations and "zreward demo --quick" in readme


def test_train_list_fields_take_commas_too():
    # the same convention in `zreward train key=value`: dimensions=a,b (a YAML list still works)
    from zreward_deploy.training.config import ConfigError
    from zreward_deploy.training.sft import SFTConfig

    comma = SFTConfig.from_sources(None, ["dimensions=realism,alignment", "data=d"])
    yaml_list = SFTConfig.from_sources(None, ["dimensions=[realism, alignment]", "data=d"])
    assert comma.dimensions == yaml_list.dimensions == ["realism", "alignment"]
    assert SFTConfig.from_sources(None, ["dimensions=realism", "data=d"]).dimensions == ["realism"]
    with pytest.raises(ConfigError, match="dimensions"):
        SFTConfig.from_sources(None, ["dimensions=realism,,alignment", "data=d"])
