"""``zreward bench gpu`` (bench/bench_gpu.py): the dry run through the CLI writes every section's files with
the environment record; a failing section is recorded and the next one runs; the budget skips what would
not fit and keeps what finished; a section's process is killed at its timeout.

The full dry run runs in-process (``--no-isolate``) to stay inside CI's time; the subprocess path is run by
``test_an_isolated_section_reports_its_status`` and ``test_a_hanging_child_is_killed_at_its_timeout``.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from zreward_deploy.bench import bench_gpu
from zreward_deploy.bench.bench_gpu import SECTION_ORDER, GpuBenchConfig, Section, run, run_child
from zreward_deploy.cli import main

ENV_KEYS = ("gpu", "driver", "cuda", "torch", "triton", "onnxruntime", "git_sha")


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu")
    # a budget above the dry default so that a loaded CI machine cannot skip a section for lack of time
    assert main(["bench", "gpu", "--dry-run", "--no-isolate", "--budget-s", "300", "--out", str(out)]) == 0
    return out


def test_the_dry_run_writes_every_section_with_the_environment(dry_run):
    summary = _rows(dry_run / "summary.jsonl")
    assert [r["section"] for r in summary] == list(SECTION_ORDER)
    assert all(r["status"] == "ok" for r in summary), summary
    for index, name in enumerate(SECTION_ORDER, start=1):
        rows = _rows(dry_run / f"{index:02d}_{name}.jsonl")
        assert rows, name
        for row in rows:
            assert row["section"] == name
            assert set(ENV_KEYS) <= set(row["env"]) and row["env"]["dry_run"] is True
        md = (dry_run / f"{index:02d}_{name}.md").read_text()
        assert md.startswith(f"# {index:02d}_{name}") and "torch " in md and "git " in md


def test_the_dry_run_reaches_each_device_call_or_says_why_not(dry_run):
    kernel = _rows(dry_run / "01_kernel_tests.jsonl")[0]
    assert kernel["failed"] == 0 and kernel["errors"] == 0 and kernel["skipped"] > 0
    assert any("CUDA" in reason for reason in kernel["skip_reasons"])
    head = _rows(dry_run / "02_score_head.jsonl")
    assert {r["provider"] for r in head} == {
        "eager_full",
        "eager_restricted",
        "compiled_restricted",
        "triton",
    }
    assert all(r["median_ms"] > 0 for r in head if r["provider"] != "triton")
    assert all(r["status"].startswith("skipped: needs CUDA") for r in head if r["provider"] == "triton")
    e2e = {r["setting"]: r for r in _rows(dry_run / "03_native_e2e.jsonl")}
    assert e2e["build"]["parameters"] > 0 and e2e["build"]["gflops_per_item"] > 0
    for setting in ("eager", "four_passes", "compile"):
        assert e2e[setting]["status"] == "ok" and e2e[setting]["images_per_s"] > 0
        assert e2e[setting]["achieved_tflops"] > 0 and e2e[setting]["mfu"] is None  # no peak on a CPU
    assert e2e["four_passes"]["max_abs_dprobs_vs_one_pass"] < 1e-2  # the same model, one pass or four
    assert e2e["cuda_graphs"]["status"].startswith("skipped: CUDA graphs need CUDA")
    ort = _rows(dry_run / "04_ort_cuda.jsonl")
    parity = next(r for r in ort if r["setting"] == "parity")
    assert parity["max_abs_dprobs"] < 1e-4
    assert {r["backend"] for r in ort if r["setting"] == "latency"} == {"torch", "onnx-fp32"}
    trt = _rows(dry_run / "05_tensorrt.jsonl")
    assert len(trt) == 1 and trt[0]["status"].startswith("skipped: ")
    serve = _rows(dry_run / "06_serve.jsonl")
    assert {r["mode"] for r in serve} == {"batched", "per_request"}
    assert all(r["requests_ok"] > 0 for r in serve)


def test_forward_flops_of_the_realistic_size_match_the_parameter_count():
    """At Qwen2.5-VL-3B's shapes (meta device, no memory): 2 x params x tokens dominates the model FLOPs."""
    import torch
    from transformers import AutoModelForImageTextToText

    from zreward_deploy.bench import native_gpu
    from zreward_deploy.native import NativeRewardModel

    config = native_gpu.hf_config("qwen2.5-vl-3b", dry_run=False)
    with torch.device("meta"):
        hf = AutoModelForImageTextToText.from_config(config)
    n = 256  # 448 px / (patch 14 x merge 2), squared
    head = [1, 2, 151652, *[151655] * n, 151653, 3]
    reward = NativeRewardModel(hf, head, native_gpu.SCORE_TOKENS, [1, 2, 3, 4, 5], (448, 448))
    params = native_gpu.matmul_parameters(reward)
    assert 0.6e9 < params["vision_blocks"] < 0.7e9 and 2.7e9 < params["language"] < 2.9e9
    flops = native_gpu.forward_flops(reward, 32, [8] * 4)
    tokens = len(head) + 32 + 32
    linear = 2 * params["language"] * tokens + 2 * params["vision_blocks"] * 1024
    assert linear < flops < 1.3 * linear  # attention and the merger add under 30 %


