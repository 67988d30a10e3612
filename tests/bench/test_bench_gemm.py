"""The GEMM benchmark runs, checks its providers agree and writes its files (no timing assertions: those
live in bench/ and docs/benchmarks.md)."""

import json

import pytest

from zreward_deploy.bench.bench_gemm import GemmBenchConfig, main, parse_shape


def test_bench_gemm_writes_rows(tmp_path):
    args = ["--shapes", "7x13x5", "33x16x9", "--warmup", "0", "--repeats", "2", "--threads", "1"]
    rows = main([*args, "--out", str(tmp_path)])
    assert [(r["shape"], r["provider"]) for r in rows] == [
        ("7x13x5", "torch"),
        ("7x13x5", "onnx"),
        ("33x16x9", "torch"),
        ("33x16x9", "onnx"),
    ]
    for row in rows:
        # GFLOP/s is 2·M·K·N over the median time, and the speed-up the ratio of the two medians
        assert row["gflops"] == pytest.approx(2 * row["m"] * row["k"] * row["n"] / (row["median_ms"] * 1e6))
        torch_row = next(r for r in rows if r["shape"] == row["shape"] and r["provider"] == "torch")
        assert row["speedup_vs_torch"] == pytest.approx(torch_row["median_ms"] / row["median_ms"])
        assert row["repeats"] == 2 and row["threads"] == 1 and row["env"]["cpu_threads"] == 1
    lines = (tmp_path / "bench_gemm.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[1])["provider"] == "onnx"
    assert (tmp_path / "bench_gemm.csv").exists()
    assert "| 33x16x9 | onnx |" in (tmp_path / "bench_gemm.md").read_text()


@pytest.mark.parametrize("bad", ["340x512", "0x4x4", "ax4x4", "4x4x4x4"])
def test_malformed_shapes_are_named(bad):
    with pytest.raises(ValueError, match=f"shape '{bad}'"):
        parse_shape(bad)
    with pytest.raises(ValueError, match=f"shape '{bad}'"):
        GemmBenchConfig(shapes=("8x8x8", bad))


def test_cli_rejects_a_malformed_shape(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--shapes", "8x8"])
    assert exit_info.value.code == 2
    assert "shape '8x8'" in capsys.readouterr().err
