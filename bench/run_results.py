"""The docs/results.md table: every method trained on the synthetic benchmark with fixed seeds and
budgets, evaluated on its test split, plus the teacher-vs-student scoring cost on the same hardware.

    python -m zreward_deploy.bench.run_results --out runs/results          # the table (544 s on 2 idle cores: docs/results.md)
    python -m zreward_deploy.bench.run_results --out runs/quick --quick    # smoke test (tiny budgets)

Writes ``results.json`` (every number, budgets, wall times, environment), ``results.md`` (the tables),
and each run's folder (config.yaml, metrics.jsonl, model/).

Rows (docs/results.md explains the choices):

* teachers (score read after reasoning, :class:`~zreward_deploy.scoring.ReasoningScorer`):
  zero-shot (the untrained preset), GRPO and GDSO (from the SFT teacher's weights: our stand-in for the
  paper's pretrained base model, which already scores above chance zero-shot; a random init gives RL
  nothing to amplify);
* SFT teacher: CE on the score token with no reasoning (scored in one pass, the paper's SFT row);
* students (fresh ``tiny-64``): SFT, RISD (from the GDSO teacher's cached targets; one pass), OPD
  (distilling the GDSO teacher on-policy; it reasons at inference).

Teacher and student are the same architecture (``tiny-64``) at this scale; they differ in template and
training, so the SFT teacher and SFT student rows are one recipe with two seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from zreward_deploy.training.recipes import (
    TEACHER_SEED_OFFSET,
    Budget,
    opd_kwargs,
    risd_kwargs,
    rl_kwargs,
    student_kwargs,
)

from .common import environment, measure_until_stable, summarize, time_interleaved

METRICS = ("hpa", "margin_hpa", "plcc", "srcc")
# Runs per block of the stability rule's spread test for the scoring cost (bench/common.py StabilityRule;
# the two scorers alternate run by run, so a block is simply 5 consecutive runs of one scorer).
COST_BLOCK = 5


def train_all(b: Budget, data: Path, out: Path, seed: int) -> dict[str, dict[str, Any]]:
    """Train every model of one seed; returns name -> {"dir", "reasoning", "train_s", "config"}.

    The students start from ``preset`` with seed ``seed``; the teacher chain from the same preset with
    seed ``seed + 1000`` (the zero-shot teacher; SFT on it gives the SFT teacher, whose weights start
    GRPO and GDSO). Rollouts, data order and evaluation sampling are seeded with ``seed``."""
    from zreward_deploy.presets import build_preset
    from zreward_deploy.training.gdso import GDSOConfig, train_gdso
    from zreward_deploy.training.grpo import GRPOConfig, train_grpo
    from zreward_deploy.training.opd import OPDConfig, train_opd
    from zreward_deploy.training.risd import RISDConfig, train_risd
    from zreward_deploy.training.sft import SFTConfig, train_sft

    teacher_seed = seed + TEACHER_SEED_OFFSET
    runs: dict[str, dict[str, Any]] = {}

    def timed(name: str, reasoning: bool, fn: Any, cfg: Any) -> Path:
        print(f"[results] training {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = fn(cfg)
        runs[name] = {
            "dir": str(result.model_dir),
            "reasoning": reasoning,
            "train_s": time.perf_counter() - start,
        }
        runs[name]["config"] = cfg.to_dict()
        return result.model_dir

    zero = out / "zero_shot" / "model"
    model, processor = build_preset(b.preset, seed=teacher_seed)
    model.save_pretrained(zero)
    processor.save_pretrained(zero)
    runs["zero-shot teacher"] = {"dir": str(zero), "reasoning": True, "train_s": 0.0, "config": {}}

    teacher_cfg = SFTConfig(**student_kwargs(b, data, out / "sft_teacher", teacher_seed))
    sft_teacher = timed("SFT teacher", False, train_sft, teacher_cfg)
    # the RL starting point itself, read the way the GRPO/GDSO teachers are read (after reasoning)
    runs["RL init: SFT teacher read after reasoning"] = {
        **runs["SFT teacher"],
        "reasoning": True,
        "train_s": 0.0,
    }
    grpo_cfg = GRPOConfig(**rl_kwargs(b, data, out / "grpo", sft_teacher, seed))
    timed("GRPO teacher", True, train_grpo, grpo_cfg)
    gdso = timed(
        "GDSO teacher", True, train_gdso, GDSOConfig(**rl_kwargs(b, data, out / "gdso", sft_teacher, seed))
    )
    timed("SFT student", False, train_sft, SFTConfig(**student_kwargs(b, data, out / "sft_student", seed)))
    timed("RISD student", False, train_risd, RISDConfig(**risd_kwargs(b, data, out / "risd", gdso, seed)))
    timed("OPD student", True, train_opd, OPDConfig(**opd_kwargs(b, data, out / "opd", gdso, seed)))
    return runs


def _scorer(run: dict[str, Any], b: Budget, seed: int = 0) -> Any:
    from zreward_deploy.scoring import ReasoningScorer, Scorer

    if run["reasoning"]:
        from zreward_deploy.training.models import load_model

        model, processor = load_model(run["dir"])
        return ReasoningScorer(
            model, processor, num_samples=b.eval_samples, max_new_tokens=b.reasoning_tokens, seed=seed
        )
    return Scorer.from_pretrained(run["dir"])


def evaluate_all(runs: dict[str, dict[str, Any]], b: Budget, data: Path, seed: int) -> list[dict[str, Any]]:
    """Test-split metrics of every model on the benchmark dimension."""
    from zreward_deploy.data import load_split
    from zreward_deploy.evaluation import evaluate

    records = [
        dataclasses.replace(
            r,
            scores={b.dimension: r.scores[b.dimension]},
            annotations={b.dimension: r.annotations[b.dimension]},
        )
        for r in load_split(data, "test")
    ]
    rows = []
    for name, run in runs.items():
        print(f"[results] evaluating {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        ev = evaluate(_scorer(run, b, seed), records)
        rows.append(
            {
                "seed": seed,
                "model": name,
                "reasoning": run["reasoning"],
                **{k: float(ev.metrics[k]) for k in METRICS},
                "n_items": int(ev.metrics["n_items"]),
                "n_pairs": int(ev.metrics["n_pairs"]),
                "n_margin_pairs": int(ev.metrics["n_margin_pairs"]),
                "train_s": run["train_s"],
                "eval_s": time.perf_counter() - start,
            }
        )
    return rows


def scoring_cost(runs: dict[str, dict[str, Any]], b: Budget, data: Path) -> list[dict[str, Any]]:
    """Teacher (reasoning, then the score) vs student (one pass) on the same images, same process,
    runs interleaved; tokens generated and wall ms per image, for one dimension and for all four."""
    from zreward_deploy.data import load_split

    records = load_split(data, "test")[: b.cost_images]
    images, prompts = [str(r.image_path) for r in records], [r.prompt for r in records]
    teacher = _scorer(runs["GDSO teacher"], b)
    student = _scorer(runs["RISD student"], b)
    rows = []
    for dims in ([b.dimension], None):
        label = b.dimension if dims else "all 4"
        tokens_before = [0]

        def measure(d: list[str] | None = dims, box: list[int] = tokens_before) -> dict[str, list[float]]:
            box[0] = teacher.tokens_generated  # count the kept try's tokens only
            return time_interleaved(
                {
                    "teacher": lambda: teacher.score(images, prompts, dimensions=d),
                    "student": lambda: student.score(images, prompts, dimensions=d),
                },
                warmup=1,
                repeats=b.cost_repeats,
            )

        # both scorers run in turn, one at a time, on torch's threads: that is what the benchmark loads
        measured = measure_until_stable(measure, COST_BLOCK, torch.get_num_threads())
        calls = 1 + b.cost_repeats
        teacher_tokens = (teacher.tokens_generated - tokens_before[0]) / calls / len(images)
        n_dims = 1 if dims else 4
        for who, tokens in (("teacher (GDSO, reasons)", teacher_tokens), ("student (RISD, one pass)", 0.0)):
            key = "teacher" if who.startswith("teacher") else "student"
            s = summarize(measured.times[key])
            verdict = measured.stability[key]
            rows.append(
                {
                    "scorer": who,
                    "dimensions": label,
                    "reasoning_tokens_per_image": tokens,
                    # the student emits no token: it reads one position per dimension
                    "output_positions_per_image": n_dims if key == "student" else tokens + n_dims,
                    "ms_per_image": s["median_ms"] / len(images),
                    "batch": len(images),
                    "repeats": s["repeats"],
                    "unreliable": not verdict.reliable,
                    "unreliable_reason": verdict.reason,
                    "tries": measured.tries,
                    "load_avg_1min_before": measured.load_before,
                    "load_avg_1min_after": measured.load_after,
                }
            )
    return rows


def summarize_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: mean, min and max of each metric over the seeds (models in first-seen order)."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        row: dict[str, Any] = {"model": name, "reasoning": mine[0]["reasoning"], "seeds": len(mine)}
        for k in (*METRICS, "train_s"):
            values = [r[k] for r in mine]
            row[k] = statistics.fmean(values)
            row[f"{k}_min"], row[f"{k}_max"] = min(values), max(values)
        row["n_pairs"], row["n_margin_pairs"] = mine[0]["n_pairs"], mine[0]["n_margin_pairs"]
        out.append(row)
    return out


def markdown(
    summary: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    cost: list[dict[str, Any]],
    b: Budget,
    env: dict[str, Any],
) -> str:
    lines = [
        f"Dimension: {b.dimension}; test split; budgets: {json.dumps(dataclasses.asdict(b))}",
        "",
        "Mean over seeds, [min, max] beside it:",
        "",
        "| model | reasoning at inference | HPA | margin-HPA | PLCC | SRCC | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        cells = [f"{r[k]:.3f} [{r[k + '_min']:.3f}, {r[k + '_max']:.3f}]" for k in METRICS]
        lines.append(
            f"| {r['model']} | {'yes' if r['reasoning'] else 'no'} | "
            + " | ".join(cells)
            + f" | {r['train_s']:.0f} |"
        )
    pairs = summary[0]
    lines += [
        "",
        f"Pairs: {pairs['n_pairs']} (margin: {pairs['n_margin_pairs']}) over {len(b.seeds)} seed(s) {list(b.seeds)}.",
        "",
        "Per seed:",
        "",
        "| seed | model | HPA | margin-HPA | PLCC | SRCC |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['model']} | {r['hpa']:.3f} | {r['margin_hpa']:.3f} | {r['plcc']:.3f} | {r['srcc']:.3f} |"
        )
    lines += [
        "",
        "| scorer | dimensions | reasoning tokens / image | output positions / image | ms / image (median) | batch |",
        "|---|---|---|---|---|---|",
    ]
    for c in cost:
        lines.append(
            f"| {c['scorer']} | {c['dimensions']} | {c['reasoning_tokens_per_image']:.1f} | "
            f"{c['output_positions_per_image']:.1f} | {c['ms_per_image']:.2f}"
            + (f" (unreliable: {c['unreliable_reason']})" if c.get("unreliable") else "")
            + f" | {c['batch']} |"
        )
    lines += ["", f"Environment: {json.dumps(env)}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/results", help="output folder")
    parser.add_argument(
        "--quick", action="store_true", help="tiny budgets (a smoke test, numbers meaningless)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    b = Budget.quick() if args.quick else Budget()
    out = Path(args.out)
    data = out / "data"
    if not (data / "test.jsonl").is_file():
        from zreward_deploy.data.synth import SynthConfig, generate_dataset

        generate_dataset(
            data,
            # the flat scenes the docs/results.md table was measured on (the default is now natural)
            SynthConfig(
                prompts=b.prompts,
                images_per_prompt=4,
                seed=0,
                val_fraction=0.05,
                test_fraction=0.25,
                style="flat",
            ),
        )
    started = time.perf_counter()
    rows, all_runs = [], {}
    for seed in b.seeds:
        runs = train_all(b, data, out / f"seed_{seed}", seed)
        rows += evaluate_all(runs, b, data, seed)
        all_runs[seed] = runs
    cost = scoring_cost(all_runs[b.seeds[0]], b, data)
    summary = summarize_seeds(rows)
    env = environment()
    total = time.perf_counter() - started
    report = {
        "budget": dataclasses.asdict(b),
        "summary": summary,
        "rows": rows,
        "cost": cost,
        "runs": all_runs,
        "env": env,
        "total_s": total,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(summary, rows, cost, b, env) + f"\nTotal wall time: {total:.0f} s\n"
    (out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