def _fake(status_log, name, fail=False, sleep=0.0):
    def section(ctx):
        time.sleep(sleep)
        if fail:
            raise RuntimeError(f"{name} broke")
        ctx.writer.add({"value": name})
        status_log.append(name)

    return section


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    ran = []
    fakes = {name: Section(_fake(ran, name, fail=name == "score_head"), 0.1, 0.1) for name in SECTION_ORDER}
    monkeypatch.setattr(bench_gpu, "SECTIONS", fakes)
    summary = run(GpuBenchConfig(out=str(tmp_path), dry_run=True, isolate=False))
    status = {r["section"]: r["status"] for r in summary}
    assert status["score_head"] == "error: RuntimeError: score_head broke"
    assert ran == [n for n in SECTION_ORDER if n != "score_head"]
    failed = _rows(tmp_path / "02_score_head.jsonl")
    assert failed[-1]["status"].startswith("error: RuntimeError") and "torch" in failed[-1]["env"]
    assert "score_head broke" in (tmp_path / "summary.md").read_text()


def test_the_budget_skips_what_would_not_fit_and_keeps_what_finished(tmp_path, monkeypatch):
    ran = []
    # each takes 1.5 s and claims 0.5: two fit in 3 s (with up to 1 s for the environment record), then
    # less than 0.5 s is left for the rest
    fakes = {name: Section(_fake(ran, name, sleep=1.5), 0.5, 0.5) for name in SECTION_ORDER}
    fakes["native_e2e"] = Section(_fake(ran, "native_e2e"), 100, 100)  # cannot fit
    monkeypatch.setattr(bench_gpu, "SECTIONS", fakes)
    summary = run(GpuBenchConfig(out=str(tmp_path), dry_run=True, isolate=False, budget_s=3.0, reserve_s=0))
    status = {r["section"]: r["status"] for r in summary}
    assert status["kernel_tests"] == "ok" and status["score_head"] == "ok"
    assert status["native_e2e"].startswith("skipped: needs ~100 s")
    assert all(status[n].startswith("skipped: needs ~") for n in SECTION_ORDER[3:])  # the budget is spent
    assert _rows(tmp_path / "01_kernel_tests.jsonl")[0]["value"] == "kernel_tests"
    assert _rows(tmp_path / "03_native_e2e.jsonl")[0]["status"].startswith("skipped: needs ~100 s")
    assert ran == ["kernel_tests", "score_head"]


def test_an_isolated_section_reports_its_status(tmp_path):
    summary = run(GpuBenchConfig(out=str(tmp_path), dry_run=True, sections=("tensorrt",), budget_s=120))
    assert [r["status"] for r in summary] == ["ok"]
    (row,) = _rows(tmp_path / "05_tensorrt.jsonl")
    assert row["status"].startswith("skipped: ") and row["env"]["dry_run"] is True


def test_a_hanging_child_is_killed_at_its_timeout():
    done = run_child(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], "", 2.0
    )
    assert done["timed_out"] and done["returncode"] is None and done["seconds"] < 10
    assert "started" in done["stdout"]


def test_unknown_sections_are_refused():
    with pytest.raises(ValueError, match="unknown sections"):
        GpuBenchConfig(sections=("warp_drive",))
