"""Fixed vs dynamic resolution on a native Qwen-VL model: the score shift, and the torch resize's difference
from the HF processor's PIL resize (docs/benchmarks.md, "Fixed vs dynamic resolution"; docs/model.md).

The package scores a native model at one fixed square resolution (``NativeConfig.image_size``: every image
resized in torch, bicubic with antialiasing (``NativeConfig.resample``), then one pass for all D dimensions). The checkpoint's own
processor (``Qwen2VLImageProcessor``, ``smart_resize``) picks a resolution per image instead: the aspect
ratio kept, each side a multiple of patch x merge, the area within ``[min_pixels, max_pixels]``, resized with
PIL (bicubic). Per image and rubric dimension this measures

  fixed      ``Scorer.from_pretrained(folder).score(image, prompt)``: the package's one pass at the fixed size;
  native     the HF path at the image's dynamic resolution: the family's HF image processor (offline, built from
             its class with the patch/merge sizes, mean/std and min/max pixels), the chat sequence
             ``[head with as many image tokens as the grid gives][prompt][suffix_d]`` through the model's own
             forward, one pass per dimension, the full-vocabulary logits at the last token restricted to the
             K score tokens, softmax at the model's score temperature;

and reports ``|Δμ|`` (the mean score) and the total-variation distance ``½ Σ|p - q|`` of the two
distributions. An image that already has the fixed size, with that size inside the processor's pixel
range, is resized by neither path: its shift is fp32 rounding (the exactness check that makes the two
paths comparable; tests/bench/test_bench_resolution.py).

The differentiable path (``Scorer.score_tensor``: resize and patch layout in torch) is compared with the HF
processor's resize at the same target size (the fixed square): grey-level differences of the resized
pixels (0-255; ours in float, PIL's in uint8) and the score shift between scoring the two resized images
through the same model (``resize_abs_dmu``, ``resize_tv``).

A tiny random-weight model's shift says little about a trained checkpoint's: the procedure is the point;
run it on your checkpoint with ``--model DIR`` (and the ``--min-pixels/--max-pixels`` of its
``preprocessor_config.json``). Images: the package's synthetic scenes (``zreward data synth``'s renderer),
drawn square at the longer side and centre-cropped to each size.

Run:  zreward bench resolution --out runs/bench_resolution   (or python -m zreward_deploy.bench.bench_resolution)
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPT = "a red circle to the left of a blue square"
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@dataclass
class ResolutionBenchConfig:
    """Settings of ``zreward bench resolution``."""

    model: str = field(
        default="",
        metadata={"help": "native Qwen-VL checkpoint folder; empty: a tiny random-weight preset (--family)"},
    )
    family: str = field(
        default="qwen2_5_vl",
        metadata={"help": "the preset's family (without --model)", "choices": QWEN_FAMILIES},
    )
    fixed_size: int = field(
        default=112,
        metadata={"help": "the preset's fixed square resolution (--model: the folder's image_size is used)"},
    )
    sizes: tuple[str, ...] = field(
        default=("112x112", "144x144", "64x64", "96x160", "160x96", "72x200", "100x150", "240x240"),
        metadata={"help": "image sizes HxW to score (synthetic scenes)"},
    )
    min_pixels: int = field(default=56 * 56, metadata={"help": "the HF processor's min_pixels"})
    max_pixels: int = field(default=160 * 160, metadata={"help": "the HF processor's max_pixels"})
    prompt: str = field(default=PROMPT, metadata={"help": "the prompt scored with every image"})
    init_std: float = field(
        default=0.1,
        metadata={
            "help": "the preset's weights redrawn from N(0, init_std) so its scores are not near-uniform "
            "(0: keep the preset's init); ignored with --model"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the preset's weights and of the images"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)"})
    out: str = field(
        default="runs/bench_resolution", metadata={"help": "output folder for JSONL/CSV/Markdown"}
    )

    def __post_init__(self) -> None:
        self.sizes = tuple(self.sizes)
        for size in self.sizes:
            parse_size(size)
        if not self.sizes:
            raise ValueError("sizes: at least one HxW image size is required")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}"
            )
        if self.fixed_size < 1 or self.init_std < 0:
            raise ValueError("fixed_size >= 1 and init_std >= 0 are required")


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` -> ``(H, W)``, both positive."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"image size {text!r} is not HxW with positive integers (e.g. 96x160)")
    return int(parts[0]), int(parts[1])


def synthetic_image(height: int, width: int, seed: int) -> Any:
    """A scene of the package's synthetic data (no defects), ``height x width`` RGB (PIL): drawn square at
    the longer side, centre-cropped, so aspect ratios differ without stretching the objects."""
    import numpy as np

    from zreward_deploy.data.synth import draw_prompt, render_image

    rng = np.random.default_rng(seed)
    spec = draw_prompt(rng)
    side = max(height, width)
    image = render_image(spec.objects, {}, side, rng)
    top, left = (side - height) // 2, (side - width) // 2
    return image.crop((left, top, left + width, top + height))


def hf_image_processor(scorer: Any, min_pixels: int, max_pixels: int) -> Any:
    """The family's HF image processor (the PIL one), built offline from its class with the model's patch,
    merge and temporal sizes and the checkpoint's image mean/std."""
    try:  # transformers 5 names the PIL backend apart (its default needs torchvision)
        from transformers import Qwen2VLImageProcessorPil as ImageProcessor
    except ImportError:  # 4.57: the slow processor is the PIL one
        from transformers import Qwen2VLImageProcessor as ImageProcessor

    model, config = scorer.model, scorer.processor.config
    return ImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=model.patch_size, merge_size=model.merge_size,
        temporal_patch_size=model.temporal_patch_size, image_mean=config.image_mean, image_std=config.image_std,
    )  # fmt: skip


