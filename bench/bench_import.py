"""Does ``zreward data import pickapic-v2`` stream? Peak memory and rows/s of importing a synthetic
Pick-a-Pic v2 parquet file of N rows, for several N: a flat peak across N shows that the file is never
held in memory (docs/data.md, "Importing public sets"; the numbers: docs/benchmarks.md).

The source is written here, batch by batch, with the columns and types of the ``yuvalkirstain/pickapic_v2``
card: tiny distinct JPEGs (one 16x16 JPEG with a per-image comment segment, ~0.7 KiB), ``rows_per_group``
rows per parquet row group, ``images_per_prompt`` images per prompt chained into ``images_per_prompt - 1``
pairs (so each image is in two rows and the writer's record reuse is exercised). Each import runs in a
fresh Python process with pyarrow and Pillow already imported, and the row records the process's peak
resident size (``ru_maxrss``), its growth over the resident size just before the import, the wall time
and rows/s (the final sync of every file and the rename of the folder included).

Run:  python -m zreward_deploy.bench.bench_import --out runs/bench_import [--rows 20000 200000]
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zreward_deploy.bench.common import load_average, publish

_MEASURE = """
import json, os, resource, sys, time
import PIL.Image, pyarrow.parquet  # loaded before the baseline: the growth is the import's own
from zreward_deploy.data.importers import import_dataset
try:  # the resident size now (ru_maxrss would be the peak of the imports above)
    base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
except OSError:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
report = import_dataset("pickapic-v2", sys.argv[1], sys.argv[2], progress=False, overwrite=True)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"base_kib": base, "peak_kib": peak, "seconds": seconds, "rows": report.rows_read,
                  "records": sum(report.records.values()), "preferences": sum(report.preferences.values()),
                  "images": report.images_written, "skipped": report.rows_skipped}))
"""


@dataclass
class ImportBenchConfig:
    rows: tuple[int, ...] = field(default=(20000, 200000), metadata={"help": "source rows per measurement"})
    rows_per_group: int = field(default=1000, metadata={"help": "rows per parquet row group"})
    images_per_prompt: int = field(default=5, metadata={"help": "images per prompt (pairs: one fewer)"})
    out: str = field(
        default="runs/bench_import", metadata={"help": "output directory for JSONL/CSV/Markdown"}
    )
    keep: bool = field(default=False, metadata={"help": "keep the generated sources and imported datasets"})

    def __post_init__(self) -> None:
        if not self.rows or min(self.rows) < 1:
            raise ValueError("rows must be a non-empty list of positive integers")
        if self.rows_per_group < 1:
            raise ValueError("rows_per_group must be >= 1")
        if self.images_per_prompt < 2:
            raise ValueError("images_per_prompt must be >= 2 (a pair needs two images)")


def _base_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 60, 200)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _jpeg(base: bytes, uid: int) -> bytes:
    """``base`` with a comment segment naming ``uid``: valid, distinct bytes without re-encoding."""
    text = f"uid {uid}".encode()
    return base[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + base[2:]


def write_source(path: Path, rows: int, rows_per_group: int, images_per_prompt: int) -> None:
    """A Pick-a-Pic v2 parquet file of ``rows`` rows, written one row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("are_different", pa.bool_()), ("best_image_uid", pa.string()), ("caption", pa.string()),
            ("created_at", pa.timestamp("ns")), ("has_label", pa.bool_()), ("image_0_uid", pa.string()),
            ("image_1_uid", pa.string()), ("jpg_0", pa.binary()), ("jpg_1", pa.binary()),
            ("label_0", pa.float64()), ("label_1", pa.float64()), ("model_0", pa.string()),
            ("model_1", pa.string()), ("ranking_id", pa.int64()), ("user_id", pa.int64()),
        ]
    )  # fmt: skip
    base = _base_jpeg()
    pairs = images_per_prompt - 1
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, rows_per_group):
            columns: dict[str, list[Any]] = {name: [] for name in schema.names}
            for r in range(start, min(start + rows_per_group, rows)):
                prompt, j = divmod(r, pairs)
                uid0, uid1 = prompt * images_per_prompt + j, prompt * images_per_prompt + j + 1
                label = (1.0, 0.0, 0.5)[r % 3]
                values = {
                    "are_different": True, "best_image_uid": f"u{uid0}", "caption": f"synthetic prompt {prompt}",
                    "created_at": r, "has_label": True, "image_0_uid": f"u{uid0}", "image_1_uid": f"u{uid1}",
                    "jpg_0": _jpeg(base, uid0), "jpg_1": _jpeg(base, uid1), "label_0": label,
                    "label_1": 1.0 - label, "model_0": "m0", "model_1": "m1", "ranking_id": r, "user_id": r % 97,
                }  # fmt: skip
                for name, value in values.items():
                    columns[name].append(value)
            writer.write_table(pa.table(columns, schema=schema), row_group_size=rows_per_group)


def _environment() -> dict[str, Any]:
    """Hardware and versions (without importing torch: the importers do not use it)."""
    from importlib.metadata import version

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "pyarrow": version("pyarrow"),
        "pillow": version("pillow"),
        "cpu": f"{cpu} ({os.cpu_count()} logical cores)",
    }


def run(config: ImportBenchConfig) -> list[dict[str, Any]]:
    """One row per source size: peak RSS, its growth during the import, seconds and rows/s."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    results = []
    for n in config.rows:
        src = out / f"pickapic_{n}"
        if src.exists():
            shutil.rmtree(src)
        (src / "data").mkdir(parents=True)
        source = src / "data" / "train-00000-of-00001.parquet"
        print(f"bench_import: writing {n} rows ...", file=sys.stderr, flush=True)
        write_source(source, n, config.rows_per_group, config.images_per_prompt)
        dataset = out / f"dataset_{n}"
        print(f"bench_import: importing {n} rows ...", file=sys.stderr, flush=True)
        load_before = load_average()
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(src), str(dataset)],
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - start
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(
            {
                "bench": "import",
                "format": "pickapic-v2",
                "rows": n,
                "row_groups": -(-n // config.rows_per_group),
                "parquet_mib": source.stat().st_size / 2**20,
                "records": measured["records"],
                "preferences": measured["preferences"],
                "images_written": measured["images"],
                "rows_skipped": measured["skipped"],
                "seconds": measured["seconds"],
                "rows_per_s": measured["rows"] / measured["seconds"],
                "peak_rss_mib": measured["peak_kib"] / 1024,
                "growth_mib": (measured["peak_kib"] - measured["base_kib"]) / 1024,
                "process_wall_s": wall,
                "load_avg_1min_before": load_before,
                "load_avg_1min_after": load_average(),
                "env": env,
            }
        )
        if not config.keep:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(dataset, ignore_errors=True)
    return results


COLUMNS = (
    "rows",
    "row_groups",
    "parquet_mib",
    "seconds",
    "rows_per_s",
    "peak_rss_mib",
    "growth_mib",
    "load_avg_1min_before",
)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse flags, run, write ``bench_import.{jsonl,csv,md}`` under ``--out``; returns the rows."""
    from zreward_deploy.cliargs import config_from_argv

    config = config_from_argv(ImportBenchConfig, argv, __doc__, space_separated=True)
    rows = run(config)
    publish(rows, config.out, "bench_import", COLUMNS)
    return rows


if __name__ == "__main__":
    main()
