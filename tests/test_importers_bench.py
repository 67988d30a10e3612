"""bench/bench_import.py writes a Pick-a-Pic-format source of N rows, imports it in a fresh process and
records one row per N (the streaming claim itself is measured, not asserted: docs/benchmarks.md)."""

import json

import pyarrow.parquet as pq
import pytest

from zreward_deploy.bench.bench_import import ImportBenchConfig, main, write_source


def test_bench_import_writes_one_row_per_size(tmp_path):
    rows = main(["--rows", "8", "12", "--rows-per-group", "4", "--out", str(tmp_path)])
    # 4 pairs per prompt of 5 chained images: 8 rows = 2 prompts = 10 images, 12 rows = 15
    got = [(r["rows"], r["row_groups"], r["records"], r["preferences"], r["images_written"]) for r in rows]
    assert got == [(8, 2, 10, 8, 10), (12, 3, 15, 12, 15)]
    for row in rows:
        assert row["rows_skipped"] == 0 and row["rows_per_s"] > 0 and row["peak_rss_mib"] > 0
    assert len((tmp_path / "bench_import.jsonl").read_text().splitlines()) == 2
    assert json.loads((tmp_path / "bench_import.jsonl").read_text().splitlines()[0])["bench"] == "import"
    assert not (tmp_path / "pickapic_8").exists()  # sources and datasets removed unless --keep


def test_the_source_has_row_groups_and_distinct_jpegs(tmp_path):
    path = tmp_path / "train-0.parquet"
    write_source(path, 10, 4, 5)
    pf = pq.ParquetFile(path)
    assert pf.num_row_groups == 3 and pf.metadata.num_rows == 10
    table = pf.read(columns=["jpg_0", "jpg_1", "image_0_uid", "caption"])
    images = {}
    for row in table.to_pylist():
        images[row["image_0_uid"]] = row["jpg_0"]
        assert row["jpg_0"].startswith(b"\xff\xd8\xff")
    assert len(set(images.values())) == len(images)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="positive"):
        ImportBenchConfig(rows=(0,))
    with pytest.raises(ValueError, match="images_per_prompt"):
        ImportBenchConfig(images_per_prompt=1)
