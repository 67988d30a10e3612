"""Transfer to photographs: does a model trained on synthetic scenes rank degraded real photographs below
their clean originals? (docs/benchmarks.md, "Transfer to photographs"; the measured numbers: docs/results.md)

For every photograph, ``--crops`` deterministic square crops (the first the centred square of the shorter
side, the others smaller squares at seeded positions) are each resized to the model's image size S with
Lanczos, the filter that downsamples the synthetic scenes. The clean crop, then the crop with each defect at
each severity, are scored on one dimension (``realism`` by default). The defects are those of
``zreward data synth`` (:func:`zreward_deploy.data.synth.apply_defects`, the same function the generator
applies): blur (Gaussian, radius 2 s px at 64 px), noise (Gaussian, σ = 46 s of 255, per channel) and
pixelation (blocks of 1 + 5 s px at 64 px), strengths scaled with S / 64.

**Why at the model's resolution.** The defect is applied to the S x S crop, after the resize: this is the
image the model sees, and the severities then mean what they mean in the training data. Applied at the
photograph's resolution before the resize, the scorer's downsampling by a photograph-dependent factor
(2x to 15x here) would shrink a blur or a block by that factor and average the noise away, so the same
severity would be a different defect on every photograph. The same order (crop, resize, defect) is used
for every defect.

Reported per defect and severity: the pairwise accuracy μ(clean) > μ(degraded) over the crops (a tie
counts one half), with n and a Wilson 95 % interval, and the mean μ of both; per defect, the severity
ordering accuracy: over every crop and every two severities s < s', the fraction with μ(s) > μ(s'). The
intervals treat crops as independent; crops of one photograph are not, so they understate the
uncertainty (``per_photo`` in the JSON shows the spread between photographs).

The default photographs are the colour photographs bundled in installed packages, so nothing is
downloaded: scikit-image's ``skimage/data`` (astronaut, chelsea, coffee, motorcycle_left, rocket,
hubble_deep_field, retina, ihc) and matplotlib's ``mpl-data/sample_data/grace_hopper.jpg``; those of a
package that is not installed are left out (and listed). ``--photos DIR`` takes every image file of a
folder instead. These photographs are a held-out test: no synthetic-data, demo or training code reads
them (tests/bench/test_bench_transfer.py checks that the sources never name their locations).

Run:  zreward bench transfer --model zreward-demo/risd_student/model --out runs/bench_transfer
      (or python -m zreward_deploy.bench.bench_transfer ...)
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import zlib
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from zreward_deploy.errors import ZRewardInputError

DEFECTS: tuple[str, ...] = ("blur", "noise", "pixelate")
# package -> (folder inside the installed package, the photographs in it)
BUNDLED_PHOTOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "skimage": (
        "data",
        (
            "astronaut.png",
            "chelsea.png",
            "coffee.png",
            "motorcycle_left.png",
            "rocket.jpg",
            "hubble_deep_field.jpg",
            "retina.jpg",
            "ihc.png",
        ),
    ),
    "matplotlib": ("mpl-data/sample_data", ("grace_hopper.jpg",)),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
CROP_SCALES = (0.75, 0.55)  # the crops after the first: this fraction of the shorter side, alternately
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


@dataclass
class TransferBenchConfig:
    """Settings of ``zreward bench transfer``."""

    model: str = field(
        default="", metadata={"help": "model folder to test (e.g. zreward-demo/risd_student/model); required"}
    )
    photos: str = field(
        default="",
        metadata={
            "help": "folder of photographs (every .png/.jpg/.jpeg/.webp/.bmp/.tif file in it); empty: the "
            "photographs bundled in scikit-image and matplotlib"
        },
    )
    defects: tuple[str, ...] = field(
        default=DEFECTS, metadata={"help": "defects to apply", "choices": DEFECTS}
    )
    severities: tuple[float, ...] = field(
        default=(0.25, 0.5, 1.0), metadata={"help": "severities in (0, 1], as in zreward data synth"}
    )
    crops: int = field(default=8, metadata={"help": "square crops per photograph"})
    dimension: str = field(default="realism", metadata={"help": "rubric dimension scored"})
    prompt: str = field(default="a photograph", metadata={"help": "the prompt scored with every image"})
    seed: int = field(default=0, metadata={"help": "seed of the crop positions and the noise"})
    batch_size: int = field(default=32, metadata={"help": "images per scoring call"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)"})
    out: str = field(default="runs/bench_transfer", metadata={"help": "output folder (JSON, Markdown)"})

    def __post_init__(self) -> None:
        self.defects, self.severities = tuple(self.defects), tuple(float(s) for s in self.severities)
        if not self.model:
            raise ZRewardInputError("model", "is required: the model folder to test")
        if not self.defects or len(set(self.defects)) != len(self.defects):
            raise ZRewardInputError("defects", f"needs distinct defects from {', '.join(DEFECTS)}")
        if unknown := [d for d in self.defects if d not in DEFECTS]:
            raise ZRewardInputError("defects", f"{unknown[0]!r} is not one of {', '.join(DEFECTS)}")
        if not self.severities or any(not 0 < s <= 1 for s in self.severities):
            raise ZRewardInputError("severities", f"must be in (0, 1], got {list(self.severities)}")
        if len(set(self.severities)) != len(self.severities):
            raise ZRewardInputError("severities", f"must be distinct, got {list(self.severities)}")
        self.severities = tuple(sorted(self.severities))
        if self.crops < 1 or self.batch_size < 1:
            raise ZRewardInputError("crops" if self.crops < 1 else "batch_size", "must be >= 1")


# --------------------------------------------------------------------------------------------------
# Photographs, crops and degradations
# --------------------------------------------------------------------------------------------------


def bundled_photos() -> tuple[list[Path], list[dict[str, str]]]:
    """The default photographs found in the installed packages, and those left out (package missing)."""
    found, missing = [], []
    for package, (folder, names) in BUNDLED_PHOTOS.items():
        spec = importlib.util.find_spec(package)  # locates the package without importing it
        roots = list(spec.submodule_search_locations or []) if spec is not None else []
        for name in names:
            path = next((Path(r) / folder / name for r in roots if (Path(r) / folder / name).is_file()), None)
            if path is None:
                missing.append(
                    {"photo": f"{package}:{folder}/{name}", "reason": f"{package} is not installed"}
                )
            else:
                found.append(path)
    return found, missing


def folder_photos(folder: str) -> tuple[list[Path], list[dict[str, str]]]:
    """Every image file of ``folder`` (by suffix, sorted), and the other files (listed as skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise ZRewardInputError("--photos", f"{folder} is not a folder")
    photos, other = [], []
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            photos.append(path)
        else:
            other.append({"photo": str(path), "reason": "not an image file name"})
    return photos, other


def photo_crops(image: Any, count: int, size: int, seed: int, name: str) -> list[Any]:
    """``count`` square crops of the PIL ``image``, each resized to ``size`` x ``size`` (Lanczos): the
    centred square of the shorter side first, then squares of :data:`CROP_SCALES` of it at positions drawn
    from ``seed`` and the photograph's ``name`` (so a photograph's crops do not depend on the others)."""
    import numpy as np
    from PIL import Image

    width, height = image.size
    short = min(width, height)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    boxes = [((width - short) // 2, (height - short) // 2, short)]
    for i in range(1, count):
        side = max(size, int(short * CROP_SCALES[(i - 1) % len(CROP_SCALES)]))
        boxes.append((int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1)), side))
    return [
        image.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)
        for x, y, side in boxes
    ]


