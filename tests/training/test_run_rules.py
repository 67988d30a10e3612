"""What a new user meets in the first hour of ``zreward train`` (training/run_rules.py, docs/training.md §4).

* Resume rule: a run into an ``output_dir`` that holds an earlier run with other settings is refused,
  naming the fields (old -> new); ``--overwrite`` deletes the earlier run (only a run folder), a larger
  step budget resumes with one line, a finished run says there is nothing to do and rewrites nothing,
  ``resume=never`` leaves no earlier weights behind.
* The saved model (and each checkpoint's) records what it was trained on (``config.training``).
* Off a terminal, progress is a log line every few steps instead of a silent tqdm bar.
* Ctrl-C ends with one line: the step reached, the checkpoint kept and how to resume; exit status 130.
* ``--device cuda`` on a PyTorch without CUDA is one line.

Every run is a few steps of the tiny preset on a 12-record synthetic set (well under a second each).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import yaml

from zreward_deploy.cli import main

FAST = ["batch_size=4", "progress=false"]
ROLLOUT = ["batch_size=2", "group_size=2", "max_new_tokens=4", "inner_updates=1", "progress=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 prompts × 3 images of 32 px, seed 0 (12 train, 3 val, 3 test records)."""
    from zreward_deploy.data.synth import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("run_rules_data")
    generate_dataset(root, SynthConfig(prompts=6, images_per_prompt=3, image_size=32, seed=0, style="flat"))
    return root


def train(out, data, *extra: str, method: str = "sft") -> int:
    """``zreward train METHOD data=... output_dir=... EXTRA`` in this process; its exit status. A Ctrl-C
    that escapes the command is a test failure (not the end of the pytest session)."""
    try:
        return main(["train", method, f"data={data}", f"output_dir={out}", *extra])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped `zreward train`")


