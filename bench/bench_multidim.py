"""All rubric dimensions in one pass vs one pass per dimension (docs/design.md §3).

Providers, same model, same inputs, same process:
  one_pass        ``[image][prompt][suffix_1..suffix_D]`` with the 4-D mask: image and prompt computed once.
  separate_passes D full forwards ``[image][prompt][suffix_d]`` (vision tower included each time): what a
                  scorer that asks one question per sequence does.

The providers alternate run by run (A, B, A, B, ...) so that background load hits both alike; the
ratio of their medians is reported. Both produce the same probabilities (tests/test_modeling.py checks ≤ 1e-5); this measures the cost.
Tokens through the LM per item: one_pass = P + S + Σ_d T_d, separate = Σ_d (P + S + T_d), so the ideal
LM speed-up is about D·(P + S + T)/(P + S + D·T) before attention's quadratic term, plus the D−1 vision
passes saved.

Run:  python bench/bench_multidim.py --out runs/bench_multidim
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zreward_deploy.bench.common import (
    environment,
    markdown_table,
    summarize,
    time_interleaved,
    torch_threads,
    write_rows,
)

PROMPT = "three blue spheres to the left of a large yellow cone on a wooden table"


@dataclass
class MultiDimBenchConfig:
    preset: str = field(default="bench-small", metadata={"help": "model preset to build (random weights)"})
    batch_sizes: tuple[int, ...] = field(default=(1, 8), metadata={"help": "batch sizes to measure"})
    warmup: int = field(default=2, metadata={"help": "untimed runs before measuring"})
    repeats: int = field(default=7, metadata={"help": "timed runs; the median is reported"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)"})
    out: str = field(
        default="runs/bench_multidim", metadata={"help": "output directory for JSONL/CSV/Markdown"}
    )

    def __post_init__(self) -> None:
        if self.repeats < 1 or self.warmup < 0 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("repeats >= 1, warmup >= 0 and batch sizes >= 1 are required")


def run(config: MultiDimBenchConfig) -> list[dict]:
    """Measure both providers for every batch size; returns one row per (provider, batch)."""

    with torch_threads(config.threads):
        return _run(config)


def _run(config: MultiDimBenchConfig) -> list[dict]:
    from zreward_deploy.presets import build_preset

    model, processor = build_preset(config.preset, seed=0)
    dims = model.config.get_rubric().names
    suffixes = processor.suffix_ids(dims)
    env = environment()
    rows = []
    for batch in config.batch_sizes:
        images = torch.rand(
            batch,
            3,
            model.config.image_size,
            model.config.image_size,
            generator=torch.Generator().manual_seed(batch),
        )
        pixel_values = processor.preprocess_tensor(images)
        prompt_ids = processor.prompt_ids(PROMPT)
        ids, mask = processor.pad([prompt_ids] * batch)
        separate_inputs = [processor.pad([prompt_ids + s.tolist()] * batch) for s in suffixes]

        def one_pass(pixel_values=pixel_values, ids=ids, mask=mask):
            return model(pixel_values, ids, mask, suffixes)

        def separate_passes(pixel_values=pixel_values, separate_inputs=separate_inputs):
            return [model.score_sequences(pixel_values, i, m) for i, m in separate_inputs]

        tokens = {
            "one_pass": model.config.num_image_tokens + len(prompt_ids) + sum(len(s) for s in suffixes),
            "separate_passes": sum(
                model.config.num_image_tokens + len(prompt_ids) + len(s) for s in suffixes
            ),
        }
        providers = {"one_pass": one_pass, "separate_passes": separate_passes}
        with torch.inference_mode():
            times = time_interleaved(providers, config.warmup, config.repeats)
        medians = {}
        for name, samples in times.items():
            stats = summarize(samples)
            medians[name] = stats["median_ms"]
            rows.append(
                {
                    "bench": "multidim",
                    "provider": name,
                    "preset": config.preset,
                    "batch": batch,
                    "dimensions": len(dims),
                    "lm_tokens_per_item": tokens[name],
                    "dtype": "float32",
                    "device": "cpu",
                    **stats,
                    "images_per_s": batch / stats["median_ms"] * 1e3,
                    "env": env,
                }
            )
        for row in rows[-2:]:
            row["speedup_vs_separate"] = medians["separate_passes"] / row["median_ms"]
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    from zreward_deploy.cliargs import config_from_argv

    # list flags: 1,8,32 (or 1 8 32, as before)
    config = config_from_argv(MultiDimBenchConfig, argv, __doc__, space_separated=True)
    rows = run(config)
    jsonl, csv_path = write_rows(rows, config.out, "bench_multidim")
    table = markdown_table(
        rows,
        [
            "provider",
            "batch",
            "dimensions",
            "lm_tokens_per_item",
            "median_ms",
            "p95_ms",
            "images_per_s",
            "speedup_vs_separate",
        ],
    )
    Path(config.out, "bench_multidim.md").write_text(table + "\n")
    print(table)
    print(f"\nenvironment: {json.dumps(rows[0]['env'])}\nwrote {jsonl} and {csv_path}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
