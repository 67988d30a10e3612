"""The score-head benchmark runs at the tiniest shapes and writes its files (no timing assertions: speed
claims live in docs/benchmarks.md, measured by bench/bench_score_head.py)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from zreward_deploy.bench.bench_score_head import ScoreHeadBenchConfig, bytes_floor, eager_full_vocab, main
from zreward_deploy.kernels.score_head import score_head_ref


def test_bench_score_head_writes_rows(tmp_path):
    argv = ["--device", "cpu", "--models", "tiny:64:1000", "--ns", "1", "3", "--ks", "5", "--warmup", "1",
            "--repeats", "1", "--modes", "fwd", "fwd_bwd", "fwd_bwd_w", "--compile-backend", "eager",
            "--out", str(tmp_path)]  # fmt: skip
    threads = torch.get_num_threads()
    rows = main(argv)
    assert torch.get_num_threads() == threads  # the bench's one thread does not outlive it
    providers = ("eager_full", "eager_restricted", "compiled_restricted", "triton")
    assert {(r["provider"], r["mode"], r["N"]) for r in rows} == {
        (p, m, n) for p in providers for m in ("fwd", "fwd_bwd", "fwd_bwd_w") for n in (1, 3)
    }
    lines = (tmp_path / "bench_score_head.jsonl").read_text().splitlines()
    assert len(lines) == len(rows) == 24
    first = json.loads(lines[0])
    assert first["env"]["torch"] == torch.__version__ and first["H"] == 64 and first["V"] == 1000
    for r in rows:
        if r["provider"] == "triton":
            # never an interpreter timing on CPU: skipped, with the reason in the row
            assert "median_ms" not in r and r["status"].startswith("skipped: needs CUDA")
        else:
            assert r["status"] == "ok" and r["median_ms"] > 0 and r["gbps"] > 0
            assert r["speedup_vs_restricted"] > 0 and r["speedup_vs_full"] > 0
    with (tmp_path / "bench_score_head.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 24
    md = (tmp_path / "bench_score_head.md").read_text()
    assert "| tiny:64:1000 | fwd_bwd_w | 3 | 5 |" in md and "skipped" in md and "torch 2." in md


def test_bytes_floor_counts_what_must_move():
    # fwd, bf16, N=2, H=8, K=3: hidden 32 + rows 48 + values/ids 36 + probs 24 + mean/var 16
    assert bytes_floor("fwd", 2, 8, 100, 3, 2) == 32 + 48 + 36 + 24 + 16
    # fwd_bwd adds saved probs/mean 24+8, upstream grads 16, rows 48, d hidden 32; fwd_bwd_w also the
    # hidden re-read 32 and the dense [V, H] gradient 100*8*2
    base = bytes_floor("fwd", 2, 8, 100, 3, 2)
    assert bytes_floor("fwd_bwd", 2, 8, 100, 3, 2) == base + 24 + 8 + 16 + 48 + 32
    assert bytes_floor("fwd_bwd_w", 2, 8, 100, 3, 2) == base + 128 + 32 + 1600


def test_full_vocab_provider_computes_the_same_head():
    """Provider (a) must compute what the others compute, or the comparison means nothing."""
    g = torch.Generator().manual_seed(0)
    hidden, lm_head = torch.randn(4, 16, generator=g), torch.randn(50, 16, generator=g) / 4
    values, ids = torch.linspace(1, 5, 5), torch.tensor([7, 3, 41, 0, 22])
    probs, mean, var = eager_full_vocab(hidden, lm_head, values, 0.7, ids)
    ref = score_head_ref(hidden, lm_head, values, 0.7, ids)
    for a, b in ((probs, ref.probs), (mean, ref.mean), (var, ref.var)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "tpu"}, "device"),
        ({"modes": ("fwd", "bwd_only")}, "bwd_only"),
        ({"providers": ("pytorch",)}, "pytorch"),
        ({"ks": (33,)}, "K"),
        ({"models": ("llama-405b",)}, "llama-405b"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScoreHeadBenchConfig(**kwargs)
