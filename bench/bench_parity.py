"""Accuracy parity of the exported runtimes against torch eager on a dataset split (docs/design.md §9, §12).

For each backend variant (``onnx-fp32``, ``onnx-fp16``, ``tensorrt-fp32``, ``tensorrt-fp16``) the same split is
scored through the same ``Scorer.score`` path (same preprocessing, same micro-batches) as the torch
reference, and per backend one row reports:

  max_abs_dprobs    max |q_backend − q_torch| over items, dimensions and score values
  max_abs_dmean     max |μ_backend − μ_torch| (score units)
  mean_kl           mean over (item, dimension) of KL(q_torch ‖ q_backend), nats
  hpa_torch, hpa    human preference accuracy of torch and of the backend (same pairs)
  agreement         fraction of same-prompt pairs on which the backend decides like torch:
                    sign(μ_a − μ_b) equal (a tie is its own decision)
  passed            against the thresholds: fp32 |Δprobs| ≤ 1e-4 and agreement = 100 %;
                    fp16 |Δprobs| ≤ 1e-2 and agreement ≥ 99 % (configurable)

Without ``--model`` a preset is built (random weights: probabilities near uniform, so the decisions of
``agreement`` rest on small μ differences, which makes the fp16 check stricter than on a trained model).
Without ``--data`` a synthetic dataset (``zreward data synth``) is written.

Run:  zreward bench parity --out runs/bench_parity   (or python -m zreward_deploy.bench.bench_parity)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKEND_VARIANTS = ("onnx-fp32", "onnx-fp16", "tensorrt-fp32", "tensorrt-fp16")


@dataclass
class ParityBenchConfig:
    """Settings of ``zreward bench parity``."""

    model: str | None = field(default=None, metadata={"help": "model directory (default: build --preset)"})
    preset: str = field(default="bench-small", metadata={"help": "preset to build when --model is not given"})
    text_model: str = field(default="qwen2", metadata={"help": "preset LM family: qwen2, qwen3 or llama"})
    data: str | None = field(default=None, metadata={"help": "dataset folder (default: synthesize one)"})
    synth_prompts: int = field(default=40, metadata={"help": "prompts of the synthesized dataset"})
    split: str = field(default="test", metadata={"help": "split to score: train, val or test"})
    limit: int | None = field(default=None, metadata={"help": "score only the first N records"})
    backends: tuple[str, ...] = field(
        default=("onnx-fp32", "onnx-fp16"),
        metadata={"help": f"variants to compare: {', '.join(BACKEND_VARIANTS)}"},
    )
    batch_size: int = field(default=8, metadata={"help": "images per scoring call"})
    exporter: str = field(
        default="auto",
        metadata={"help": "ONNX exporter: optimum, torch, or auto (optimum where installed, else torch)"},
    )
    device: str = field(default="cpu", metadata={"help": "device of torch and ONNX Runtime (cpu or cuda)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)"})
    exports: str | None = field(
        default=None, metadata={"help": "folder of ONNX exports to reuse or create (default: <out>/exports)"}
    )
    out: str = field(default="runs/bench_parity", metadata={"help": "output folder for JSONL/CSV/Markdown"})
    fp32_max_dprobs: float = field(default=1e-4, metadata={"help": "fp32 pass: max |Δprobs| at most this"})
    fp32_min_agreement: float = field(
        default=1.0, metadata={"help": "fp32 pass: pair agreement at least this"}
    )
    fp16_max_dprobs: float = field(default=1e-2, metadata={"help": "fp16 pass: max |Δprobs| at most this"})
    fp16_min_agreement: float = field(
        default=0.99, metadata={"help": "fp16 pass: pair agreement at least this"}
    )

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKEND_VARIANTS]
        if unknown or not self.backends:
            raise ValueError(f"unknown backend variants {unknown}; choose from {BACKEND_VARIANTS}")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {self.split!r}")
        if self.batch_size < 1 or self.synth_prompts < 2 or (self.limit is not None and self.limit < 2):
            raise ValueError("batch_size >= 1, synth_prompts >= 2 and limit >= 2 are required")


def prepare_model(model: str | None, preset: str, text_model: str, out: Path) -> Path:
    """The model directory: ``model`` as given, or a preset saved under ``out/model`` (built once)."""
    if model is not None:
        return Path(model)
    path = out / "model"
    if not (path / "config.json").exists():
        from zreward_deploy.presets import build_preset

        m, processor = build_preset(preset, text_model_type=text_model, seed=0)
        m.save_pretrained(path)
        processor.save_pretrained(path)
    return path


def prepare_export(model_dir: Path, exports: Path, variant: str, exporter: str = "auto") -> Path:
    """The ONNX export a variant runs from (``<exports>/<dtype>``; reused when it matches the weights and
    the settings, ``exporter`` included)."""
    from zreward_deploy.export.onnx import OnnxExportConfig, ensure_onnx_export

    dtype = variant.split("-")[1]
    return ensure_onnx_export(model_dir, exports / dtype, OnnxExportConfig(dtype=dtype, exporter=exporter))


def load_variant(
    model_dir: Path, exports: Path, variant: str, device: str, batch_size: int, exporter: str = "auto"
) -> Any:
    """A scorer for ``torch`` or a backend variant (exporting / building what it needs)."""
    from zreward_deploy.scoring import load_scorer

    if variant == "torch":
        return load_scorer(model_dir, backend="torch", device=device, max_batch_size=batch_size)
    backend = variant.split("-")[0]
    if backend == "tensorrt":
        from zreward_deploy.export.tensorrt import import_tensorrt

        import_tensorrt()  # fail with the install hint before exporting anything
    onnx_dir = prepare_export(model_dir, exports, variant, exporter)
    if backend == "onnx":
        return load_scorer(onnx_dir, backend="onnx", device=device, max_batch_size=batch_size)
    return load_scorer(onnx_dir, backend="tensorrt", device="cuda", max_batch_size=batch_size)


def parity_row(reference: Any, other: Any) -> dict[str, Any]:
    """Compare two :class:`~zreward_deploy.evaluation.Evaluation` of the same records.

    Returns max |Δprobs|, max |Δmean|, mean KL(q_ref ‖ q_other), both HPAs, and the pair agreement
    (fraction of ``reference.pairs`` on which sign(μ_a − μ_b) is the same).
    """
    import numpy as np

    from zreward_deploy.metrics import kl_divergence

    ok = np.isfinite(reference.mean).all(1) & np.isfinite(other.mean).all(1)
    p_ref, p_other = reference.probs[ok], other.probs[ok]
    k = p_ref.shape[-1]
    # renormalise in float64: fp32 rows sum to 1 only to ~1e-7, which can make a tiny KL negative
    rows_ref, rows_other = p_ref.reshape(-1, k), p_other.reshape(-1, k)
    kl = kl_divergence(
        rows_ref / rows_ref.sum(-1, keepdims=True), rows_other / rows_other.sum(-1, keepdims=True)
    )
    pairs = reference.pairs
    a, b = pairs[:, 0], pairs[:, 1]
    m_ref, m_other = reference.entry_mean, other.entry_mean
    finite = np.isfinite(m_ref[a] - m_ref[b]) & np.isfinite(m_other[a] - m_other[b])
    same = np.sign(m_ref[a] - m_ref[b]) == np.sign(m_other[a] - m_other[b])
    return {
        "n_items": int(ok.sum()),
        "n_pairs": int(finite.sum()),
        "max_abs_dprobs": float(np.abs(p_ref - p_other).max()) if ok.any() else float("nan"),
        "max_abs_dmean": float(np.abs(reference.mean[ok] - other.mean[ok]).max())
        if ok.any()
        else float("nan"),
        "mean_kl": float(kl.mean()) if len(kl) else float("nan"),
        "hpa_torch": float(reference.metrics["hpa"]),
        "hpa": float(other.metrics["hpa"]),
        "agreement": float(same[finite].mean()) if finite.any() else float("nan"),
        "min_abs_torch_margin": float(np.abs(m_ref[a] - m_ref[b])[finite].min())
        if finite.any()
        else float("nan"),
    }


def run(config: ParityBenchConfig) -> list[dict[str, Any]]:
    """Score the split with torch and every variant; one row per variant."""
    from zreward_deploy.bench.common import torch_threads
    from zreward_deploy.cliargs import check_device

    check_device(config.device)  # one line for CUDA on a CPU-only build, before building anything
    with torch_threads(config.threads):  # the benchmark's thread setting ends with it
        return _run(config)


def _run(config: ParityBenchConfig) -> list[dict[str, Any]]:
    from zreward_deploy.bench.common import environment, progress
    from zreward_deploy.data import load_split
    from zreward_deploy.evaluation import evaluate

    out = Path(config.out)
    exports = Path(config.exports) if config.exports else out / "exports"
    progress(f"parity: preparing the model ({config.model or 'preset ' + config.preset}) ...")
    model_dir = prepare_model(config.model, config.preset, config.text_model, out)
    data = Path(config.data) if config.data else out / "data"
    if config.data is None and not (data / f"{config.split}.jsonl").exists():
        from zreward_deploy.data.synth import SynthConfig, generate_dataset

        progress(f"parity: synthesizing a dataset of {config.synth_prompts} prompts under {data} ...")
        generate_dataset(data, SynthConfig(prompts=config.synth_prompts, seed=0), overwrite=True)

    reference_scorer = load_variant(model_dir, exports, "torch", config.device, config.batch_size)
    records = load_split(
        data,
        config.split,
        scale=reference_scorer.config.get_score_scale(),
        rubric=reference_scorer.config.get_rubric(),
    )
    if config.limit is not None:
        records = records[: config.limit]
    progress(f"parity: scoring {len(records)} {config.split} records with torch ...")
    reference = evaluate(reference_scorer, records, batch_size=config.batch_size)
    env = environment()
    rows = []
    for variant in config.backends:
        progress(f"parity: {variant}: exporting if needed, loading, scoring {len(records)} records ...")
        scorer = load_variant(model_dir, exports, variant, config.device, config.batch_size, config.exporter)
        ev = evaluate(scorer, records, batch_size=config.batch_size)
        exported_by = scorer.metadata.get("exporter")  # the ONNX graph's exporter (TensorRT builds on it)
        row = {"bench": "parity", "backend": variant, "exporter": exported_by, **parity_row(reference, ev)}
        fp16 = variant.endswith("fp16")
        max_dprobs = config.fp16_max_dprobs if fp16 else config.fp32_max_dprobs
        min_agreement = config.fp16_min_agreement if fp16 else config.fp32_min_agreement
        row.update(
            threshold_dprobs=max_dprobs,
            threshold_agreement=min_agreement,
            passed=bool(row["max_abs_dprobs"] <= max_dprobs and row["agreement"] >= min_agreement),
            model=str(model_dir),
            data=str(data),
            split=config.split,
            device=config.device,
            batch_size=config.batch_size,
            env=env,
        )
        rows.append(row)
        verdict = "passed" if row["passed"] else "FAILED"
        progress(f"parity: {variant} ... done, max |Δprobs| {row['max_abs_dprobs']:.2e}, {verdict}")
    return rows


COLUMNS = (
    "backend",
    "exporter",
    "n_items",
    "n_pairs",
    "max_abs_dprobs",
    "max_abs_dmean",
    "mean_kl",
    "hpa_torch",
    "hpa",
    "agreement",
    "passed",
)


def report(config: ParityBenchConfig) -> list[dict[str, Any]]:
    """:func:`run`, then write ``bench_parity.{jsonl,csv,md}`` under ``config.out`` and print the table."""
    from zreward_deploy.bench.common import publish

    rows = run(config)
    publish(rows, config.out, "bench_parity", COLUMNS, env=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from zreward_deploy.cliargs import config_from_argv

    # list flags: 1,8,32 (or 1 8 32, as before)
    config = config_from_argv(ParityBenchConfig, argv, __doc__, space_separated=True)
    return report(config)


if __name__ == "__main__":
    main()
