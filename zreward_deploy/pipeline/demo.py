"""``zreward demo``: the whole pipeline on the embedded default, on a CPU, with nothing downloaded.

Stages (each prints a ``[i/n]`` line on stderr; the trainers add their progress bars on a terminal):

1. synthetic data (:mod:`zreward_deploy.data.synth`): 64 px scenes with graded defects and simulated
   annotators, split train / val / test; natural-style scenes (textured, lit) unless
   ``synth_style="flat"`` (``zreward demo --synth-style flat``: the flat-coloured scenes of earlier
   reports, for comparisons such as the transfer to photographs in docs/results.md);
2. SFT teacher: the teacher chain's warm start. GDSO starts from its weights, as in docs/results.md: the
   paper starts RL from a pretrained model that already scores above chance, and a random
   initialisation gives RL nothing to amplify;
3. GDSO teacher (reasons, then reads the score);
4. RISD student: the teacher's score distributions are cached once, then a fresh one-pass student learns
   them by forward KL;
5. test-split metrics of the teachers and the student, and the teacher-vs-student scoring cost;
6. ONNX export of the student (fp32), validated at untraced shapes;
7. parity: torch vs ONNX Runtime on the test split (``bench/bench_parity.py``);
8. latency: torch vs ONNX Runtime per batch size (``bench/bench_latency.py``);
9. example images (one scene: clean, noisy, blurred, pixelated) scored by the exported student;
10. ``report.md`` with the tables and plots (``zreward_deploy/pipeline/report.py``) and ``summary.json``.

The training budgets are those of ``bench/run_results.py`` for one seed (the docs/results.md table), on
1000 prompts instead of 300, with the SFT teacher trained for 500 steps and the RISD student for 1000
instead of 250 each (``Budget.demo``): with the table's budgets the student loses most of its teacher's
sense of blur on photographs (docs/results.md, "Transfer to photographs"). The measured durations of
the demo and of ``quick=True`` (every stage with tiny budgets; the numbers are then meaningless) are in
the README, with the machine. Everything is on the ``realism`` dimension, which these tiny models learn
in minutes (docs/results.md explains why). A failing stage raises :class:`DemoStageError` naming it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependencyError

STAGES: tuple[tuple[str, str], ...] = (
    ("data", "synthetic data"),
    ("sft_teacher", "SFT teacher (warm start: GDSO starts from its weights)"),
    ("gdso_teacher", "GDSO teacher"),
    ("risd_student", "RISD student (distilled from the GDSO teacher)"),
    ("evaluate", "test-split metrics and teacher-vs-student scoring cost"),
    ("export", "ONNX export of the student (fp32, validated)"),
    ("parity", "parity: torch vs ONNX Runtime on the test split"),
    ("latency", "latency: torch vs ONNX Runtime"),
    ("examples", "example images scored by the exported student"),
    ("report", "report.md"),
)

# What the demo imports beyond the core dependencies: module -> (package, extra).
REQUIRED_MODULES: dict[str, tuple[str, str]] = {
    "accelerate": ("accelerate", "train"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
}

# The example images: one scene, each defect at a severity that costs realism about 1.5 points.
EXAMPLE_DEFECTS: dict[str, dict[str, float]] = {
    "clean": {},
    "noisy": {"noise": 0.75},
    "blurred": {"blur": 0.75},
    "pixelated": {"pixelate": 1.0},
}


class DemoStageError(RuntimeError):
    """A stage of the demo failed. ``stage`` is its title; the original error is ``__cause__``."""

    def __init__(self, number: int, total: int, stage: str, folder: Path | None, cause: BaseException):
        self.stage = stage
        where = f"; its files are in {folder}" if folder is not None else ""
        super().__init__(f"stage {number}/{total} ({stage}) failed: {type(cause).__name__}: {cause}{where}")


@dataclass(frozen=True)
class DemoSettings:
    """Budgets of one demo run: the training budget (``training.recipes.Budget``) and the benchmark settings."""

    budget: Any = field(
        metadata={"help": "training and cost budget (zreward_deploy.training.recipes.Budget)"}
    )
    latency_batches: tuple[int, ...] = field(default=(1, 8, 32), metadata={"help": "batch sizes timed"})
    latency_warmup: int = field(default=3, metadata={"help": "untimed runs per backend and batch size"})
    latency_repeats: int = field(default=20, metadata={"help": "timed runs per backend and batch size"})
    parity_batch: int = field(default=8, metadata={"help": "images per scoring call in the parity check"})

    @classmethod
    def for_run(cls, quick: bool) -> DemoSettings:
        from ..training.recipes import Budget

        if quick:
            return cls(Budget.quick(), latency_batches=(1, 8), latency_warmup=1, latency_repeats=3)
        # docs/results.md's budgets (one seed) with more data and longer SFT and RISD (docs/demo-report.md)
        return cls(Budget.demo())


def missing_dependencies() -> dict[str, str]:
    """Packages the demo needs that are not installed: package -> extra."""
    return {
        package: extra
        for module, (package, extra) in REQUIRED_MODULES.items()
        if importlib.util.find_spec(module) is None
    }


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


class _Stages:
    """Runs the numbered stages: prints a line per stage, times it, names it when it fails."""

    def __init__(self, records: list[dict[str, Any]]):
        self.records = records

    @contextmanager
    def stage(self, key: str, folder: Path | None = None) -> Iterator[None]:
        keys = [k for k, _ in STAGES]
        number, title = keys.index(key) + 1, dict(STAGES)[key]
        _say(f"[{number}/{len(STAGES)}] {title} ...")
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:
            raise DemoStageError(number, len(STAGES), title, folder, exc) from exc
        wall = time.perf_counter() - start
        self.records.append({"stage": key, "title": title, "wall_s": wall})
        _say(f"[{number}/{len(STAGES)}] {title}: done in {wall:.1f} s")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_demo(
    out_dir: str | os.PathLike = "zreward-demo",
    seed: int = 0,
    quick: bool = False,
    synth_style: str = "natural",
) -> dict[str, Any]:
    """Run the whole pipeline into ``out_dir`` (files of an earlier demo there are replaced; the command
    ``zreward demo`` refuses a non-empty folder unless ``--overwrite``, then deletes it first).
    ``synth_style`` is the synthetic scenes' style (:data:`zreward_deploy.data.synth_config.STYLES`).

    Returns:
        The summary (also written to ``out_dir/summary.json``): every number of the report, the
        stage wall times, the paths, and the example images' scores (``examples``).

    Raises:
        MissingDependencyError: an extra the demo needs is not installed (checked before any work).
        DemoStageError: a stage failed; the message names it.
    """
    from ..data.synth_config import STYLES
    from ..errors import ZRewardInputError

    if synth_style not in STYLES:
        raise ZRewardInputError("synth_style", f"must be one of {', '.join(STYLES)}, got {synth_style!r}")
    missing = missing_dependencies()
    if missing:
        extras = ",".join(sorted(set(missing.values())))
        raise MissingDependencyError(", ".join(missing), extras, "zreward demo")
    from ..bench.common import environment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = DemoSettings.for_run(quick)
    b = dataclasses.replace(settings.budget, seeds=(seed,))
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "out": str(out),
        "seed": seed,
        "quick": quick,
        "synth_style": synth_style,
        "budget": dataclasses.asdict(b),
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "budget"},
        "plots": has_matplotlib(),
        "env": environment(),
        "load_avg_start": os.getloadavg(),
        "stages": [],
    }
    stages = _Stages(summary["stages"])
    data = out / "data"
    with stages.stage("data", data):
        summary["data"] = synthesize(data, b, seed, synth_style)
    summary["runs"] = {}
    with stages.stage("sft_teacher", out / "sft_teacher"):
        summary["runs"]["sft_teacher"] = train_sft_teacher(b, data, out / "sft_teacher", seed)
    with stages.stage("gdso_teacher", out / "gdso_teacher"):
        init = Path(summary["runs"]["sft_teacher"]["model_dir"])
        summary["runs"]["gdso_teacher"] = train_gdso_teacher(b, data, out / "gdso_teacher", init, seed)
    with stages.stage("risd_student", out / "risd_student"):
        teacher = Path(summary["runs"]["gdso_teacher"]["model_dir"])
        summary["runs"]["risd_student"] = train_risd_student(b, data, out / "risd_student", teacher, seed)
    student = Path(summary["runs"]["risd_student"]["model_dir"])
    with stages.stage("evaluate", out / "eval"):
        summary["evaluation"] = evaluate_models(summary["runs"], b, data, out / "eval", seed)
    with stages.stage("export", out / "onnx"):
        summary["export"] = export_student(student, out / "onnx" / "fp32")
    with stages.stage("parity", out / "parity"):
        summary["parity"] = run_parity(student, data, out, settings)
    with stages.stage("latency", out / "latency"):
        summary["latency"] = run_latency(student, out, settings, plot=summary["plots"])
    with stages.stage("examples", out / "examples"):
        summary["examples"] = score_examples(
            Path(summary["export"]["dir"]), out / "examples", b, seed, synth_style
        )
    with stages.stage("report", out):
        summary["load_avg_end"] = os.getloadavg()
        summary["total_s"] = time.perf_counter() - started
        from .report import write_report

        summary["report"] = str(write_report(summary, out))
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


def synthesize(data: Path, b: Any, seed: int, style: str = "natural") -> dict[str, Any]:
    """Write the synthetic dataset (the results table's split fractions) in scene ``style``; returns its
    sizes."""
    from ..data.synth import SynthConfig, generate_dataset

    cfg = SynthConfig(
        prompts=b.prompts, images_per_prompt=4, seed=seed, val_fraction=0.05, test_fraction=0.25, style=style
    )
    counts = generate_dataset(data, cfg, overwrite=True)
    return {"dir": str(data), "config": dataclasses.asdict(cfg), "records": counts}


def _logging(steps: int) -> dict[str, Any]:
    # progress bars on (the trainers show them on a terminal); about 50 points per training curve
    return {"progress": True, "log_every": max(1, steps // 50)}


def _run_record(result: Any, cfg: Any) -> dict[str, Any]:
    return {
        "dir": str(result.output_dir),
        "model_dir": str(result.model_dir),
        "steps": result.steps,
        "config": cfg.to_dict(),
    }


def train_sft_teacher(b: Any, data: Path, out: Path, seed: int) -> dict[str, Any]:
    """SFT of a fresh ``b.preset`` (seed ``seed + 1000``): the GDSO teacher's starting weights."""
    from ..training.recipes import TEACHER_SEED_OFFSET, student_kwargs
    from ..training.sft import SFTConfig, train_sft

    kwargs = student_kwargs(b, data, out, seed + TEACHER_SEED_OFFSET)
    cfg = SFTConfig(**{**kwargs, **_logging(b.sft_steps)})
    return _run_record(train_sft(cfg), cfg)


def train_gdso_teacher(b: Any, data: Path, out: Path, init: Path, seed: int) -> dict[str, Any]:
    """GDSO from the SFT teacher's weights ``init``."""
    from ..training.gdso import GDSOConfig, train_gdso
    from ..training.recipes import rl_kwargs

    cfg = GDSOConfig(**{**rl_kwargs(b, data, out, init, seed), **_logging(b.rl_steps)})
    return _run_record(train_gdso(cfg), cfg)


def train_risd_student(b: Any, data: Path, out: Path, teacher: Path, seed: int) -> dict[str, Any]:
    """RISD of a fresh ``b.preset`` from the GDSO teacher's cached score distributions."""
    from ..training.recipes import risd_kwargs
    from ..training.risd import RISDConfig, train_risd

    cfg = RISDConfig(
        **{**risd_kwargs(b, data, out, teacher, seed), **_logging(b.risd_steps)},
        rebuild_cache=True,  # a rerun in the same folder retrains the teacher: never reuse its targets
    )
    return _run_record(train_risd(cfg), cfg)


# name -> (run key, read after reasoning)
EVALUATED: dict[str, tuple[str, bool]] = {
    "SFT teacher (warm start)": ("sft_teacher", False),
    "GDSO teacher": ("gdso_teacher", True),
    "RISD student": ("risd_student", False),
}


def _scorer(model_dir: str, reasoning: bool, b: Any, seed: int) -> Any:
    if not reasoning:
        from ..scoring import Scorer

        return Scorer.from_pretrained(model_dir)
    from ..scoring import ReasoningScorer
    from ..training.models import load_model

    model, processor = load_model(model_dir)
    return ReasoningScorer(
        model, processor, num_samples=b.eval_samples, max_new_tokens=b.reasoning_tokens, seed=seed
    )


def evaluate_models(runs: dict[str, Any], b: Any, data: Path, out: Path, seed: int) -> dict[str, Any]:
    """Test-split metrics on ``b.dimension`` of each model in :data:`EVALUATED` (per-item scores and,
    with matplotlib, the student's plots under ``out``), and the teacher-vs-student scoring cost."""
    from ..bench.run_results import METRICS, scoring_cost
    from ..data import load_split
    from ..evaluation import evaluate, metrics_json, write_per_item, write_plots

    records = [
        dataclasses.replace(
            r,
            scores={b.dimension: r.scores[b.dimension]},
            annotations={b.dimension: r.annotations[b.dimension]},
        )
        for r in load_split(data, "test")
    ]
    rows, plots = [], []
    for name, (key, reasoning) in EVALUATED.items():
        start = time.perf_counter()
        ev = evaluate(_scorer(runs[key]["model_dir"], reasoning, b, seed), records, progress=True)
        (out / key).mkdir(parents=True, exist_ok=True)
        (out / key / "metrics.json").write_text(metrics_json(ev.metrics, model=name) + "\n")
        write_per_item(ev, out / key / "per_item.jsonl")
        rows.append(
            {
                "model": name,
                "run": key,
                "reasoning": reasoning,
                **{k: float(ev.metrics[k]) for k in METRICS},
                "n_items": int(ev.metrics["n_items"]),
                "n_pairs": int(ev.metrics["n_pairs"]),
                "n_margin_pairs": int(ev.metrics["n_margin_pairs"]),
                "eval_s": time.perf_counter() - start,
            }
        )
        if key == "risd_student" and has_matplotlib():
            plots = [str(p) for p in write_plots(ev, out / key / "plots")]
    cost_runs = {
        "GDSO teacher": {"dir": runs["gdso_teacher"]["model_dir"], "reasoning": True},
        "RISD student": {"dir": runs["risd_student"]["model_dir"], "reasoning": False},
    }
    cost = scoring_cost(cost_runs, b, data)
    return {"dimension": b.dimension, "split": "test", "rows": rows, "cost": cost, "student_plots": plots}


def export_student(student: Path, onnx_dir: Path) -> dict[str, Any]:
    """fp32 ONNX export of the student, validated in ONNX Runtime (raises on a mismatch)."""
    from ..export.onnx import OnnxExportConfig, export_onnx

    meta = export_onnx(student, onnx_dir, OnnxExportConfig(dtype="fp32", overwrite=True))
    return {
        "dir": str(onnx_dir),
        "onnx_bytes": (onnx_dir / meta["onnx_file"]).stat().st_size,
        "opset": meta["opset"],
        "dimensions": meta["dimensions"],
        "validation": meta["validation"],
    }


def run_parity(student: Path, data: Path, out: Path, settings: DemoSettings) -> dict[str, Any]:
    """``bench_parity`` of the fp32 export against torch on the test split (all exported dimensions)."""
    from ..bench.bench_parity import ParityBenchConfig, report

    cfg = ParityBenchConfig(
        model=str(student),
        data=str(data),
        split="test",
        backends=("onnx-fp32",),
        batch_size=settings.parity_batch,
        exports=str(out / "onnx"),  # the export of stage 6, reused (same weights and settings)
        out=str(out / "parity"),
    )
    with redirect_stdout(sys.stderr):  # the benchmark prints its table; the demo's stdout is its result
        rows = [{k: v for k, v in r.items() if k != "env"} for r in report(cfg)]
    return {"rows": rows, "passed": all(r["passed"] for r in rows), "dir": cfg.out}


def run_latency(student: Path, out: Path, settings: DemoSettings, plot: bool) -> dict[str, Any]:
    """``bench_latency`` of torch and the fp32 export at the settings' batch sizes."""
    from ..bench.bench_latency import LatencyBenchConfig, report

    cfg = LatencyBenchConfig(
        model=str(student),
        backends=("torch", "onnx-fp32"),
        batch_sizes=settings.latency_batches,
        warmup=settings.latency_warmup,
        repeats=settings.latency_repeats,
        exports=str(out / "onnx"),
        out=str(out / "latency"),
        plot=plot,
    )
    with redirect_stdout(sys.stderr):  # as in run_parity
        rows = [{k: v for k, v in r.items() if k != "env"} for r in report(cfg)]
    png = Path(cfg.out) / "bench_latency.png"
    return {"rows": rows, "dir": cfg.out, "plot": str(png) if plot and png.exists() else None}


def score_examples(onnx_dir: Path, out: Path, b: Any, seed: int, style: str = "natural") -> dict[str, Any]:
    """Draw one synthetic scene (in ``style``) clean and with each :data:`EXAMPLE_DEFECTS` defect, save the
    PNGs under ``out`` and score them on ``b.dimension`` with the exported student (ONNX Runtime)."""
    from ..data.synth import SynthConfig, draw_prompt, ground_truth, render_image
    from ..scoring import load_scorer

    spec = draw_prompt(np.random.default_rng([seed, 17]))
    out.mkdir(parents=True, exist_ok=True)
    paths, truths = [], []
    for name, defects in EXAMPLE_DEFECTS.items():
        # the same generator state for every image: only the defect differs
        image = render_image(
            spec.objects, defects, SynthConfig().image_size, np.random.default_rng([seed, 18]), style=style
        )
        paths.append(out / f"{name}.png")
        image.save(paths[-1])
        truths.append(ground_truth(defects, "none")[b.dimension])
    scorer = load_scorer(onnx_dir, backend="onnx")
    result = scorer.score([str(p) for p in paths], spec.text, dimensions=[b.dimension])
    records = result.to_records()
    for rec, name, path, truth in zip(records, EXAMPLE_DEFECTS, paths, truths, strict=True):
        rec.update(name=name, image=str(path), prompt=spec.text, defects=EXAMPLE_DEFECTS[name], truth=truth)
    return {"dimension": b.dimension, "values": list(result.values), "records": records}