def degrade(clean: Any, defect: str, severity: float, seed: int) -> Any:
    """``clean`` (PIL RGB) with one synthetic-data defect (:func:`~zreward_deploy.data.synth.apply_defects`)
    at ``severity``; the noise is drawn from ``seed``."""
    import numpy as np

    from zreward_deploy.data.synth import apply_defects

    return apply_defects(clean, {defect: severity}, np.random.default_rng(seed))


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``successes`` may hold halves from ties)."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _wins(higher: float, lower: float) -> float:
    return 1.0 if higher > lower else 0.5 if higher == lower else 0.0


def _proportion(wins: float, n: int) -> dict[str, Any]:
    low, high = wilson_interval(wins, n)
    return {"n": n, "accuracy": wins / n if n else math.nan, "ci95_low": low, "ci95_high": high}


def summarize(
    mu: dict[tuple[str, int, str, float], float], config: TransferBenchConfig, photos: list[str]
) -> dict[str, Any]:
    """Accuracies from ``mu[(photo, crop, defect, severity)]`` (severity 0: the clean crop)."""
    keys = [(p, c) for p, c, d, s in mu if d == "clean"]
    rows, ordering, per_photo = [], [], []
    for defect in config.defects:
        pooled_wins = 0.0
        for severity in config.severities:
            pairs = [(mu[(p, c, "clean", 0.0)], mu[(p, c, defect, severity)]) for p, c in keys]
            wins = sum(_wins(a, b) for a, b in pairs)
            pooled_wins += wins
            rows.append(
                {
                    "defect": defect,
                    "severity": severity,
                    **_proportion(wins, len(pairs)),
                    "mean_mu_clean": sum(a for a, _ in pairs) / len(pairs),
                    "mean_mu_degraded": sum(b for _, b in pairs) / len(pairs),
                }
            )
        rows.append(
            {
                "defect": defect,
                "severity": "all",
                **_proportion(pooled_wins, len(keys) * len(config.severities)),
                "mean_mu_clean": sum(mu[(p, c, "clean", 0.0)] for p, c in keys) / len(keys),
                "mean_mu_degraded": sum(mu[(p, c, defect, s)] for p, c in keys for s in config.severities)
                / (len(keys) * len(config.severities)),
            }
        )
        ordered = [
            _wins(mu[(p, c, defect, s)], mu[(p, c, defect, t)])
            for p, c in keys
            for s, t in combinations(config.severities, 2)
        ]
        ordering.append({"defect": defect, **_proportion(sum(ordered), len(ordered))})
        for photo in photos:
            wins_photo = [
                _wins(mu[(photo, c, "clean", 0.0)], mu[(photo, c, defect, s)])
                for p, c in keys
                if p == photo
                for s in config.severities
            ]
            per_photo.append(
                {"photo": photo, "defect": defect, **_proportion(sum(wins_photo), len(wins_photo))}
            )
    return {"rows": rows, "ordering": ordering, "per_photo": per_photo}


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"bench transfer: {message}", file=sys.stderr, flush=True)