def hf_dynamic_probs(scorer: Any, image_processor: Any, image: Any, prompt: str, dims: list[str]) -> tuple:
    """The HF path at the image's own dynamic resolution -> ``(probs [D, K], (H', W'), image tokens)``."""
    import numpy as np
    import torch

    from zreward_deploy.native import head_token_ids

    reward, processor = scorer.model, scorer.processor
    inputs = image_processor(images=[np.asarray(image)], return_tensors="pt")
    _, gh, gw = (int(v) for v in inputs["image_grid_thw"][0])
    n_image = gh * gw // reward.merge_size**2
    head = head_token_ids(
        processor.tokenizer, processor.config.head, int(reward.config.image_token_id), n_image
    )
    prompt_ids = processor.prompt_ids(prompt)
    score_ids = torch.tensor(processor.score_token_ids)
    rows = []
    for suffix in processor.suffix_ids(dims):
        seq = torch.tensor([*head, *prompt_ids, *suffix.tolist()])[None]
        with torch.no_grad():
            logits = reward.model(
                input_ids=seq, attention_mask=torch.ones_like(seq), pixel_values=inputs["pixel_values"],
                image_grid_thw=inputs["image_grid_thw"], **reward.mm_token_types(seq),
            ).logits[0, -1]  # fmt: skip
        rows.append(torch.softmax(logits[score_ids].float() / processor.config.score_temperature, -1))
    size = (gh * reward.patch_size, gw * reward.patch_size)
    return torch.stack(rows), size, n_image


def resize_comparison(scorer: Any, image: Any, prompt: str, dims: list[str]) -> dict[str, Any]:
    """``score_tensor``'s torch resize vs the HF processor's PIL resize (bicubic, uint8), both to the fixed
    square: grey-level differences and both images' scores through the same model."""
    import numpy as np
    import torch
    from transformers.image_transforms import resize
    from transformers.image_utils import PILImageResampling

    config = scorer.processor.config
    side = config.image_size
    pixels = np.asarray(image)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std).view(1, 3, 1, 1)
    ours = (scorer.processor.preprocess_tensor(x) * std + mean) * 255  # score_tensor's resized pixels
    # the HF processor's own resize call (uint8 in, PIL bicubic, uint8 out)
    pil = resize(pixels, (side, side), resample=PILImageResampling.BICUBIC, input_data_format="channels_last")
    theirs = torch.from_numpy(np.ascontiguousarray(pil)).permute(2, 0, 1)[None].float()
    diff = (ours - theirs).abs()
    with torch.no_grad():
        p_ours = scorer.score_tensor(x, prompt, dims).probs[0]
        p_pil = scorer.score_tensor(theirs / 255, prompt, dims).probs[0]
    return {
        "max_grey": float(diff.max()),
        "mean_grey": float(diff.mean()),
        "probs_torch": p_ours,
        "probs_pil": p_pil,
    }


def run(config: ResolutionBenchConfig) -> list[dict[str, Any]]:
    """Score every image both ways; one row per (image, dimension)."""
    from zreward_deploy.bench.common import torch_threads

    with torch_threads(config.threads):
        if config.model:
            return _run(config, config.model)
        with tempfile.TemporaryDirectory() as folder:
            _save_preset(config, folder)
            return _run(config, folder)


def _save_preset(config: ResolutionBenchConfig, folder: str) -> None:
    import torch

    from zreward_deploy.bench.common import progress
    from zreward_deploy.native import build_native_preset, save_native

    progress(f"resolution: building a tiny {config.family} preset at {config.fixed_size} px ...")
    model, processor = build_native_preset(config.family, seed=config.seed, image_size=config.fixed_size)
    if config.init_std:
        gen = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            for p in model.model.parameters():
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * config.init_std)
    save_native(model, processor, folder)


