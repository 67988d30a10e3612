"""A new user's first hour with the benchmarks: contention is not reported as a result, long runs say
what they are doing, missing extras and devices are one line, and list flags take commas.

Nothing here depends on timing: synthetic timings and load readings go into the pure functions, and the
benchmark's clock (``time_blocks``), ``os.getloadavg`` and the model are replaced by fakes.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

STEADY = [10.0, 10.2, 9.9, 10.1, 10.0] * 4  # 20 runs, 4 blocks of 5, medians within 1 %


# --------------------------------------------------------------------------------------------------
# 1. The stability rule (bench/common.py), on synthetic timings and load readings
# --------------------------------------------------------------------------------------------------


def test_steady_timings_on_an_idle_machine_are_stable():
    from zreward_deploy.bench.common import judge_timings

    verdict = judge_timings(STEADY, block=5, loads=(0.4, 0.6), own_threads=2, cpus=2)
    assert verdict.reliable and verdict.reason is None
    assert verdict.spread == pytest.approx(0.0) and verdict.tail < 1.05


def test_spread_between_blocks_is_unstable():
    from zreward_deploy.bench.common import judge_timings

    # the third block ran while another job held the cores: its median is 18.5 against 10
    samples = STEADY[:10] + [18.5] * 5 + STEADY[15:]
    verdict = judge_timings(samples, block=5, loads=(0.5, 0.5), own_threads=1, cpus=4)
    assert not verdict.reliable
    assert verdict.spread == pytest.approx(0.85, abs=0.03)
    assert verdict.reason.startswith("spread 8") and "> 30%" in verdict.reason


def test_a_heavy_tail_is_unstable_even_without_two_full_blocks():
    from zreward_deploy.bench.common import judge_timings

    verdict = judge_timings([10.0, 10.0, 31.0], block=5, cpus=4)
    assert verdict.spread is None  # one partial block: no spread test
    assert not verdict.reliable and "p95/p50 3.1 > 2" in verdict.reason


@pytest.mark.parametrize(
    ("load", "own", "cpus", "reliable"),
    [
        (2.4, 2, 2, True),  # the benchmark's own two threads on two CPUs: not contention
        (3.0, 2, 2, False),  # one more busy job on a full machine: unstable
        (3.0, 1, 4, True),  # other jobs, but on CPUs the benchmark leaves free
        (8.2, 8, 4, True),  # oversubscribed by the benchmark's own threads only
        (9.0, 8, 4, False),
    ],
)
def test_load_counts_only_what_the_benchmark_did_not_cause(load, own, cpus, reliable):
    from zreward_deploy.bench.common import judge_timings

    verdict = judge_timings(STEADY, block=5, loads=(0.1, load), own_threads=own, cpus=cpus)
    assert verdict.reliable is reliable
    assert verdict.load_limit == max(cpus, own) + 0.5
    if not reliable:
        assert verdict.reason == f"load {load:.1f} > {max(cpus, own) + 0.5:g}"


def test_unstable_timings_are_measured_again_a_bounded_number_of_times(monkeypatch):
    from zreward_deploy.bench.common import measure_until_stable

    monkeypatch.setattr(os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    bursty = STEADY[:5] + [40.0] * 5 + STEADY[10:]
    tries, retries = [], []

    def measure():
        tries.append(1)
        return {"a": list(STEADY), "b": list(bursty)}

    result = measure_until_stable(measure, 5, 1, on_retry=lambda n, verdicts: retries.append(n))
    assert result.tries == len(tries) == 3 and retries == [2, 3]  # 1 + 2 retries, then it gives up
    assert result.stability["a"].reliable and not result.stability["b"].reliable

    script = iter([bursty, STEADY])
    result = measure_until_stable(lambda: {"b": list(next(script))}, 5, 1)
    assert result.tries == 2 and result.reliable  # the second try was clean: kept, no more tries


# --------------------------------------------------------------------------------------------------
# zreward bench latency with a fake model and a fake clock
# --------------------------------------------------------------------------------------------------


class FakeScorer:
    config = SimpleNamespace(get_rubric=lambda: SimpleNamespace(names=["realism", "aesthetics"]))
    processor = None

    def __init__(self, name: str):
        self.name = name

    def _forward(self, *args):  # never called: time_blocks is replaced
        raise AssertionError("the fake clock times nothing")

    def describe(self):
        return {"backend": self.name}


def fake_latency_bench(monkeypatch, tmp_path: Path, timings: list[dict[str, list[float]]], load: float = 0.5):
    """Patch bench_latency so that ``report`` runs no model: ``timings`` are what successive calls of
    ``time_blocks`` return. Returns the list that records those calls."""
    import torch

    from zreward_deploy.bench import bench_latency, common

    calls = []
    script = iter(timings)

    def fake_time_blocks(providers, warmup=3, repeats=10, block=5, settle_s=0.2):
        calls.append(list(providers))
        return {name: list(t) for name, t in next(script).items()}

    monkeypatch.setattr(bench_latency, "prepare_model", lambda *a, **k: tmp_path / "model")
    monkeypatch.setattr(
        bench_latency, "load_backend", lambda model_dir, exports, name, config: FakeScorer(name)
    )
    monkeypatch.setattr(
        bench_latency, "make_inputs", lambda processor, batch: (None, torch.zeros(batch, 7), None)
    )
    monkeypatch.setattr(common, "time_blocks", fake_time_blocks)
    monkeypatch.setattr(common, "environment", lambda: {"torch": torch.__version__, "cpu": "fake"})
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    return calls


def latency_config(tmp_path: Path, **kwargs):
    from zreward_deploy.bench.bench_latency import LatencyBenchConfig

    defaults = {"backends": ("torch", "onnx-fp32"), "batch_sizes": (1, 8), "threads": 1, "plot": False}
    return LatencyBenchConfig(out=str(tmp_path), **{**defaults, **kwargs})


def scaled(samples: list[float], factor: float) -> list[float]:
    return [t * factor for t in samples]


def test_an_unstable_row_is_retried_then_marked_unreliable_without_a_speedup(monkeypatch, tmp_path, capsys):
    from zreward_deploy.bench.bench_latency import report

    starved = [10.0] * 5 + [60.0] * 5 + [10.0] * 5 + [70.0] * 5  # torch's OpenMP threads starved now and then
    unstable = {"torch": starved, "onnx-fp32": scaled(STEADY, 0.4)}
    stable = {"torch": STEADY, "onnx-fp32": scaled(STEADY, 0.5)}
    calls = fake_latency_bench(monkeypatch, tmp_path, [unstable, unstable, unstable, stable])
    rows = report(latency_config(tmp_path))
    assert len(calls) == 4  # batch 1: 1 + 2 retries, all still unstable; batch 8: stable at once

    by = {(r["backend"], r["batch"]): r for r in rows}
    torch1, ort1, ort8 = by["torch", 1], by["onnx-fp32", 1], by["onnx-fp32", 8]
    assert torch1["unreliable"] and torch1["unreliable_reason"].startswith("spread") and torch1["tries"] == 3
    assert not ort1["unreliable"]  # ORT's own timings were fine, but its ratio is to an unreliable torch row
    assert ort1["speedup_vs_torch"] is None and torch1["speedup_vs_torch"] is None
    assert ort1["speedup_note"].startswith("torch: spread")
    assert ort8["speedup_vs_torch"] == pytest.approx(2.0) and not ort8["unreliable"] and ort8["tries"] == 1

    on_disk = [json.loads(line) for line in (tmp_path / "bench_latency.jsonl").read_text().splitlines()]
    assert [r["unreliable"] for r in on_disk] == [True, False, False, False]
    out = capsys.readouterr().out
    md = (tmp_path / "bench_latency.md").read_text()
    for text in (out, md):
        assert "n/a (unstable: torch: spread" in text and "UNRELIABLE after 3 tries: spread" in text
        assert "1 of 4 rows are unreliable" in text
        assert "| 2 |" in text  # batch 8's speed-up is still printed


def test_a_busy_machine_gives_no_speedup_even_with_steady_timings(monkeypatch, tmp_path, capsys):
    """The 130x case: a background job slows torch's every run alike (small spread), load 6 on 2 CPUs."""
    from zreward_deploy.bench.bench_latency import report

    starved = {"torch": scaled(STEADY, 30.0), "onnx-fp32": scaled(STEADY, 0.23)}
    fake_latency_bench(monkeypatch, tmp_path, [starved] * 3, load=6.0)
    rows = report(latency_config(tmp_path, batch_sizes=(1,)))
    assert all(r["unreliable"] and r["unreliable_reason"] == "load 6.0 > 2.5" for r in rows)
    assert all(r["speedup_vs_torch"] is None and r["tries"] == 3 for r in rows)
    out = capsys.readouterr().out
    assert "n/a (unstable: load 6.0 > 2.5)" in out and "130" not in out


