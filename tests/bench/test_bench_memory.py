"""The memory benchmark runs one fresh process per measurement and writes its files (no memory goal is
asserted here: the bound is tested in tests/test_reliability.py, and numbers live in docs/benchmarks.md)."""

import json

import pytest

from zreward_deploy.bench.bench_memory import MemoryBenchConfig, main


def test_bench_memory_writes_one_row_per_size_and_count(tmp_path):
    rows = main(["--sizes", "96", "--counts", "1", "2", "--out", str(tmp_path)])
    assert [(r["image"], r["count"]) for r in rows] == [("96x96", 1), ("96x96", 2)]
    for row in rows:
        assert row["errors"] == 0  # the images were scored, not refused
        assert row["peak_growth_mib"] >= 0
        assert row["bytes_per_pixel_of_one_image"] == pytest.approx(row["peak_growth_mib"] * 2**20 / 96**2)
    assert len((tmp_path / "bench_memory.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "bench_memory.jsonl").read_text().splitlines()[0])["bench"] == "memory"
    assert "| 96x96 |" in (tmp_path / "bench_memory.md").read_text()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="positive"):
        MemoryBenchConfig(sizes=(0,))
    with pytest.raises(ValueError, match="max_batch_size"):
        MemoryBenchConfig(max_batch_size=0)
