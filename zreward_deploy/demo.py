"""The demo: what the package can do end to end today, on a CPU, with nothing downloaded.

Builds the tiny preset (random weights), saves it as a model directory, draws a few procedural images,
scores them on all rubric dimensions in one pass and prints the score distributions. The model is
untrained, so the distributions say nothing about the images yet; the point is the pipeline: model
directory -> Scorer -> per-dimension distributions, mean, std and reward.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def demo_images(size: int = 64, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """A few (prompt, uint8 HxWx3 image) pairs: a clean scene and degraded versions of it."""
    rng = np.random.default_rng(seed)
    clean = np.full((size, size, 3), 235, dtype=np.uint8)
    a, b = size // 4, size // 2
    clean[a:b, a:b] = (200, 30, 30)  # a red square
    yy, xx = np.mgrid[:size, :size]
    clean[(yy - 3 * size // 4) ** 2 + (xx - 3 * size // 4) ** 2 < (size // 8) ** 2] = (
        30,
        60,
        200,
    )  # a blue disc
    noisy = np.clip(clean + rng.normal(0, 60, clean.shape), 0, 255).astype(np.uint8)
    kernel = 5
    padded = np.pad(clean.astype(np.float32), ((kernel, kernel), (kernel, kernel), (0, 0)), mode="edge")
    blurred = np.mean(
        [
            padded[kernel + dy : kernel + dy + size, kernel + dx : kernel + dx + size]
            for dy in range(-kernel, kernel + 1, 2)
            for dx in range(-kernel, kernel + 1, 2)
        ],
        axis=0,
    )
    wrong = clean.copy()
    wrong[a:b, a:b] = (30, 160, 40)  # the square is green, not red
    prompt = "a red square and a blue circle"
    return [(prompt, clean), (prompt, noisy), (prompt, blurred.astype(np.uint8)), (prompt, wrong)]


def run_demo(out_dir: str | os.PathLike = "zreward-demo", seed: int = 0) -> dict[str, Any]:
    """Build, save, load and score; returns the score records (also printed by the CLI)."""
    from PIL import Image

    from .presets import build_preset
    from .scoring import Scorer

    out = Path(out_dir)
    model_dir, image_dir = out / "model", out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    model, processor = build_preset("tiny", seed=seed)
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)

    names = ["clean", "noisy", "blurred", "wrong_colour"]
    paths, prompts = [], []
    for name, (prompt, image) in zip(names, demo_images(seed=seed), strict=True):
        path = image_dir / f"{name}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
        prompts.append(prompt)

    scorer = Scorer.from_pretrained(model_dir)
    result = scorer.score(paths, prompts, errors="collect")
    records = result.to_records()
    for rec, path, prompt in zip(records, paths, prompts, strict=True):
        rec["image"], rec["prompt"] = path, prompt
    return {"model_dir": str(model_dir), "values": result.values, "records": records}
