"""The end-to-end section of ``zreward bench gpu``: bf16 scoring with a realistic-size native model.

The model is ``realistic_config(name)`` (Qwen2.5-VL-3B's published shapes by default) built with
``AutoModelForImageTextToText.from_config`` on the device, random weights cast to bf16, wrapped in
:class:`~zreward_deploy.native.NativeRewardModel` (one pass for the D = 4 dimensions, the score head on the
K ``lm_head`` rows). No weights are downloaded. Settings, in order of value, each at every batch size,
each started only when its estimate fits the section's time left (otherwise a row says why):

  eager        ``reward(pixel_values, ids, mask, suffixes)`` under ``inference_mode``
  four_passes  the same model once per dimension (``[suffix_d]`` alone, the vision tower each time): what
               one pass saves; ``max_abs_dprobs`` against the one pass
  compile      ``torch.compile(reward)`` (inductor; a fresh graph per batch size, compile time recorded)
  cuda_graphs  the eager forward captured in a ``torch.cuda.CUDAGraph`` and replayed; HF's vision tower
               reads ``cu_seqlens`` on the host, so the capture may fail: the row then records the error

MFU (model FLOPs utilisation) = :func:`forward_flops` per batch / median seconds / the device's dense
bf16 peak (docs/benchmarks.md, "GPU measurements", derives it). The dry run shrinks the same config to a
2-layer model (the vocabulary stays) at 56 px and runs every step on the CPU; CUDA graphs record a skip.
"""

from __future__ import annotations

import time
from typing import Any

# Dense bf16 tensor-core peaks from the vendor datasheets, TFLOP/s (without sparsity), longest match first
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}

DIMENSIONS = 4  # the default rubric's dimensions (one suffix each)
SCORE_TOKENS = [16, 17, 18, 19, 20]  # "1".."5" in the Qwen tokenizer; the ids only fix the head's rows
# The dry run's shrink of a Qwen2.5-VL config (the vocabulary and special ids stay the published ones)
DRY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})  # fmt: skip
DRY_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  fullatt_block_indexes=[1])  # fmt: skip

COLUMNS = ("setting", "batch", "status", "ms_per_batch", "p95_ms", "images_per_s", "speedup_vs_eager",
           "achieved_tflops", "mfu", "peak_memory_gib", "compile_s", "capture_s", "max_abs_dprobs_vs_one_pass",
           "max_abs_dprobs_vs_eager", "parameters", "gflops_per_item", "seconds")  # fmt: skip


def hf_config(name: str, dry_run: bool) -> Any:
    """``realistic_config(name)``, or for the dry run the same entry with :data:`DRY_TEXT`/:data:`DRY_VISION`."""
    from transformers import AutoConfig

    from zreward_deploy.native import REALISTIC_SIZES, realistic_config

    if not dry_run:
        config = realistic_config(name)
    else:
        family, text, vision, top = REALISTIC_SIZES[name]
        config = AutoConfig.for_model(
            family, text_config={**text, **DRY_TEXT}, vision_config={**vision, **DRY_VISION}, **top
        )
        config.tie_word_embeddings = bool(text.get("tie_word_embeddings", False))
    config._attn_implementation = "sdpa"  # the one-pass 4-D mask needs sdpa or eager
    return config


def build_reward(name: str, image_size: int, device: str, dry_run: bool) -> Any:
    """The :class:`NativeRewardModel` of a random-weight bf16 model of size ``name`` on ``device``. Built in
    fp32 on the device (HF's initialisers), then cast: peak 6 bytes per parameter while building."""
    import torch
    from transformers import AutoModelForImageTextToText

    from zreward_deploy.native import NativeRewardModel, token_grid_side

    config = hf_config(name, dry_run)
    torch.manual_seed(0)
    with torch.device(device):
        hf = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa")
    hf = hf.to(torch.bfloat16).eval()
    n = token_grid_side(hf.config, image_size) ** 2
    c = hf.config
    head = [1, 2, c.vision_start_token_id, *[c.image_token_id] * n, c.vision_end_token_id, 3]
    values = [float(v) for v in range(1, len(SCORE_TOKENS) + 1)]
    return NativeRewardModel(hf, head, SCORE_TOKENS, values, (image_size, image_size)).to(device)


def make_inputs(batch: int, image_size: int, prompt_tokens: int, suffix_tokens: int, device: str) -> tuple:
    """``pixel_values [B, 3, S, S]`` bf16, ``ids``/``mask [B, prompt_tokens]``, D suffixes of ``suffix_tokens``."""
    import torch

    gen = torch.Generator().manual_seed(batch)
    pixel_values = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device, torch.bfloat16)
    ids = torch.randint(1000, 100000, (batch, prompt_tokens), generator=gen).to(device)
    suffixes = [
        torch.randint(1000, 100000, (suffix_tokens,), generator=gen).to(device) for _ in range(DIMENSIONS)
    ]
    return pixel_values, ids, torch.ones_like(ids), suffixes