def run(config: TransferBenchConfig) -> dict[str, Any]:
    """Score every photograph's crops clean and degraded; returns the report (also written by
    :func:`report`)."""
    from zreward_deploy.bench.common import environment, torch_threads
    from zreward_deploy.imagefile import load_image_file
    from zreward_deploy.scoring import Scorer

    paths, skipped = folder_photos(config.photos) if config.photos else bundled_photos()
    with torch_threads(config.threads):
        scorer = Scorer.from_pretrained(config.model, max_batch_size=config.batch_size)
        size = scorer.config.image_size
        dimension = scorer.dimension_names([config.dimension])  # an unknown name is refused here
        images, keys, used = [], [], []
        for index, path in enumerate(paths):
            try:
                photo = load_image_file(path).convert("RGB")
            except ZRewardInputError as exc:  # one bad file is reported; the others are measured
                skipped.append({"photo": str(path), "reason": exc.reason})
                _say(f"skipped {path}: {exc.reason}")
                continue
            if min(photo.size) < size:
                reason = f"{photo.size[0]}x{photo.size[1]} is smaller than the model's {size} px"
                skipped.append({"photo": str(path), "reason": reason})
                _say(f"skipped {path}: {reason}")
                continue
            name = path.name
            used.append({"photo": name, "path": str(path), "width": photo.size[0], "height": photo.size[1]})
            for c, clean in enumerate(photo_crops(photo, config.crops, size, config.seed, name)):
                images.append(clean)
                keys.append((name, c, "clean", 0.0))
                for d, defect in enumerate(config.defects):
                    for s, severity in enumerate(config.severities):
                        seed = [config.seed, zlib.crc32(name.encode()), c, d, s]
                        images.append(degrade(clean, defect, severity, seed))
                        keys.append((name, c, defect, severity))
            _say(f"[{index + 1}/{len(paths)}] {name}: {config.crops} crops")
        if not used:
            where = config.photos or "the installed packages (scikit-image, matplotlib)"
            raise ZRewardInputError("--photos", f"no usable photograph in {where}: {skipped}")
        done = [0, 0]  # images scored, the last tenth reported

        def tick(n: int) -> None:
            done[0] += n
            if done[0] * 10 // len(images) > done[1] or done[0] == len(images):
                done[1] = done[0] * 10 // len(images)
                _say(f"scored {done[0]}/{len(images)} images")

        result = scorer.score(images, config.prompt, dimensions=dimension, progress=tick)
    mu = {key: float(m) for key, m in zip(keys, result.mean[:, 0].tolist(), strict=True)}
    return {
        "bench": "transfer",
        "model": config.model,
        "dimension": dimension[0],
        "untrained_dimension": bool(result.untrained),
        "image_size": size,
        "defects_applied": "at the model's image size, after the crop is resized (module docstring)",
        "config": asdict(config),
        "photos": used,
        "skipped": skipped,
        "n_crops": len([k for k in keys if k[2] == "clean"]),
        **summarize(mu, config, [u["photo"] for u in used]),
        "env": environment(),
    }


