"""The native-VLM benchmark runs end to end on the tiny preset: every provider (the HF generic paths, the
one pass in torch and in ONNX Runtime), parity recorded and small, the speed ratios computed from the
medians (no speed asserted: the numbers live in docs/benchmarks.md)."""

from __future__ import annotations

import json

import pytest

from zreward_deploy.bench.bench_native import NativeBenchConfig
from zreward_deploy.cli import main as cli_main


def test_native_bench_writes_rows_with_parity(tmp_path, capsys):
    code = cli_main(
        ["bench", "native", "--size", "tiny", "--batch-sizes", "1", "2", "--repeats", "2", "--warmup", "0",
         "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "bench_native.jsonl").read_text().splitlines()]
    providers = ("hf_generic", "hf_generic_last", "one_pass", "one_pass_ort")
    assert [(r["provider"], r["batch"]) for r in rows] == [(p, b) for b in (1, 2) for p in providers]
    for row in rows:
        assert row["dimensions"] == 4 and row["max_abs_dprobs"] < 1e-5
        assert row["median_ms"] > 0 and row["env"]["transformers"]
    generic, last, one, ort = rows[:4]
    assert one["lm_tokens_per_item"] < generic["lm_tokens_per_item"]
    assert ort["lm_tokens_per_item"] == one["lm_tokens_per_item"]
    assert ort["speedup_vs_one_pass"] == pytest.approx(one["median_ms"] / ort["median_ms"])
    assert one["speedup_vs_one_pass"] == pytest.approx(1.0)
    assert (tmp_path / "onnx" / "zreward_onnx.json").exists()  # the export the ORT row ran
    assert one["speedup_vs_hf_generic"] == pytest.approx(generic["median_ms"] / one["median_ms"])
    assert one["speedup_vs_hf_generic_last"] == pytest.approx(last["median_ms"] / one["median_ms"])
    assert generic["speedup_vs_hf_generic"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "| one_pass |" in out and "| one_pass_ort |" in out


def test_native_bench_refuses_bad_settings():
    with pytest.raises(ValueError, match="size"):
        NativeBenchConfig(size="huge")
    with pytest.raises(ValueError, match="repeats"):
        NativeBenchConfig(repeats=0)
