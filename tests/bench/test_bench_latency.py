"""The latency benchmark runs end to end on a tiny model and writes JSON/CSV/Markdown/PNG (timings are
not asserted: speed goals live in bench/ and docs/benchmarks.md, never in unit tests)."""

from __future__ import annotations

import json

import pytest

from zreward_deploy.bench.bench_latency import LatencyBenchConfig, percentile
from zreward_deploy.cli import main


def test_latency_bench_writes_every_format(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    code = main(
        [
            "bench", "latency", "--preset", "tiny", "--backends", "torch", "onnx-fp32",
            "--batch-sizes", "1", "3", "--warmup", "0", "--repeats", "2", "--threads", "1", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert code == 0
    assert torch.get_num_threads() == threads  # the bench's --threads does not outlive it
    rows = [json.loads(line) for line in (tmp_path / "bench_latency.jsonl").read_text().splitlines()]
    assert {(r["backend"], r["batch"]) for r in rows} == {
        (b, n) for b in ("torch", "onnx-fp32") for n in (1, 3)
    }
    for row in rows:
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["images_per_s"] == pytest.approx(row["batch"] / row["p50_ms"] * 1e3)
        assert row["repeats"] == 2 and row["timing"] == "blocks" and row["load_avg_1min_before"] >= 0
        assert row["env"]["torch"] and row["text_length"] > 0
    torch_rows = [r for r in rows if r["backend"] == "torch"]
    # torch against itself is 1.0, unless the machine was busy: then no ratio at all (test_stability.py)
    assert all(r["speedup_vs_torch"] == 1.0 or r["unreliable"] for r in torch_rows)
    assert all(r["speedup_vs_torch"] is None for r in rows if r["unreliable"])
    ort = next(r for r in rows if r["backend"] == "onnx-fp32")
    assert (
        ort["runtime"]["providers"] == ["CPUExecutionProvider"]
        and ort["runtime"]["intra_op_num_threads"] == 1
    )
    table = (tmp_path / "bench_latency.md").read_text()
    assert "| onnx-fp32 | 3 |" in table and "load average" in table
    assert (tmp_path / "bench_latency.csv").exists()
    png = (tmp_path / "bench_latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "p99_ms" in capsys.readouterr().out


def test_percentile_nearest_rank():
    samples = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert (
        percentile(samples, 50) == 3.0 and percentile(samples, 0) == 1.0 and percentile(samples, 100) == 5.0
    )
    assert percentile(list(range(1, 101)), 99) == 99


def test_config_is_validated():
    with pytest.raises(ValueError, match="unknown backends"):
        LatencyBenchConfig(backends=("torch", "openvino"))
    with pytest.raises(ValueError, match="timing must be"):
        LatencyBenchConfig(timing="random")
    with pytest.raises(ValueError, match="block >= 1"):
        LatencyBenchConfig(block=0)
    with pytest.raises(ValueError):
        LatencyBenchConfig(batch_sizes=(0,))


def test_interleaved_timing_is_still_available(tmp_path):
    code = main(
        [
            "bench", "latency", "--preset", "tiny", "--backends", "torch", "onnx-fp32", "--batch-sizes", "2",
            "--warmup", "0", "--repeats", "3", "--timing", "interleaved", "--no-plot", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "bench_latency.jsonl").read_text().splitlines()]
    assert [(r["backend"], r["timing"], r["repeats"]) for r in rows] == [
        ("torch", "interleaved", 3),
        ("onnx-fp32", "interleaved", 3),
    ]


def test_tensorrt_backend_without_tensorrt_stops_before_exporting(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as on this project's machines
    code = main(
        ["bench", "latency", "--preset", "tiny", "--backends", "tensorrt-fp16", "--out", str(tmp_path)]
    )
    assert code == 2 and "zreward-deploy[gpu]" in capsys.readouterr().err
    assert not (tmp_path / "exports").exists()