def _run(config: ResolutionBenchConfig, folder: str) -> list[dict[str, Any]]:
    from zreward_deploy.bench.common import environment, progress
    from zreward_deploy.scoring import Scorer

    scorer = Scorer.from_pretrained(folder)
    reward = scorer.model
    if getattr(reward, "family", None) not in QWEN_FAMILIES:
        raise ValueError(
            f"{folder}: the dynamic-resolution comparison needs a native Qwen-VL model ({', '.join(QWEN_FAMILIES)}); "
            "SmolVLM's processor splits images into tiles plus a global image, which this bench does not model"
        )
    image_processor = hf_image_processor(scorer, config.min_pixels, config.max_pixels)
    dims = scorer.dimension_names(None)
    values = reward.values.float()
    env = environment()
    rows: list[dict[str, Any]] = []
    for i, text in enumerate(config.sizes):
        h, w = parse_size(text)
        image = synthetic_image(h, w, config.seed + i)
        progress(f"resolution: image {text} ...")
        fixed = scorer.score([image], config.prompt, dims).probs[0].float()  # [D, K]
        native, native_hw, native_tokens = hf_dynamic_probs(
            scorer, image_processor, image, config.prompt, dims
        )
        resized = resize_comparison(scorer, image, config.prompt, dims)
        for d, dim in enumerate(dims):
            mu_fixed, mu_native = float(fixed[d] @ values), float(native[d] @ values)
            p_torch, p_pil = resized["probs_torch"][d].float(), resized["probs_pil"][d].float()
            rows.append(
                {
                    "bench": "resolution", "family": reward.family, "image": text,
                    "fixed_hw": f"{reward.image_size[0]}x{reward.image_size[1]}", "fixed_tokens": reward.num_image_tokens,
                    "native_hw": f"{native_hw[0]}x{native_hw[1]}", "native_tokens": native_tokens, "dimension": dim,
                    "mu_fixed": mu_fixed, "mu_native": mu_native, "abs_dmu": abs(mu_fixed - mu_native),
                    "tv": 0.5 * float((fixed[d] - native[d]).abs().sum()),
                    "resize_max_grey": resized["max_grey"], "resize_mean_grey": resized["mean_grey"],
                    "resize_abs_dmu": abs(float((p_torch - p_pil) @ values)),
                    "resize_tv": 0.5 * float((p_torch - p_pil).abs().sum()),
                    "min_pixels": config.min_pixels, "max_pixels": config.max_pixels,
                    "model": config.model or f"tiny {config.family} preset (init_std {config.init_std})",
                    "temperature": scorer.processor.config.score_temperature, "dtype": "float32", "device": "cpu",
                    "env": env,
                }
            )  # fmt: skip
    return rows


COLUMNS = ("image", "native_hw", "native_tokens", "fixed_tokens", "dimension", "mu_fixed", "mu_native", "abs_dmu",
           "tv", "resize_max_grey", "resize_mean_grey", "resize_abs_dmu", "resize_tv")  # fmt: skip
SUMMARY_METRICS = ("abs_dmu", "tv", "resize_max_grey", "resize_mean_grey", "resize_abs_dmu", "resize_tv")


def summarize_shift(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and max of each metric over all (image, dimension) rows, and over the rows whose image needed a
    resize on either path (``native_hw != image`` or ``fixed_hw != image``)."""
    resized = [r for r in rows if r["image"] != r["fixed_hw"] or r["image"] != r["native_hw"]]
    out = []
    for label, subset in (("all images", rows), ("resized images", resized)):
        if not subset:
            continue
        for stat, fn in (("mean", lambda v: sum(v) / len(v)), ("max", max)):
            row = {"rows": label, "stat": stat, "n": len(subset)}
            row.update({m: fn([r[m] for r in subset]) for m in SUMMARY_METRICS})
            out.append(row)
    return out


def report(config: ResolutionBenchConfig) -> list[dict[str, Any]]:
    """:func:`run`, then write ``bench_resolution.{jsonl,csv,md}`` under ``config.out`` and print the tables."""
    from zreward_deploy.bench.common import markdown_table, write_rows

    rows = run(config)
    jsonl, csv_path = write_rows(rows, config.out, "bench_resolution")
    summary = summarize_shift(rows)
    text = (
        markdown_table(rows, COLUMNS)
        + "\n\n"
        + markdown_table(summary, ("rows", "stat", "n", *SUMMARY_METRICS))
    )
    Path(config.out, "bench_resolution.md").write_text(text + "\n")
    print(text)
    print(f"\nenvironment: {json.dumps(rows[0]['env'])}\nwrote {jsonl} and {csv_path}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from zreward_deploy.cliargs import config_from_argv

    return report(config_from_argv(ResolutionBenchConfig, argv, __doc__, space_separated=True))


if __name__ == "__main__":
    main()