def steps_logged(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def saved_config(out) -> dict:
    return yaml.safe_load((out / "config.yaml").read_text())


def error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def trained_on(model_dir) -> dict | None:
    """The training record saved in a model folder's ``config.json`` (``None`` when it has none)."""
    return json.loads((model_dir / "config.json").read_text()).get("training")


def ckpt(out, step: int):
    return out / "checkpoints" / f"step_{step:08d}"


# --------------------------------------------------------------------------------------------------
# 1. Resume rule
# --------------------------------------------------------------------------------------------------


def test_other_settings_are_refused_naming_the_fields_and_overwrite_starts_over(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, data, "max_steps=2", *FAST) == 0
    before = (out / "config.yaml").read_text()
    capsys.readouterr()

    assert train(out, data, "max_steps=2", *FAST, "learning_rate=0.0005", "batch_size=2") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("zreward: error: "), err
    assert "learning_rate 0.001 -> 0.0005" in err[0] and "batch_size 4 -> 2" in err[0]
    assert "--overwrite" in err[0] and "another output_dir" in err[0]
    assert (out / "config.yaml").read_text() == before  # the old run's settings still describe its weights

    assert train(out, data, "max_steps=2", *FAST, "learning_rate=0.0005", "batch_size=2", "--overwrite") == 0
    assert "sft: 2 steps; model saved to" in capsys.readouterr().out
    assert saved_config(out)["learning_rate"] == 0.0005 and saved_config(out)["batch_size"] == 2
    assert steps_logged(out) == [1, 2]


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(data, tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("keep me")
    (home / "config.yaml").write_text("project: mine\n")  # a config.yaml that no trainer wrote
    assert train(home, data, "max_steps=1", *FAST, "--overwrite") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and str(home) in err[0], err
    assert (home / "notes.txt").read_text() == "keep me"
    assert (home / "config.yaml").read_text() == "project: mine\n"


def test_larger_step_budget_resumes_with_one_line(data, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    # the logging/eval/checkpoint intervals may change too: they do not change what a step does
    assert train(out, data, "max_steps=2", *FAST, "save_every=1") == 0
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="zreward_deploy.training"):
        assert train(out, data, "max_steps=3", *FAST, "log_every=2", "keep_checkpoints=3") == 0
    lines = [r.getMessage() for r in caplog.records if "resumed from" in r.getMessage()]
    assert lines == [f"sft: resumed from step 2 (checkpoint {ckpt(out, 2)}); training to step 3"]
    assert "sft: resumed at step 2, trained 1 more to step 3; model saved to" in capsys.readouterr().out
    assert saved_config(out)["max_steps"] == 3


def test_finished_run_says_there_is_nothing_to_do_and_rewrites_nothing(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, data, "max_steps=2", *FAST) == 0
    capsys.readouterr()
    files = {
        p: p.read_bytes() for p in [out / "config.yaml", out / "metrics.jsonl", out / "model" / "config.json"]
    }
    for budget in ("max_steps=2", "max_steps=1"):
        assert train(out, data, budget, *FAST, "log_every=5") == 0
        printed = capsys.readouterr().out
        assert f"already trained to step 2 in {out}; nothing to do" in printed, printed
        assert "--overwrite to start over" in printed
        assert "model saved" not in printed  # the success line does not pretend it trained
        assert {p: p.read_bytes() for p in files} == files


def test_resume_never_leaves_no_weights_of_the_earlier_run(data, tmp_path):
    out = tmp_path / "run"
    assert train(out, data, "max_steps=3", *FAST, "save_every=1", "keep_checkpoints=3") == 0
    assert train(out, data, "max_steps=1", *FAST, "learning_rate=0.0005", "resume=never") == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000001"]
    assert trained_on(out / "model")["steps"] == 1
    assert saved_config(out)["learning_rate"] == 0.0005


def test_config_changes_ignore_allowed_fields_and_path_spellings(data, tmp_path, monkeypatch):
    from zreward_deploy.training.run_rules import config_changes
    from zreward_deploy.training.sft import SFTConfig

    monkeypatch.chdir(data.parent)
    old = SFTConfig(data=str(data), output_dir=str(tmp_path / "a"), max_steps=5)
    saved = yaml.safe_load(old.to_yaml())
    same = SFTConfig(data=f"./{data.name}", output_dir="elsewhere", max_steps=9, save_every=3, log_every=7)
    assert config_changes(same, saved) == {}
    other = SFTConfig(data=str(data), dimensions=["realism"], seed=3)
    assert config_changes(other, saved) == {"seed": (0, 3), "dimensions": (None, ["realism"])}
    del saved["label_source"]  # a config.yaml written before the field existed: its default
    assert config_changes(same, saved) == {}


# --------------------------------------------------------------------------------------------------
# 2. Training record
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "extra"),
    [("sft", [*FAST, "eval_at_end=true"]), ("gdso", ROLLOUT)],
)
def test_saved_models_record_what_they_were_trained_on(method, extra, data, tmp_path):
    from zreward_deploy.config import load_config  # imported here: older versions have no records

    out = tmp_path / method
    assert train(out, data, "max_steps=2", "save_every=1", "dimensions=[realism]", *extra, method=method) == 0
    record = trained_on(out / "model")
    assert record is not None, "the saved model records nothing"
    assert record["method"] == method and record["dimensions"] == ["realism"]
    assert record["steps"] == 2 and record["data"] == str(data) and record["base"] == "preset:tiny"
    if method == "sft":
        assert set(record["metrics"]) == {"hpa", "margin_hpa", "plcc", "srcc"}
        json.dumps(record["metrics"], allow_nan=False)  # JSON-friendly: no NaN
    assert load_config(out / "model").training == record  # a valid record (check_training_record)
    step1 = trained_on(ckpt(out, 1) / "model")
    assert (step1["method"], step1["dimensions"], step1["steps"]) == (method, ["realism"], 1)


def test_record_names_only_the_dimensions_the_data_labels(data, tmp_path):
    out = tmp_path / "sft"
    assert train(out, data, "max_steps=1", *FAST) == 0
    labelled = {
        d for line in (data / "train.jsonl").read_text().splitlines() for d in json.loads(line)["scores"]
    }
    rubric = ("alignment", "realism", "aesthetics", "plausibility")  # the tiny preset's, in order
    assert trained_on(out / "model")["dimensions"] == [d for d in rubric if d in labelled]


# --------------------------------------------------------------------------------------------------
# 3. Progress off a terminal
# --------------------------------------------------------------------------------------------------


