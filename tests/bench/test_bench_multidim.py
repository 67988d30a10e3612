"""The multi-dimension benchmark runs and writes its files (no timing assertions: those live in bench/)."""

import json

from zreward_deploy.bench.bench_multidim import main


def test_bench_multidim_writes_rows(tmp_path):
    rows = main(
        [
            "--preset",
            "tiny",
            "--batch-sizes",
            "1",
            "3",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert {(r["provider"], r["batch"]) for r in rows} == {
        (p, b) for p in ("one_pass", "separate_passes") for b in (1, 3)
    }
    lines = (tmp_path / "bench_multidim.jsonl").read_text().splitlines()
    assert len(lines) == 4
    row = json.loads(lines[0])
    assert row["env"]["torch"] and row["median_ms"] > 0 and row["speedup_vs_separate"] > 0
    # the one-pass layout sends fewer tokens through the LM than four separate sequences
    one = next(r for r in rows if r["provider"] == "one_pass")
    sep = next(r for r in rows if r["provider"] == "separate_passes")
    assert one["lm_tokens_per_item"] < sep["lm_tokens_per_item"]
    assert (tmp_path / "bench_multidim.csv").exists() and "| one_pass |" in (
        tmp_path / "bench_multidim.md"
    ).read_text()
