"""The parity benchmark runs end to end on a tiny model, and its pass/fail logic can fail (no speed or
accuracy goals asserted here beyond the contract: those numbers live in docs/benchmarks.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from zreward_deploy.bench.bench_parity import ParityBenchConfig, main, parity_row
from zreward_deploy.cli import main as cli_main


def test_parity_bench_writes_rows_and_passes_for_a_correct_export(tmp_path, capsys):
    # Random tiny weights: probabilities near uniform, so some pairs are decided by torch margins below
    # fp16's error (|Δμ| ~1e-4); one of 45 such pairs flips on torch 2.11 (0.978 agreement). fp16 is held
    # to its probability tolerance here and to 95 % agreement; fp32 to the default 100 %.
    rows = main(
        [
            "--preset",
            "tiny",
            "--synth-prompts",
            "10",
            "--out",
            str(tmp_path),
            "--backends",
            "onnx-fp32",
            "onnx-fp16",
            "--fp16-min-agreement",
            "0.95",
        ]
    )
    assert [r["backend"] for r in rows] == ["onnx-fp32", "onnx-fp16"]
    for row in rows:
        assert row["n_items"] > 0 and row["n_pairs"] > 0
        assert row["passed"], row
        assert row["hpa"] == pytest.approx(row["hpa_torch"], abs=0.05)
        assert 0 <= row["mean_kl"] < 1e-4
    fp32, fp16 = rows
    assert fp32["max_abs_dprobs"] <= 1e-4 and fp32["agreement"] == 1.0
    assert fp16["max_abs_dprobs"] <= 1e-2 and fp16["max_abs_dprobs"] > fp32["max_abs_dprobs"]
    lines = (tmp_path / "bench_parity.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["env"]["onnxruntime"]
    assert "| onnx-fp16 |" in (tmp_path / "bench_parity.md").read_text()
    assert (tmp_path / "bench_parity.csv").exists()
    assert (tmp_path / "exports" / "fp32" / "zreward_onnx.json").exists()

    # the CLI reuses the exports (same weights, same settings) and exits 0 when every backend passes
    stamp = (tmp_path / "exports" / "fp32" / "model.onnx").stat().st_mtime_ns
    code = cli_main(
        [
            "bench",
            "parity",
            "--preset",
            "tiny",
            "--synth-prompts",
            "10",
            "--out",
            str(tmp_path),
            "--backends",
            "onnx-fp32",
        ]
    )
    assert code == 0 and "| onnx-fp32 |" in capsys.readouterr().out
    assert (tmp_path / "exports" / "fp32" / "model.onnx").stat().st_mtime_ns == stamp


class _Eval:
    """The fields of an Evaluation that parity_row reads."""

    def __init__(self, mean, probs, pairs, hpa):
        self.mean, self.probs, self.pairs = (
            np.asarray(mean, float),
            np.asarray(probs, float),
            np.asarray(pairs),
        )
        self.entry_mean = self.mean[:, 0]
        self.metrics = {"hpa": hpa}


def _evals(shift):
    mean = [[3.0], [3.2], [2.9]]
    probs = [[[0.1, 0.2, 0.4, 0.2, 0.1]]] * 3
    pairs = [[0, 1], [0, 2], [1, 2]]
    other_mean = np.array(mean) + np.array(shift)[:, None]
    return _Eval(mean, probs, pairs, 0.5), _Eval(other_mean, probs, pairs, 0.25)


def test_parity_row_measures_agreement_and_differences():
    reference, same = _evals([0.0, 0.0, 0.0])
    row = parity_row(reference, same)
    assert (
        row["agreement"] == 1.0
        and row["max_abs_dmean"] == 0
        and row["mean_kl"] == pytest.approx(0, abs=1e-12)
    )
    reference, flipped = _evals([0.0, 0.0, 0.2])  # item 2 moves from 2.9 to 3.1: pair (0, 2) flips
    row = parity_row(reference, flipped)
    assert row["agreement"] == pytest.approx(2 / 3)
    assert row["max_abs_dmean"] == pytest.approx(0.2)
    assert row["hpa"] == 0.25 and row["hpa_torch"] == 0.5
    assert row["min_abs_torch_margin"] == pytest.approx(0.1)


def test_config_is_validated():
    with pytest.raises(ValueError, match="unknown backend"):
        ParityBenchConfig(backends=("onnx-int8",))
    with pytest.raises(ValueError, match="split"):
        ParityBenchConfig(split="dev")