# --------------------------------------------------------------------------------------------------
# Model FLOPs
# --------------------------------------------------------------------------------------------------


def matmul_parameters(reward: Any) -> dict[str, int]:
    """Weights that multiply activations (``dim >= 2``), split into the vision blocks (with the patch
    embedding), the merger, and the language model without its embedding and ``lm_head`` matrices (the
    embedding is a lookup; the score head reads K rows, counted apart)."""
    hf = reward.model
    visual = reward.vision_tower
    merger = getattr(visual, "merger", None)
    merger_ids = {id(p) for p in merger.parameters()} if merger is not None else set()
    vision_ids = {id(p) for p in visual.parameters()}
    skip = {id(hf.get_input_embeddings().weight), id(hf.get_output_embeddings().weight)}
    return {
        "vision_blocks": sum(p.numel() for p in visual.parameters() if p.dim() >= 2 and id(p) not in merger_ids),
        "merger": sum(p.numel() for p in visual.parameters() if p.dim() >= 2 and id(p) in merger_ids),
        "language": sum(p.numel() for p in hf.parameters()
                        if p.dim() >= 2 and id(p) not in vision_ids and id(p) not in skip),
    }  # fmt: skip


def forward_flops(reward: Any, prompt_tokens: int, suffix_lengths: list[int]) -> float:
    """Model FLOPs of one item's forward (multiply-add = 2 FLOPs; docs/benchmarks.md derives it):

    vision  2 P_vb n_p + sum over blocks of 4 n_p c d_v (c = n_p in full-attention blocks, the window's
            patches in windowed ones) + 2 P_m n_p / m^2
    LM      2 P_lm T + 4 L d_q (P^2 / 2 + sum_s (s P + s^2 / 2)) + 2 D K H
    with n_p patches, m the merge size, T = P + sum_s s tokens, P = head + prompt, s a suffix's length.
    """
    params = matmul_parameters(reward)
    vision = reward.config.vision_config
    text = getattr(reward.config, "text_config", reward.config)
    side = reward.image_size[0] // reward.patch_size
    n_p = side * side
    window = getattr(vision, "window_size", None)
    full = set(getattr(vision, "fullatt_block_indexes", []) or []) if window else set(range(vision.depth))
    window_patches = min(n_p, (window // reward.patch_size) ** 2) if window else n_p
    d_v = int(getattr(vision, "embed_dim", None) or vision.hidden_size)  # Qwen2-VL names the width embed_dim
    attention_v = sum(4 * n_p * (n_p if b in full else window_patches) * d_v for b in range(vision.depth))
    flops_v = (
        2 * params["vision_blocks"] * n_p + attention_v + 2 * params["merger"] * n_p / reward.merge_size**2
    )
    prefix = reward.head_ids.numel() + prompt_tokens
    tokens = prefix + sum(suffix_lengths)
    d_q = text.num_attention_heads * (
        getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    )
    pairs = prefix**2 / 2 + sum(s * prefix + s * s / 2 for s in suffix_lengths)
    flops_lm = 2 * params["language"] * tokens + 4 * text.num_hidden_layers * d_q * pairs
    return float(flops_v + flops_lm + 2 * len(suffix_lengths) * len(SCORE_TOKENS) * text.hidden_size)


def peak_tflops(cfg: Any, env: dict[str, Any]) -> float | None:
    if cfg.peak_tflops is not None:
        return cfg.peak_tflops
    name = env.get("gpu") or ""
    return next(
        (PEAK_BF16_TFLOPS[k] for k in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True) if k in name), None
    )


# --------------------------------------------------------------------------------------------------
# The section
# --------------------------------------------------------------------------------------------------


def _timed(fn: Any, device: str, warmup: int, repeats: int) -> list[float]:
    from zreward_deploy.bench.common import time_cuda, time_interleaved

    if device == "cuda":
        return time_cuda(fn, warmup=warmup, repeats=repeats, flush_l2_bytes=0)  # weights dwarf the L2
    return time_interleaved({"fn": fn}, warmup=warmup, repeats=repeats)["fn"]


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _cuda_graph(fn: Any) -> Any:
    """``fn`` captured in a CUDA graph (after warm-up on a side stream); returns the replay."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def run(ctx: Any) -> None:
    """Build the model, then every (setting, batch) that fits the time left; one row each."""
    import torch

    cfg, device = ctx.cfg, ctx.device
    start = time.perf_counter()
    reward = build_reward(cfg.model, cfg.image_size, device, cfg.dry_run)
    _sync(device)
    params = sum(p.numel() for p in reward.model.parameters())
    suffix_lengths = [cfg.suffix_tokens] * DIMENSIONS
    flops = {"one_pass": forward_flops(reward, cfg.prompt_tokens, suffix_lengths)}
    flops["four_passes"] = sum(forward_flops(reward, cfg.prompt_tokens, [s]) for s in suffix_lengths)
    peak = peak_tflops(cfg, ctx.writer.env)
    ctx.writer.add({"setting": "build", "model": cfg.model, "parameters": params, "device": device,
                    "dtype": "bf16", "image_size": cfg.image_size, "image_tokens": reward.num_image_tokens,
                    "gflops_per_item": flops["one_pass"] / 1e9, "seconds": time.perf_counter() - start,
                    "peak_memory_gib": _peak_memory(device), "status": "ok"})  # fmt: skip
    eager_ms: dict[int, float] = {}
    for setting in ("eager", "four_passes", "compile", "cuda_graphs"):
        for batch in cfg.batch_sizes:
            row = {"setting": setting, "batch": batch, "model": cfg.model, "device": device, "dtype": "bf16"}
            need = _estimate_s(setting, batch, eager_ms, cfg)
            if setting == "cuda_graphs" and device != "cuda":
                row["status"] = "skipped: CUDA graphs need CUDA (dry run or no GPU)"
            elif need > ctx.left_s():
                row["status"] = (
                    f"skipped: needs ~{need:.0f} s, {max(ctx.left_s(), 0):.0f} s of the section left"
                )
            else:
                try:
                    row.update(_measure(reward, setting, batch, cfg, device, flops, peak, eager_ms))
                    row["status"] = "ok"
                except Exception as exc:  # one setting failing (OOM, capture) is a row, not the section
                    row["status"] = (
                        f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
                    )
                    if device == "cuda":
                        torch.cuda.empty_cache()
            ctx.writer.add(row)


def _estimate_s(setting: str, batch: int, eager_ms: dict[int, float], cfg: Any) -> float:
    """Seconds a setting should take: its runs at the eager speed (x4 for four passes) plus compile or
    capture time; before any eager timing, a guess from the batch size."""
    runs = cfg.warmup + cfg.repeats
    per_run = eager_ms.get(batch, 15.0 * batch) / 1e3
    factor = 4.0 if setting == "four_passes" else 1.0
    overhead = {"compile": 5.0 if cfg.dry_run else 60.0, "cuda_graphs": 10.0}.get(setting, 0.0)
    return runs * per_run * factor + overhead


def _peak_memory(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def _measure(reward, setting, batch, cfg, device, flops, peak, eager_ms) -> dict[str, Any]:
    import torch

    from zreward_deploy.bench.common import summarize

    pixel_values, ids, mask, suffixes = make_inputs(
        batch, cfg.image_size, cfg.prompt_tokens, cfg.suffix_tokens, device
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    extra: dict[str, Any] = {}
    with torch.inference_mode():
        one = reward(pixel_values, ids, mask, suffixes).probs
        if setting == "four_passes":

            def fn():
                return torch.cat([reward(pixel_values, ids, mask, [s]).probs for s in suffixes], 1)

            extra["max_abs_dprobs_vs_one_pass"] = float((fn().float() - one.float()).abs().max())
        elif setting == "compile":
            torch._dynamo.reset()  # a fresh graph per batch size, never the recompile-limit fallback
            compiled = torch.compile(reward, backend=cfg.compile_backend, dynamic=False)
            t0 = time.perf_counter()
            out = compiled(pixel_values, ids, mask, suffixes).probs
            _sync(device)
            extra["compile_s"] = time.perf_counter() - t0
            extra["max_abs_dprobs_vs_eager"] = float((out.float() - one.float()).abs().max())

            def fn():
                return compiled(pixel_values, ids, mask, suffixes).probs
        elif setting == "cuda_graphs":
            t0 = time.perf_counter()
            fn = _cuda_graph(lambda: reward(pixel_values, ids, mask, suffixes).probs)
            extra["capture_s"] = time.perf_counter() - t0
        else:

            def fn():
                return reward(pixel_values, ids, mask, suffixes).probs

        stats = summarize(_timed(fn, device, cfg.warmup, cfg.repeats))
    if setting == "eager":
        eager_ms[batch] = stats["median_ms"]
    kind = "four_passes" if setting == "four_passes" else "one_pass"
    tflops = flops[kind] * batch / (stats["median_ms"] / 1e3) / 1e12
    return {
        **stats, "images_per_s": batch / stats["median_ms"] * 1e3, "ms_per_batch": stats["median_ms"],
        "achieved_tflops": tflops, "mfu": tflops / peak if peak else None, "peak_tflops": peak,
        "speedup_vs_eager": eager_ms[batch] / stats["median_ms"] if batch in eager_ms else None,
        "peak_memory_gib": _peak_memory(device), **extra,
    }  # fmt: skip