def markdown(result: dict[str, Any]) -> str:
    """The report's tables (pairwise accuracy per defect and severity; severity ordering)."""
    head = "| defect | severity | n | P(μ clean > μ degraded) | 95 % CI | mean μ clean | mean μ degraded |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['defect']} | {r['severity']} | {r['n']} | {r['accuracy']:.3f} | "
            f"[{r['ci95_low']:.2f}, {r['ci95_high']:.2f}] | {r['mean_mu_clean']:.2f} | "
            f"{r['mean_mu_degraded']:.2f} |"
        )
    lines += ["", "| defect | severity pairs | P(μ milder > μ stronger) | 95 % CI |", "|---|---|---|---|"]
    for r in result["ordering"]:
        if r["n"]:
            lines.append(
                f"| {r['defect']} | {r['n']} | {r['accuracy']:.3f} | [{r['ci95_low']:.2f}, {r['ci95_high']:.2f}] |"
            )
        else:
            lines.append(f"| {r['defect']} | 0 | n/a (one severity) | |")
    return "\n".join(lines)


def report(config: TransferBenchConfig) -> dict[str, Any]:
    """Run the benchmark, write ``bench_transfer.json`` and ``bench_transfer.md`` under ``config.out``
    (each to a temporary name, then renamed) and print the tables."""
    result = run(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(result)
    photos = ", ".join(p["photo"] for p in result["photos"])
    text = (
        f"Model {result['model']}, dimension {result['dimension']}, {result['n_crops']} crops of "
        f"{len(result['photos'])} photographs ({photos}) at {result['image_size']} px.\n\n{table}\n"
    )
    for name, content in (
        ("bench_transfer.json", json.dumps(result, indent=2) + "\n"),
        ("bench_transfer.md", text),
    ):
        temporary = out / f".{name}.tmp"
        temporary.write_text(content)
        os.replace(temporary, out / name)
    print(text)
    _say(f"wrote {out / 'bench_transfer.json'} and {out / 'bench_transfer.md'}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from zreward_deploy.cliargs import config_from_argv

    return report(config_from_argv(TransferBenchConfig, argv, __doc__))


if __name__ == "__main__":
    main()
