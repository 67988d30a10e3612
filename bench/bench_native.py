"""Native VLM scoring: the Hugging Face generic path against the package's one pass (docs/model.md).

Same model (a small Qwen2.5-VL-shaped model built from config, random weights), same inputs, same process:

  hf_generic  what a transformers user writes today: one forward of the model per dimension on
              ``[head][prompt][suffix_d]`` (its own positions and causal mask), the full-vocabulary logits
              (``.logits[:, -1]``), then the K score tokens' logits -> softmax. The vision tower runs once
              per dimension.
  hf_generic_last  the same with ``logits_to_keep=1`` (the head on the last position only): what a user who
              knows that argument writes; it separates the one-pass layout's gain from the head's.
  one_pass    ``NativeRewardModel``: ``[head][prompt][suffix_1..suffix_D]`` in one forward with the 4-D
              mask and closed-form M-RoPE positions, the score head on the K ``lm_head`` rows only.
  one_pass_ort  the same model exported to ONNX (``export_onnx``: static vision tower, same graph
              contract, fp32, validated) and run in ONNX Runtime's CPU provider with all graph
              optimizations; the export is made at the start of the run (not timed).

All take the same ``pixel_values`` (already preprocessed: the image processor is not timed on any side)
and the same token ids. The providers alternate run by run. ``max_abs_dprobs`` is a generic row's largest
difference of the probabilities from ``one_pass`` (``one_pass``'s own row: the larger of the two HF
rows'); ``speedup_vs_*`` are ratios of medians.

Run:  zreward bench native --out runs/bench_native   (or python -m zreward_deploy.bench.bench_native)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPT = "three blue spheres to the left of a large yellow cone on a wooden table"

# A small Qwen2.5-VL: the real model's vocabulary (so the full-vocabulary head costs what it costs there),
# a 4-layer 512-wide LM and a 4-block 256-wide vision tower with windows and one full-attention block.
SIZES: dict[str, dict[str, Any]] = {
    "small": {
        "image_size": 224,
        "text": dict(
            vocab_size=151936,
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=64,
            rope_scaling={"type": "mrope", "mrope_section": [16, 8, 8]},
        ),
        "vision": dict(
            hidden_size=256,
            intermediate_size=512,
            out_hidden_size=512,
            num_heads=4,
            depth=4,
            patch_size=14,
            spatial_merge_size=2,
            window_size=112,
            fullatt_block_indexes=[3],
        ),
    },
    "tiny": {"image_size": 32, "text": {}, "vision": {}},  # the test preset's sizes
}


@dataclass
class NativeBenchConfig:
    """Settings of ``zreward bench native``."""

    size: str = field(default="small", metadata={"help": "model size: small (Qwen2.5-VL-shaped) or tiny"})
    batch_sizes: tuple[int, ...] = field(default=(1, 8), metadata={"help": "batch sizes to measure"})
    warmup: int = field(default=1, metadata={"help": "untimed runs per provider before measuring"})
    repeats: int = field(default=5, metadata={"help": "timed runs per provider; the median is reported"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)"})
    out: str = field(default="runs/bench_native", metadata={"help": "output folder for JSONL/CSV/Markdown"})

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        if self.repeats < 1 or self.warmup < 0 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError("repeats >= 1, warmup >= 0 and batch sizes >= 1 are required")


def run(config: NativeBenchConfig) -> list[dict[str, Any]]:
    """Measure both providers for every batch size; one row per (provider, batch)."""
    from zreward_deploy.bench.common import torch_threads

    with torch_threads(config.threads):
        return _run(config)


def _run(config: NativeBenchConfig) -> list[dict[str, Any]]:
    import torch

    from zreward_deploy.bench.common import environment, progress, summarize, time_interleaved
    from zreward_deploy.native import build_native_preset

    size = SIZES[config.size]
    progress(f"native: building the {config.size} Qwen2.5-VL-shaped model ...")
    reward, processor = build_native_preset(
        "qwen2_5_vl", seed=0, image_size=size["image_size"], text=size["text"], vision=size["vision"]
    )
    ort_scorer = _ort_scorer(reward, processor, Path(config.out) / "onnx", config.threads)
    hf = reward.model
    dims = processor.config.get_rubric().names
    suffixes = processor.suffix_ids(dims)
    prompt = processor.prompt_ids(PROMPT)
    head = reward.head_ids.tolist()
    score_ids = torch.tensor(processor.score_token_ids)
    temperature = reward.temperature
    params = sum(p.numel() for p in hf.parameters())
    env = environment()
    rows: list[dict[str, Any]] = []
    for batch in config.batch_sizes:
        images = torch.rand(
            batch, 3, size["image_size"], size["image_size"], generator=torch.Generator().manual_seed(batch)
        )
        pixel_values = processor.preprocess_tensor(images)
        ids, mask = processor.pad([prompt] * batch)
        image_inputs = reward.hf_image_inputs(pixel_values)
        generic_inputs = []
        for suffix in suffixes:
            seq = torch.tensor([*head, *prompt, *suffix.tolist()]).expand(batch, -1)
            extra = reward.mm_token_types(seq)  # transformers 5's M-RoPE needs the token types
            generic_inputs.append(
                dict(input_ids=seq, attention_mask=torch.ones_like(seq), **image_inputs, **extra)
            )

        def hf_generic(generic_inputs=generic_inputs):
            logits = [hf(**inputs).logits[:, -1] for inputs in generic_inputs]  # [B, V] per dimension
            return torch.softmax(torch.stack(logits, 1)[..., score_ids] / temperature, -1)

        def hf_generic_last(generic_inputs=generic_inputs):
            logits = [hf(**inputs, logits_to_keep=1).logits[:, -1] for inputs in generic_inputs]
            return torch.softmax(torch.stack(logits, 1)[..., score_ids] / temperature, -1)

        def one_pass(pixel_values=pixel_values, ids=ids, mask=mask):
            return reward(pixel_values, ids, mask, suffixes).probs

        def one_pass_ort(pixel_values=pixel_values, ids=ids, mask=mask):
            return ort_scorer.run(ids, mask, pixel_values)["probs"]  # all dims, in rubric order

        progress(
            f"native: batch {batch}: timing hf_generic, hf_generic_last, one_pass and one_pass_ort "
            f"({config.repeats} runs each) ..."
        )
        with torch.inference_mode():
            ours = one_pass()
            parity = {"hf_generic": float((hf_generic() - ours).abs().max()),
                      "hf_generic_last": float((hf_generic_last() - ours).abs().max())}  # fmt: skip
            parity["one_pass"] = max(parity.values())
            parity["one_pass_ort"] = float((one_pass_ort() - ours).abs().max())
            providers = {"hf_generic": hf_generic, "hf_generic_last": hf_generic_last, "one_pass": one_pass,
                         "one_pass_ort": one_pass_ort}  # fmt: skip
            times = time_interleaved(providers, config.warmup, config.repeats)
        separate = sum(len(head) + len(prompt) + len(s) for s in suffixes)  # one sequence per dimension
        tokens = {
            "hf_generic": separate,
            "hf_generic_last": separate,
            "one_pass": len(head) + len(prompt) + sum(len(s) for s in suffixes),
        }
        tokens["one_pass_ort"] = tokens["one_pass"]
        medians = {name: summarize(samples)["median_ms"] for name, samples in times.items()}
        for name, samples in times.items():
            stats = summarize(samples)
            rows.append(
                {
                    "bench": "native", "provider": name, "family": "qwen2_5_vl", "size": config.size,
                    "parameters": params, "image_size": size["image_size"], "image_tokens": reward.num_image_tokens,
                    "batch": batch, "dimensions": len(dims), "lm_tokens_per_item": tokens[name],
                    "max_abs_dprobs": parity[name], **stats, "images_per_s": batch / stats["median_ms"] * 1e3,
                    "speedup_vs_hf_generic": medians["hf_generic"] / stats["median_ms"],
                    "speedup_vs_hf_generic_last": medians["hf_generic_last"] / stats["median_ms"],
                    "speedup_vs_one_pass": medians["one_pass"] / stats["median_ms"], "dtype": "float32",
                    "device": "cpu", "env": env,
                }
            )  # fmt: skip
        progress(f"native: batch {batch}: one pass {medians['hf_generic'] / medians['one_pass']:.2f}x faster, "
                 f"max |Δprobs| {parity['one_pass']:.1e}; ONNX Runtime {medians['one_pass'] / medians['one_pass_ort']:.2f}x "
                 f"the torch one pass, max |Δprobs| {parity['one_pass_ort']:.1e}")  # fmt: skip
    return rows


def _ort_scorer(reward: Any, processor: Any, out: Path, threads: int) -> Any:
    """Export ``reward`` (fp32, validated) into ``out`` and load it in ONNX Runtime (CPU provider,
    ``threads`` intra-op threads; 0 = ORT's default)."""
    from zreward_deploy.bench.common import progress
    from zreward_deploy.export.onnx import OnnxExportConfig, export_onnx
    from zreward_deploy.export.ort import OrtScorer, OrtSessionConfig

    progress(f"native: exporting the model to ONNX ({out}) ...")
    export_onnx(reward, out, OnnxExportConfig(overwrite=True), processor=processor)
    return OrtScorer.from_pretrained(out, session_config=OrtSessionConfig(intra_op_num_threads=threads))


COLUMNS = ("provider", "batch", "dimensions", "lm_tokens_per_item", "median_ms", "p95_ms", "images_per_s",
           "speedup_vs_hf_generic", "speedup_vs_hf_generic_last", "speedup_vs_one_pass",
           "max_abs_dprobs")  # fmt: skip


def report(config: NativeBenchConfig) -> list[dict[str, Any]]:
    """:func:`run`, then write ``bench_native.{jsonl,csv,md}`` under ``config.out`` and print the table."""
    from zreward_deploy.bench.common import publish

    rows = run(config)
    publish(rows, config.out, "bench_native", COLUMNS, env=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from zreward_deploy.cliargs import config_from_argv

    return report(config_from_argv(NativeBenchConfig, argv, __doc__, space_separated=True))


if __name__ == "__main__":
    main()
