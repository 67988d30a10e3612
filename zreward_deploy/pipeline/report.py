"""``report.md`` of ``zreward demo`` (zreward_deploy/pipeline/demo.py): tables from the run's summary, the plots
embedded by relative links, and a training-curve plot drawn from each run's ``metrics.jsonl``.

Without matplotlib (the ``plots`` extra) the report is written all the same and says which plots are
missing and how to get them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

# (run key, metric in metrics.jsonl, panel title)
CURVES: tuple[tuple[str, str, str], ...] = (
    ("sft_teacher", "loss", "SFT teacher: CE to the labels"),
    ("gdso_teacher", "loss", "GDSO teacher: loss"),
    ("gdso_teacher", "reward_mean", "GDSO teacher: mean rollout reward"),
    ("risd_student", "loss", "RISD student: KL(q_T ‖ q_student)"),
)


# How bench_latency timed the backends (its row's "timing"), in the report's words.
TIMING = {
    "blocks": "the backends taking turns by blocks of runs in one process, each block after a short idle "
    "pause (so that one runtime's spinning threads are off the cores while the other is timed)",
    "interleaved": "backends interleaved run by run in one process",
}


def plot_training_curves(runs: dict[str, Any], path: Path) -> Path:
    """One panel per :data:`CURVES` entry: the metric against the training step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from zreward_deploy.training.metrics_log import read_metrics

    fig = Figure(figsize=(12, 3.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # an Agg canvas of its own: no pyplot state, no global backend switch
    for ax, (key, metric, title) in zip(fig.subplots(1, len(CURVES)), CURVES, strict=True):
        rows = [r for r in read_metrics(runs[key]["dir"]) if metric in r]
        ax.plot([r["step"] for r in rows], [r[metric] for r in rows], marker=".", lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _rel(path: str | os.PathLike, out: Path) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def _f(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec)


def write_report(summary: dict[str, Any], out: Path) -> Path:
    """Write ``out/report.md`` from the summary of :func:`zreward_deploy.pipeline.demo.run_demo`."""
    curves = None
    if summary["plots"]:
        curves = plot_training_curves(summary["runs"], out / "plots" / "training_curves.png")
    sections = [
        _header(summary),
        _environment(summary),
        _stages(summary),
        _data(summary),
        _metrics(summary, out),
        _curves(curves, out),
        _export(summary),
        _parity(summary),
        _latency(summary, out),
        _examples(summary, out),
        _files(summary, out),
    ]
    path = out / "report.md"
    path.write_text("\n\n".join(s.rstrip() for s in sections) + "\n", encoding="utf-8")
    return path


def _header(s: dict[str, Any]) -> str:
    b = s["budget"]
    quick = (
        "\n\n**`--quick` run: every stage with tiny budgets; the numbers below only show that the stages "
        "ran, they measure nothing.**"
        if s["quick"]
        else ""
    )
    flat = s.get("synth_style", "natural") == "flat"
    style = " --synth-style flat" if flat else ""
    return f"""# zreward demo report

The whole pipeline on the embedded default, on this machine: synthetic data → SFT teacher (warm start)
→ GDSO teacher → RISD student → ONNX export → parity and latency. Produced by
`zreward demo --out {s["out"]} --seed {s["seed"]}{style}{" --quick" if s["quick"] else ""}`.

**Read these numbers for what they are.** The models are `{b["preset"]}`, a ~200k-parameter preset
trained from scratch for a few minutes on a CPU, the data are synthetic 64 px scenes with simulated
annotators, and the teacher "reasons" for at most {b["reasoning_tokens"]} tokens. The numbers show that
every stage of the pipeline works end to end and what its outputs look like; they are not the paper's
results and say nothing about how the method does at 9B/27B scale (see docs/results.md).{quick}"""


def _environment(s: dict[str, Any]) -> str:
    env = s["env"]
    cells = [
        ("CPU", env.get("cpu")),
        ("GPU", env.get("gpu") or "none (the demo runs on the CPU)"),
        ("torch threads", env.get("cpu_threads")),
        ("Python", env.get("python")),
        ("torch", env.get("torch")),
        ("transformers", env.get("transformers")),
        ("onnxruntime", env.get("onnxruntime")),
        ("git", env.get("git_sha")),
        ("1-min load average", _load_note(s["load_avg_start"][0], s["load_avg_end"][0], env["cpu_threads"])),
    ]
    lines = ["## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in cells]
    return "\n".join(lines)


def _load_note(start: float, end: float, threads: int) -> str:
    cores = os.cpu_count() or 1
    return (
        f"{start:.2f} at the start, {end:.2f} at the end, on {cores} CPUs. The demo itself keeps up to "
        f"{threads} threads busy; a load well above that (or above ~1 at the start, unless an earlier "
        "job just ended) means that other jobs shared the CPU and the times are inflated"
    )


def _stages(s: dict[str, Any]) -> str:
    lines = ["## Stages", "", "| # | stage | wall time (s) |", "|---|---|---|"]
    for i, st in enumerate(s["stages"], 1):
        lines.append(f"| {i} | {st['title']} | {st['wall_s']:.1f} |")
    lines += ["", f"Total until the report: **{s['total_s']:.0f} s** ({s['total_s'] / 60:.1f} min)."]
    b = s["budget"]
    lines += [
        "",
        f"Budgets ({'tiny, --quick' if s['quick'] else 'Budget.demo: docs/results.md, one seed, with more prompts and steps'}): "
        f"SFT teacher {b['sft_steps']} and RISD student {b.get('risd_steps', b['sft_steps'])} steps × "
        f"{b['student_batch']} items; GDSO {b['rl_steps']} steps × {b['rl_pairs']} pairs, G = {b['group_size']} "
        f"traces per side, ≤ {b['reasoning_tokens']} reasoning tokens. The SFT teacher starts from `{b['preset']}` "
        f"with seed {s['seed']} + 1000; GDSO starts from the SFT teacher's weights, because the paper starts "
        "RL from a pretrained model that already scores above chance, and a random initialisation gives RL "
        "nothing to amplify (docs/results.md); the RISD student starts from a fresh "
        f"`{b['preset']}` (seed {s['seed']}) and learns the GDSO teacher's cached score distributions.",
    ]
    return "\n".join(lines)


def _data(s: dict[str, Any]) -> str:
    d, n = s["data"]["config"], s["data"]["records"]
    scenes = {
        "natural": "natural-style scenes (textured, lit surfaces, soft shadows, a sensor noise floor)",
        "flat": "flat-style scenes (flat-coloured shapes)",
    }[d.get("style", "flat")]
    return (
        "## Data\n\n"
        f"`zreward data synth`: {d['prompts']} prompts × {d['images_per_prompt']} {scenes} of "
        f"{d['image_size']} px, {d['annotators']} simulated annotators, seed {d['seed']}: "
        f"**{n['train']} train / {n['val']} val / {n['test']} test** records (a prompt's images stay in one "
        f"split). Trained and evaluated on the **{s['budget']['dimension']}** dimension, which these tiny "
        "models learn in minutes (blur, noise and pixelation lower it); the other dimensions need more "
        "model and more steps than a demo has."
    )


def _metrics(s: dict[str, Any], out: Path) -> str:
    ev = s["evaluation"]
    lines = [
        f"## Test-split metrics ({ev['dimension']})",
        "",
        "| model | read-out | HPA | margin-HPA | PLCC | SRCC | eval s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ev["rows"]:
        how = "after reasoning (1 sampled trace)" if r["reasoning"] else "one pass"
        cells = " | ".join(_f(r[k]) for k in ("hpa", "margin_hpa", "plcc", "srcc"))
        lines.append(f"| {r['model']} | {how} | {cells} | {r['eval_s']:.1f} |")
    r0 = ev["rows"][0]
    lines += [
        "",
        f"{r0['n_items']} test records; HPA over {r0['n_pairs']} same-prompt pairs with different human "
        f"scores, margin-HPA over the {r0['n_margin_pairs']} whose scores differ by more than the margin; "
        "PLCC / SRCC of μ against ŝ (trimmed mean of the annotations). 0.5 is chance for HPA. "
        "Differences of ~0.02 between rows are within the seed spread of docs/results.md.",
        "",
        "Teacher vs student scoring cost (same process, calls interleaved, median):",
        "",
        "| scorer | dimensions | reasoning tokens / image | output positions / image | ms / image | batch |",
        "|---|---|---|---|---|---|",
    ]
    for c in ev["cost"]:
        lines.append(
            f"| {c['scorer']} | {c['dimensions']} | {c['reasoning_tokens_per_image']:.1f} | "
            f"{c['output_positions_per_image']:.1f} | {c['ms_per_image']:.2f} | {c['batch']} |"
        )
    ratios = _cost_ratios(ev["cost"])
    if ratios:
        lines += [
            "",
            "Per image, the teacher is " + " and ".join(ratios) + " slower than the one-pass student.",
        ]
    plots = {Path(p).name: p for p in ev.get("student_plots", [])}
    if "distributions.png" in plots:
        lines += [
            "",
            "The student's predicted distributions against the annotators' (test items, best to worst EMD):",
            "",
            f"![student distributions]({_rel(plots['distributions.png'], out)})",
        ]
    return "\n".join(lines)


def _cost_ratios(cost: list[dict[str, Any]]) -> list[str]:
    """Teacher ms / student ms per dimension set; ``n/a (unstable: ...)`` where either timing was judged
    unreliable (bench/common.py StabilityRule): a ratio of contention is not a result."""
    from zreward_deploy.bench.common import unstable_cell

    by = {(c["dimensions"], c["scorer"].split()[0]): c for c in cost}
    out = []
    for dims in dict.fromkeys(c["dimensions"] for c in cost):
        t, st = by.get((dims, "teacher")), by.get((dims, "student"))
        if not (t and st and t["ms_per_image"] and st["ms_per_image"]):
            continue
        bad = [
            f"{who}: {c['unreliable_reason']}"
            for who, c in (("teacher", t), ("student", st))
            if c.get("unreliable")
        ]
        ratio = unstable_cell("; ".join(bad)) if bad else f"{t['ms_per_image'] / st['ms_per_image']:.1f}×"
        out.append(f"{ratio} ({dims})")
    return out


def _curves(path: Path | None, out: Path) -> str:
    if path is None:
        return (
            '## Training curves\n\nNot drawn: matplotlib is not installed (`pip install -e ".[plots]"`). '
            "The logged values are in each run's `metrics.jsonl`."
        )
    return (
        "## Training curves\n\nFrom each run's `metrics.jsonl`. The GDSO loss is a policy-gradient "
        "surrogate plus the CE and score-gap terms; it is not expected to fall steadily.\n\n"
        f"![training curves]({_rel(path, out)})"
    )


def _export(s: dict[str, Any]) -> str:
    e = s["export"]
    lines = [
        "## ONNX export",
        "",
        f"The student exported to `{e['dir']}` (fp32, opset {e['opset']}, {e['onnx_bytes'] / 1e6:.2f} MB, "
        f"dimensions {', '.join(e['dimensions'])}), then validated in ONNX Runtime against torch at shapes "
        "the trace never saw:",
        "",
        "| case | batch | text length | max abs diff (probs) | tolerance (probs) | passed |",
        "|---|---|---|---|---|---|",
    ]
    for c in (e["validation"] or {}).get("cases", []):
        lines.append(
            f"| {c['name']} | {c['batch_size']} | {c['sequence_length']} | "
            f"{_f(c['max_abs_diff'].get('probs'), '.2e')} | {_f(c['tolerance'].get('probs'), '.0e')} | "
            f"{'yes' if c['passed'] else 'NO'} |"
        )
    return "\n".join(lines)


def _parity(s: dict[str, Any]) -> str:
    from zreward_deploy.bench.bench_parity import COLUMNS
    from zreward_deploy.bench.common import markdown_table

    p = s["parity"]
    r = p["rows"][0]
    verdict = "**PASSED**" if p["passed"] else "**FAILED**"
    return (
        "## Parity: torch vs ONNX Runtime (test split)\n\n"
        f"{verdict}: fp32 passes with max |Δprobs| ≤ {r['threshold_dprobs']:g} and the same decision on "
        f"{r['threshold_agreement']:.0%} of the same-prompt pairs.\n\n"
        + markdown_table(p["rows"], COLUMNS)
        + "\n\nEvery output of the graph is compared, on all four rubric dimensions, so `hpa_torch` / `hpa` "
        "here are pooled over the four (three of which the demo does not train) and are lower than the "
        "realism-only HPA above; what matters is that torch and ONNX Runtime agree. `agreement`: the "
        "fraction of pairs on which sign(μ_a − μ_b) is the same; `mean_kl`: KL(q_torch ‖ q_onnx) in nats."
    )


def _latency(s: dict[str, Any], out: Path) -> str:
    from zreward_deploy.bench.bench_latency import markdown, stability_note

    lat = s["latency"]
    rows = lat["rows"]
    loads = [
        r[k] for r in rows for k in ("load_avg_1min_before", "load_avg_1min_after") if r.get(k) is not None
    ]
    load = f"{min(loads):.2f} to {max(loads):.2f}" if loads else "not available"
    r0 = rows[0]
    text = (
        "## Latency: torch vs ONNX Runtime\n\n"
        f"One scorer forward on an already preprocessed batch (all {r0['dimensions']} dimensions), "
        f"{r0['repeats']} timed runs after warm-up per cell, {TIMING.get(r0.get('timing'), 'in one process')}; "
        f"torch with {r0['torch_threads']} threads. 1-min load average during the runs: "
        f"{load} on {os.cpu_count()} CPUs.\n\n" + markdown(rows)
    )
    ratios = _latency_ratios(rows)
    if ratios:
        text += "\n\nONNX Runtime against torch (torch p50 / ONNX Runtime p50): " + "; ".join(ratios) + "."
    note = stability_note(rows)
    if note:
        text += "\n\n" + note
    if lat.get("plot"):
        text += f"\n\n![latency]({_rel(lat['plot'], out)})"
    else:
        text += '\n\nNo plot: matplotlib is not installed (`pip install -e ".[plots]"`).'
    return text


def _latency_ratios(rows: list[dict[str, Any]]) -> list[str]:
    """``batch 1: 2.2× faster`` per batch size and non-torch backend, or ``n/a (unstable: ...)`` where the
    benchmark computed no speed-up because the backend's or torch's timings were unreliable."""
    from zreward_deploy.bench.common import unstable_cell

    backends = [b for b in dict.fromkeys(r["backend"] for r in rows) if b != "torch"]
    out = []
    for r in rows:
        if r["backend"] == "torch":
            continue
        who = f"{r['backend']} " if len(backends) > 1 else ""
        x = r.get("speedup_vs_torch")
        if x is None:
            cell = unstable_cell(r["speedup_note"]) if r.get("speedup_note") else "n/a"
        else:
            cell = f"{x:.2f}× faster" if x >= 1 else f"{1 / x:.2f}× slower"
        out.append(f"{who}batch {r['batch']}: {cell}")
    return out


def _examples(s: dict[str, Any], out: Path) -> str:
    ex = s["examples"]
    values = [str(v) for v in next(iter(ex["records"][0]["dimensions"].values()))["probs"]]
    lines = [
        f"## What the deployed student says about a few images ({ex['dimension']})",
        "",
        f"One synthetic scene for the prompt “{ex['records'][0]['prompt']}”, clean and with one defect each, "
        "scored by the exported student through ONNX Runtime. “truth” is the generator's realism before "
        "annotator noise.",
        "",
        "| image | | truth | μ | std | " + " | ".join(f"q({v})" for v in values) + " |",
        "|---|---|---|---|---|" + "---|" * len(values),
    ]
    for rec in ex["records"]:
        d = rec["dimensions"][ex["dimension"]]
        probs = " | ".join(f"{p:.2f}" for p in d["probs"].values())
        lines.append(
            f"| {rec['name']} | ![{rec['name']}]({_rel(rec['image'], out)}) | {rec['truth']:.1f} | "
            f"{d['mean']:.2f} | {d['std']:.2f} | {probs} |"
        )
    return "\n".join(lines)


def _files(s: dict[str, Any], out: Path) -> str:
    entries = [
        ("data/", "the synthetic dataset (train/val/test.jsonl, images/)"),
        ("sft_teacher/, gdso_teacher/, risd_student/", "each run: config.yaml, metrics.jsonl, model/"),
        ("eval/", "per model: metrics.json, per_item.jsonl (and the student's plots)"),
        ("onnx/fp32/", "the exported student: model.onnx, zreward_onnx.json, tokenizer files"),
        ("parity/, latency/", "bench_parity.* and bench_latency.* (JSONL, CSV, Markdown, PNG)"),
        ("examples/", "the example images"),
        ("summary.json", "every number of this report"),
    ]
    lines = ["## Files", "", f"Under `{s['out']}`:", ""]
    lines += [f"- `{name}`: {what}" for name, what in entries]
    model, onnx = Path(s["out"]) / "risd_student" / "model", Path(s["out"]) / "onnx" / "fp32"
    lines += [
        "",
        "Score your own images with the student, in torch or through the export:",
        "",
        "```bash",
        f'zreward score --model {model.as_posix()} --image IMG.png --prompt "…" --dimensions realism',
        f'zreward score --model {onnx.as_posix()} --backend onnx --image IMG.png --prompt "…" --dimensions realism',
        "```",
    ]
    return "\n".join(lines)