def test_retries_zero_marks_at_once(monkeypatch, tmp_path):
    from zreward_deploy.bench.bench_latency import report

    calls = fake_latency_bench(monkeypatch, tmp_path, [{"torch": STEADY, "onnx-fp32": STEADY}], load=6.0)
    rows = report(latency_config(tmp_path, batch_sizes=(1,), retries=0))
    assert len(calls) == 1 and all(r["unreliable"] and r["tries"] == 1 for r in rows)


# --------------------------------------------------------------------------------------------------
# 2. Progress lines when stderr is not a terminal
# --------------------------------------------------------------------------------------------------


def test_latency_prints_a_line_per_step_and_row_to_a_redirected_stderr(monkeypatch, tmp_path, capsys):
    from zreward_deploy.bench.bench_latency import report

    fake_latency_bench(
        monkeypatch,
        tmp_path,
        [{"torch": STEADY, "onnx-fp32": scaled(STEADY, 0.5)}, {"torch": STEADY, "onnx-fp32": STEADY}],
    )
    report(latency_config(tmp_path))
    err = capsys.readouterr().err.splitlines()  # captured: not a TTY, as when redirected to a file
    assert "latency: batch 1: timing torch, onnx-fp32 (20 runs each) ..." in err
    assert "latency: torch batch 1 ... done 10 ms p50" in err
    assert "latency: onnx-fp32 batch 1 ... done 5 ms p50" in err
    assert "latency: onnx-fp32 batch 8 ... done 10 ms p50" in err
    assert any(line.startswith("latency: loading onnx-fp32") for line in err)
    # as measured: batch 1's rows come before batch 8 is timed
    assert err.index("latency: onnx-fp32 batch 1 ... done 5 ms p50") < err.index(
        "latency: batch 8: timing torch, onnx-fp32 (20 runs each) ..."
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_are_flushed_off_a_terminal_and_silent_on_one(monkeypatch):
    from zreward_deploy.bench.common import progress

    class Log(io.StringIO):
        flushed = 0

        def flush(self):
            Log.flushed += 1

    log = Log()
    monkeypatch.setattr(sys, "stderr", log)
    progress("latency: ort batch 8 ... done 12.3 ms p50")
    assert log.getvalue() == "latency: ort batch 8 ... done 12.3 ms p50\n" and Log.flushed >= 1
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    progress("latency: ort batch 8 ... done 12.3 ms p50")
    assert tty.getvalue() == ""


# --------------------------------------------------------------------------------------------------
# 3. No traceback: matplotlib missing, a device that is not there
# --------------------------------------------------------------------------------------------------


def test_latency_without_matplotlib_writes_everything_but_the_plot(monkeypatch, tmp_path, capsys):
    from zreward_deploy.bench.bench_latency import report

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib...` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    fake_latency_bench(monkeypatch, tmp_path, [{"torch": STEADY, "onnx-fp32": STEADY}])
    rows = report(latency_config(tmp_path, batch_sizes=(1,), plot=True))
    assert len(rows) == 2 and (tmp_path / "bench_latency.md").exists()
    assert not (tmp_path / "bench_latency.png").exists()
    err = capsys.readouterr().err
    missing = [line for line in err.splitlines() if "matplotlib" in line]
    assert len(missing) == 1 and "pip install matplotlib" in missing[0] and "[plots]" in missing[0]


@pytest.mark.parametrize("command", ["latency", "parity"])
def test_bench_commands_refuse_a_missing_device_in_one_line_before_any_work(command, tmp_path, capsys):
    from zreward_deploy.cli import main

    # cuda:99 exists nowhere: a CPU-only build and a GPU machine both refuse it
    code = main(["bench", command, "--preset", "tiny", "--device", "cuda:99", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("zreward: error: ") and "--device" in err
    assert not (tmp_path / "out").exists()  # no model built, no dataset synthesized first


def test_score_head_bench_refuses_cuda_on_a_cpu_only_build_without_a_traceback(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the benchmark would run")
    from zreward_deploy.bench.bench_score_head import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda", "--quick"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "--device" in err.splitlines()[-1] and "CUDA" in err.splitlines()[-1]


# --------------------------------------------------------------------------------------------------
# 4. List flags: one comma-separated value, the old space-separated form still accepted
# --------------------------------------------------------------------------------------------------


def _parse(argv: list[str]):
    from zreward_deploy.bench.bench_latency import LatencyBenchConfig
    from zreward_deploy.cli import build_parser
    from zreward_deploy.cliargs import dataclass_from_namespace

    return dataclass_from_namespace(
        LatencyBenchConfig, build_parser().parse_args(["bench", "latency", *argv])
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch-sizes", "1,8,32", "--backends", "torch,onnx-fp32"],
        ["--batch-sizes", "1", "8", "32", "--backends", "torch", "onnx-fp32"],  # the old form
        ["--batch-sizes", "1, 8", "32", "--backends", "torch", "onnx-fp32"],  # mixed: joined with commas
    ],
)
def test_latency_list_flags_take_commas_or_spaces(argv):
    config = _parse(argv)
    assert config.batch_sizes == (1, 8, 32) and config.backends == ("torch", "onnx-fp32")


def test_an_empty_list_entry_is_a_one_line_error_naming_the_flag(tmp_path, capsys):
    from zreward_deploy.cli import main

    code = main(["bench", "latency", "--batch-sizes", "1,,8", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--batch-sizes" in err and "'1,,8'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("module", "cls", "argv", "field", "expected"),
    [
        ("bench_gemm", "GemmBenchConfig", ["--shapes", "7x13x5,33x16x9"], "shapes", ("7x13x5", "33x16x9")),
        ("bench_memory", "MemoryBenchConfig", ["--sizes", "96,128", "--counts", "1", "2"], "sizes", (96, 128)),
        ("bench_multidim", "MultiDimBenchConfig", ["--batch-sizes", "1,8"], "batch_sizes", (1, 8)),
        ("bench_parity", "ParityBenchConfig", ["--backends", "onnx-fp32,onnx-fp16"], "backends", ("onnx-fp32", "onnx-fp16")),
    ],
)  # fmt: skip
def test_every_bench_config_parses_its_list_flags_with_commas(module, cls, argv, field, expected):
    import argparse
    import importlib

    from zreward_deploy.cliargs import add_dataclass_arguments, dataclass_from_namespace
    from zreward_deploy.errors import ZRewardInputError

    config_cls = getattr(importlib.import_module(f"zreward_deploy.bench.{module}"), cls)
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, config_cls, space_separated=True)  # the benchmarks' form
    assert getattr(dataclass_from_namespace(config_cls, parser.parse_args(argv)), field) == expected
    flag = argv[0]
    with pytest.raises(ZRewardInputError, match=flag):
        dataclass_from_namespace(config_cls, parser.parse_args([flag, argv[1] + ","]))


def test_score_head_list_flags_take_commas_or_spaces():
    from zreward_deploy.bench.bench_score_head import ScoreHeadBenchConfig, _parser
    from zreward_deploy.cliargs import list_flag_values

    for argv in (["--ns", "1,16", "--ks", "5,9"], ["--ns", "1", "16", "--ks", "5", "9"]):
        args = {
            k: v for k, v in vars(_parser().parse_args(["--device", "cpu", *argv])).items() if v is not None
        }
        config = ScoreHeadBenchConfig(**list_flag_values(ScoreHeadBenchConfig, args))
        assert config.ns == (1, 16) and config.ks == (5, 9)


# --------------------------------------------------------------------------------------------------
# The demo report's ratio lines
# --------------------------------------------------------------------------------------------------


def _latency_row(backend: str, batch: int, p50: float, speedup, unreliable=None, note=None) -> dict:
    return {
        "backend": backend, "batch": batch, "text_length": 12, "dimensions": 4, "p50_ms": p50,
        "p95_ms": p50 * 1.1, "p99_ms": p50 * 1.2, "images_per_s": batch / p50 * 1e3, "repeats": 20,
        "timing": "blocks", "torch_threads": 2, "load_avg_1min_before": 5.8, "load_avg_1min_after": 6.1,
        "speedup_vs_torch": speedup, "speedup_note": note, "unreliable": unreliable is not None,
        "unreliable_reason": unreliable, "tries": 3 if unreliable else 1,
    }  # fmt: skip


def test_demo_report_prints_no_ratio_from_unreliable_latency_rows(tmp_path):
    from zreward_deploy.pipeline.report import _latency

    rows = [
        _latency_row("torch", 1, 260.0, None, unreliable="spread 85% > 30%", note="spread 85% > 30%"),
        _latency_row("onnx-fp32", 1, 2.0, None, note="torch: spread 85% > 30%"),  # "130x" if computed
        _latency_row("torch", 8, 44.0, 1.0),
        _latency_row("onnx-fp32", 8, 20.0, 2.2),
    ]
    text = _latency({"latency": {"rows": rows, "plot": None}}, tmp_path)
    assert "130" not in text
    assert "n/a (unstable: torch: spread 85% > 30%)" in text
    assert "batch 1: n/a (unstable: torch: spread 85% > 30%)" in text and "batch 8: 2.20× faster" in text
    assert "1 of 4 rows are unreliable" in text


def test_demo_report_cost_ratio_is_na_when_a_timing_is_unreliable():
    from zreward_deploy.pipeline.report import _cost_ratios

    def cost(scorer, dims, ms, reason=None):
        return {"scorer": scorer, "dimensions": dims, "ms_per_image": ms, "unreliable": reason is not None,
                "unreliable_reason": reason}  # fmt: skip

    rows = [
        cost("teacher (GDSO, reasons)", "realism", 120.0),
        cost("student (RISD, one pass)", "realism", 4.0),
        cost("teacher (GDSO, reasons)", "all 4", 150.0, reason="load 5.0 > 2.5"),
        cost("student (RISD, one pass)", "all 4", 5.0),
    ]
    assert _cost_ratios(rows) == ["30.0× (realism)", "n/a (unstable: teacher: load 5.0 > 2.5) (all 4)"]