def test_progress_lines_when_stderr_is_not_a_terminal(data, tmp_path, caplog):
    # under pytest, stderr is a capture buffer: not a terminal, as with `zreward train ... 2> log`
    with caplog.at_level(logging.INFO, logger="zreward_deploy.training"):
        assert train(tmp_path / "run", data, "max_steps=4", "batch_size=4") == 0
    lines = [r.getMessage() for r in caplog.records if ": step " in r.getMessage()]
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4"], lines  # 5% of 4 steps: each
    assert all(" loss " in line and " s/step" in line and " eta " in line for line in lines), lines


def test_progress_log_spacing_by_steps_and_by_time():
    from zreward_deploy.training.run_rules import ProgressLog

    now, lines = [0.0], []
    bar = ProgressLog("gdso", total=200, initial=0, log=lines.append, clock=lambda: now[0])
    for _ in range(40):
        now[0] += 0.1
        bar.set_postfix({"loss": "0.5120"})
        bar.update(1)
    assert [line.split()[2] for line in lines] == ["1/200", "10/200", "20/200", "30/200", "40/200"]
    assert lines[-1] == "gdso: step 40/200  loss 0.5120  0.10 s/step  eta 16s"
    lines.clear()
    now[0] += 31.0  # one slow step: a line although step 41 is not a multiple of 10
    bar.update(1)
    assert [line.split()[2] for line in lines] == ["41/200"]


def test_cli_prints_progress_lines_into_a_redirected_stderr(data, tmp_path):
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "zreward_deploy.cli", "train", "sft", f"data={data}"]
    cmd += [f"output_dir={tmp_path / 'run'}", "max_steps=3", "batch_size=4"]
    with log.open("w") as stderr:
        proc = subprocess.run(cmd, stderr=stderr, stdout=subprocess.PIPE, text=True, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "sft: step 3/3  " in text and "eta 0s" in text, text


# --------------------------------------------------------------------------------------------------
# 4. Ctrl-C
# --------------------------------------------------------------------------------------------------


def interrupt_at_call(monkeypatch, n: int) -> None:
    """Make the SFT loss raise KeyboardInterrupt on its ``n``-th call (the ``n``-th step)."""
    import zreward_deploy.training.sft as sft

    real, calls = sft._sft_loss, []

    def loss(out, batch):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(out, batch)

    monkeypatch.setattr(sft, "_sft_loss", loss)


def test_ctrl_c_names_the_step_and_checkpoint_and_the_same_command_resumes(
    data, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    args = ("max_steps=4", *FAST, "save_every=2")
    interrupt_at_call(monkeypatch, 4)
    assert train(out, data, *args) == 130
    err = error_lines(capsys)
    assert len(err) == 1, err
    assert "interrupted at step 3 of 4" in err[0]
    assert f"last checkpoint: {ckpt(out, 2)} (step 2)" in err[0]
    assert "run the same command again to resume from step 2" in err[0]
    assert not (out / "model").exists() and not ckpt(out, 3).exists() and not ckpt(out, 4).exists()

    monkeypatch.undo()
    assert train(out, data, *args) == 0
    assert "resumed at step 2, trained 2 more to step 4" in capsys.readouterr().out
    assert steps_logged(out) == [1, 2, 3, 4]


def test_ctrl_c_before_any_checkpoint_says_so(data, tmp_path, monkeypatch, capsys):
    interrupt_at_call(monkeypatch, 2)
    assert train(tmp_path / "run", data, "max_steps=3", *FAST) == 130
    err = error_lines(capsys)
    assert len(err) == 1 and "interrupted at step 1 of 3" in err[0], err
    assert "no checkpoint was saved yet" in err[0] and "save_every=N" in err[0]


# --------------------------------------------------------------------------------------------------
# --device
# --------------------------------------------------------------------------------------------------


def test_device_cuda_without_cuda_is_one_line(data, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: --device cuda is valid here")
    out = tmp_path / "run"
    assert train(out, data, "max_steps=1", *FAST, "--device", "cuda") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("zreward: error: ") and "--device" in err[0], err
    assert "'cuda'" in err[0] and "CUDA" in err[0]
    assert train(out, data, "max_steps=1", *FAST, "device=cuda") == 2  # the config key: the same check
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("zreward: error: ") and "device" in err[0], err
    assert "'cuda'" in err[0] and "CUDA" in err[0]
    assert not (out / "config.yaml").exists()
