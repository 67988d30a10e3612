"""Peak memory of one ``Scorer.score`` call on large image files: is it bounded per call, not per image?

Each measurement runs in a fresh Python process (so earlier allocations do not hide the peak): the tiny
preset scores a 16x16 image to warm up (libraries loaded, nothing large allocated yet), then scores the
file ``count`` times in one call, and the row records how much the process's peak resident size
(``ru_maxrss``) grew during that call: decoding, conversion, the micro-batch and the forward pass. A design that holds every
decoded image at full resolution in float32 grows by about 12 bytes per pixel per image; the package
resizes each image to the model's resolution as it is decoded, in float strips, so the growth should not
depend on ``count`` (docs/model.md, "Memory per call").

The images are synthetic PNGs written by this script (a 64x64 random tile scaled up by nearest
neighbour: large in pixels, small on disk, like the legal 8192² PNG of the issue that filed this).

Run:  python -m zreward_deploy.bench.bench_memory --out runs/bench_memory [--sizes 4096 8192] [--counts 1 3]
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zreward_deploy.bench.common import environment, publish

_MEASURE = """
import json, resource, sys
import numpy as np
from zreward_deploy.presets import build_preset
from zreward_deploy.scoring import Scorer

model, processor = build_preset("tiny", seed=0)
scorer = Scorer(model, processor, max_batch_size=int(sys.argv[3]))
scorer.score([np.zeros((16, 16, 3), np.uint8)], "warm up")  # libraries loaded, nothing big yet
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = scorer.score([sys.argv[1]] * int(sys.argv[2]), "a cube", errors="collect")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": peak - base, "base_kib": base, "errors": len(result.errors)}))
"""


@dataclass
class MemoryBenchConfig:
    sizes: tuple[int, ...] = field(default=(4096, 8192), metadata={"help": "square image sides in pixels"})
    counts: tuple[int, ...] = field(default=(1, 3), metadata={"help": "images per score call"})
    max_batch_size: int = field(default=32, metadata={"help": "micro-batch size of the scorer"})
    out: str = field(
        default="runs/bench_memory", metadata={"help": "output directory for JSONL/CSV/Markdown"}
    )

    def __post_init__(self) -> None:
        if not self.sizes or not self.counts or min(self.sizes) < 1 or min(self.counts) < 1:
            raise ValueError("sizes and counts must be non-empty lists of positive integers")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")


def _write_image(path: Path, side: int) -> None:
    import numpy as np
    from PIL import Image

    tile = np.random.default_rng(side).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(tile).resize((side, side), Image.NEAREST).save(path)


def run(config: MemoryBenchConfig) -> list[dict[str, Any]]:
    """One row per (size, count): the peak resident-size growth of the call, in MiB and bytes per pixel."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    rows = []
    for side in config.sizes:
        image = out / f"image_{side}.png"
        _write_image(image, side)
        for count in config.counts:
            print(f"bench_memory: {side}x{side} x {count} ...", file=sys.stderr, flush=True)
            done = subprocess.run(
                [sys.executable, "-c", _MEASURE, str(image), str(count), str(config.max_batch_size)],
                capture_output=True,
                text=True,
                check=True,
            )
            measured = json.loads(done.stdout.strip().splitlines()[-1])
            growth = measured["growth_kib"] * 1024
            rows.append(
                {
                    "bench": "memory",
                    "image": f"{side}x{side}",
                    "file_kib": image.stat().st_size // 1024,
                    "count": count,
                    "max_batch_size": config.max_batch_size,
                    "peak_growth_mib": growth / 2**20,
                    "bytes_per_pixel_of_one_image": growth / (side * side),
                    "errors": measured["errors"],
                    "env": env,
                }
            )
    return rows


COLUMNS = ("image", "file_kib", "count", "peak_growth_mib", "bytes_per_pixel_of_one_image")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse flags, run, write ``bench_memory.{jsonl,csv,md}`` under ``--out``; returns the rows."""
    from zreward_deploy.cliargs import config_from_argv

    # list flags: 1,8,32 (or 1 8 32, as before)
    config = config_from_argv(MemoryBenchConfig, argv, __doc__, space_separated=True)
    rows = run(config)
    publish(rows, config.out, "bench_memory", COLUMNS)
    return rows


if __name__ == "__main__":
    main()
