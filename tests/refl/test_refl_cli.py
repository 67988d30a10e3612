"""Every ``zreward refl`` command once, on tiny sizes (zreward_deploy/commands/refl.py): ``run --quick``
(its two students trained here), then ``pretrain`` (found in the cache the run filled), ``finetune``,
``evaluate`` and ``bench`` on what the run made, and the folder and flag errors."""

import json
from pathlib import Path

import pytest

from zreward_deploy.cli import main


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("refl_cli")
    out, cache = root / "run", root / "cache"
    code = main(["refl", "run", "--quick", "--out", str(out), "--cache", str(cache), "--threads", "1"])
    assert code == 0
    return out, cache


def test_run_quick_writes_report_grids_and_verdict(quick_run):
    out, _ = quick_run
    summary = json.loads((out / "summary.json").read_text())
    judges = summary["evaluation"]["judges"]
    assert set(judges) == {"reward", "student", "student_jittered", "statistics"}
    assert all(j["run"] for j in judges.values())
    assert (
        sum(judges["student"][k] for k in ("wins", "losses", "ties")) == summary["evaluation"]["pairs"] == 3
    )
    report = (out / "report.md").read_text()
    assert "Reward-hacking check" in report and "second student" in report
    assert (out / "grid_before.png").stat().st_size > 0 and (out / "grid_after.png").is_file()
    assert (out / "finetuned" / "generator.json").is_file()
    # the reward and the judge were trained on disjoint sets (seeds 0 and 1)
    assert summary["reward_model"] != summary["judge_student"]


def test_pretrain_finds_the_generator_the_run_cached(quick_run, capsys):
    out, cache = quick_run
    args = ["refl", "pretrain", "--data", str(out / "data" / "a"), "--cache", str(cache)]
    quick = [
        "--image-size",
        "32",
        "--block-out-channels",
        "16,32",
        "--text-dim",
        "32",
        "--steps",
        "2",
        "--batch-size",
        "8",
    ]
    assert main([*args, *quick]) == 0
    assert "found in the cache" in capsys.readouterr().out


def test_finetune_then_evaluate(quick_run, tmp_path, capsys):
    out, _ = quick_run
    generator = json.loads((out / "summary.json").read_text())["generator"]["dir"]
    reward = str(out / "reward" / "model")
    tuned = tmp_path / "tuned"
    common = ["--steps", "1", "--batch-size", "2", "--method", "refl", "--reg", "kl"]
    assert (
        main(["refl", "finetune", "--generator", generator, "--reward", reward, "--out", str(tuned), *common])
        == 0
    )
    assert "fine-tuned generator" in capsys.readouterr().out
    # the folder rule: an earlier result is replaced only when asked
    assert (
        main(["refl", "finetune", "--generator", generator, "--reward", reward, "--out", str(tuned), *common])
        == 2
    )
    assert "--overwrite" in capsys.readouterr().err
    ev = tmp_path / "eval"
    args = ["--before", generator, "--after", str(tuned), "--reward", reward, "--out", str(ev)]
    exclude = ["--exclude", f"{out / 'data' / 'a'},{out / 'data' / 'b'}", "--prompts", "2", "--seeds", "1"]
    assert main(["refl", "evaluate", *args, *exclude, "--judge", str(out / "judge" / "model")]) == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "student: net" in printed
    result = json.loads((ev / "evaluation.json").read_text())
    assert result["pairs"] == 2 and not set(result["prompts"]) & _prompts(out / "data" / "a")
    assert main(["refl", "evaluate", *args, "--exclude", str(tmp_path), "--overwrite"]) == 2
    assert "not a dataset folder" in capsys.readouterr().err


def test_bench_says_the_fused_kernel_was_not_run_without_a_gpu(quick_run, tmp_path, capsys):
    pytest.importorskip("resource", reason="peak memory is read with the POSIX resource module")
    out, _ = quick_run
    generator = json.loads((out / "summary.json").read_text())["generator"]["dir"]
    bench = tmp_path / "bench"
    args = ["--generator", generator, "--reward", str(out / "reward" / "model"), "--out", str(bench)]
    sizes = [
        "--batch-size",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--checkpointing",
        "on",
        "--device",
        "cpu",
    ]
    assert main(["refl", "bench", *args, *sizes, "--threads", "1"]) == 0
    rows = json.loads((bench / "bench_refl.json").read_text())["rows"]
    torch_row, triton_row = rows
    assert torch_row["run"] and torch_row["median_step_s"] > 0 and torch_row["peak_rss_mib"] > 0
    assert not triton_row["run"] and "not run here" in triton_row["why"]
    assert "not run here" in capsys.readouterr().out


def test_bad_flags_are_one_line_naming_the_flag(tmp_path, capsys):
    assert main(["refl", "run", "--out", str(tmp_path / "x"), "--eval-prompts", "0"]) == 2
    assert "--eval-prompts" in capsys.readouterr().err
    empty = tmp_path / "not_a_generator"
    empty.mkdir()
    finetune = ["refl", "finetune", "--generator", str(empty), "--reward", "r", "--out", str(tmp_path / "o")]
    assert main([*finetune, "--k", "0"]) == 2
    assert "--k" in capsys.readouterr().err
    assert main(finetune) == 2
    assert "generator.json" in capsys.readouterr().err


def _prompts(data):
    return {json.loads(line)["prompt"] for line in (data / "train.jsonl").read_text().splitlines()}


def test_the_python_example_of_docs_refl_runs_as_written(quick_run, capsys):
    # docs/refl.md's first Python block, on the folders of `zreward refl run --quick` instead of refl-run/
    out, _ = quick_run
    doc = (Path(__file__).resolve().parents[2] / "docs" / "refl.md").read_text()
    code = doc.split("```python", 1)[1].split("```", 1)[0]
    assert code.count('"refl-run/') == 2
    namespace: dict = {}
    exec(compile(code.replace('"refl-run/', f'"{out}/'), "docs/refl.md", "exec"), namespace)
    assert tuple(namespace["images"].shape) == (1, 3, 32, 32)  # the quick run's generator is 32 px
    assert capsys.readouterr().out.count("step ") == 2
