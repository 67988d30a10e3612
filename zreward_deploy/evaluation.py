"""Evaluation: run a scorer over a dataset split, compute the metrics, write per-item scores and plots.

Each (image, prompt) is scored once, for every dimension the split labels (one pass gives all), in
micro-batches. The human score ŝ of an (item, dimension) is the trimmed mean of its annotations where
they exist, else its ``scores`` entry (:meth:`Record.human_score` with ``source="auto"``, docs/design.md §7).
Annotations are placed on the model's K score values as two-hot histograms
(:meth:`ScoreScale.soft_target`), so half-point annotations on a five-value scale are represented
exactly in expectation. Items the scorer refuses (``errors="collect"``) are left out of the metrics and
counted in ``n_failed``.

Judgements without scores (a split's preference file, docs/data.md "Preference records") are evaluated
by :func:`evaluate_preferences`: preference HPA per dimension and pooled, "overall" judgements on the
reward R = Σ_d w_d μ_d over the whole rubric. :func:`evaluate` adds them under
``metrics["preferences"]``; the metrics of the scored records are computed exactly as without them.

The scorer is duck-typed: anything with ``score(images, prompts, dimensions=, errors="collect")``
returning an object with ``probs [B, D, K]``, ``mean``, ``std`` ``[B, D]``, ``reward [B]``,
``dimensions``, ``values``, ``errors``, and a ``config`` with ``get_score_scale()`` / ``get_rubric()``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import format_score
from .data.records import OVERALL, Preference, Record, build_pairs, overall_is_reward, preference_dimensions
from .errors import MissingDependencyError, UnknownDimensionError, ZRewardInputError
from .metrics import (
    emd,
    js_divergence,
    kl_divergence,
    metric_report,
    pair_preferences,
    preference_report,
    reliability_bins,
)


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor on any device, in any dtype
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass
class Evaluation:
    """Scores of one split and everything computed from them.

    Attributes:
        records: the N evaluated records.
        dimensions: the D scored dimensions (rubric order).
        values: ``[K]`` the model's score values.
        mean, std: ``[N, D]`` predicted μ and std (NaN for failed items).
        probs: ``[N, D, K]`` predicted q.
        reward: ``[N]`` scalar reward.
        errors: item index -> error message for items the scorer refused.
        entry_item, entry_dim: ``[E]`` the (item index, dimension index) of each labelled entry.
        human: ``[E]`` human ŝ; human_hist: ``[E, K]`` annotator histograms (NaN rows: no annotations).
        pairs: ``[P, 2]`` same-prompt, same-dimension entry pairs with different ŝ.
        metrics: the report of :func:`zreward_deploy.metrics.metric_report`, plus ``n_records``,
            ``n_failed`` and ``dimensions``.
    """

    records: list[Record]
    dimensions: list[str]
    values: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    probs: np.ndarray
    reward: np.ndarray
    errors: dict[int, str]
    entry_item: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    entry_dim: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    human: np.ndarray = field(default_factory=lambda: np.zeros(0))
    human_hist: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    metrics: dict = field(default_factory=dict)

    @property
    def entry_mean(self) -> np.ndarray:
        """``[E]`` predicted μ of each entry."""
        return self.mean[self.entry_item, self.entry_dim]

    @property
    def entry_probs(self) -> np.ndarray:
        """``[E, K]`` predicted q of each entry."""
        return self.probs[self.entry_item, self.entry_dim]

    def item_rows(self) -> list[dict[str, Any]]:
        """One JSON-friendly dict per record: ids, reward, and per dimension the prediction, ŝ and (with
        annotations) KL / JSD / EMD of q against the annotator histogram."""
        per_entry: dict[tuple[int, int], int] = {
            (int(i), int(d)): e for e, (i, d) in enumerate(zip(self.entry_item, self.entry_dim, strict=True))
        }
        q, hist = self.entry_probs, self.human_hist
        annotated = np.isfinite(hist).all(-1) & np.isfinite(q).all(-1)
        kl, jsd, dist = (np.full(len(q), math.nan) for _ in range(3))
        if annotated.any():
            kl[annotated] = kl_divergence(hist[annotated], q[annotated])
            jsd[annotated] = js_divergence(hist[annotated], q[annotated])
            dist[annotated] = emd(hist[annotated], q[annotated], self.values)
        rows = []
        for i, r in enumerate(self.records):
            row: dict[str, Any] = {"id": r.id, "prompt_id": r.prompt_id, "split": r.split, "image": r.image}
            if i in self.errors:
                rows.append({**row, "error": self.errors[i]})
                continue
            row["reward"] = _finite_or_none(self.reward[i])
            dims = {}
            for d, name in enumerate(self.dimensions):
                e = per_entry.get((i, d))
                item = {
                    "mean": _finite_or_none(self.mean[i, d]),
                    "std": _finite_or_none(self.std[i, d]),
                    "probs": {
                        format_score(v): _finite_or_none(p)
                        for v, p in zip(self.values, self.probs[i, d], strict=True)
                    },
                    "human": None if e is None else _finite_or_none(self.human[e]),
                }
                if e is not None and annotated[e]:
                    item.update(kl=float(kl[e]), jsd=float(jsd[e]), emd=float(dist[e]))
                dims[name] = item
            row["dimensions"] = dims
            rows.append(row)
        return rows


def _finite_or_none(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def split_dimensions(records: Sequence[Record], rubric_names: Sequence[str]) -> list[str]:
    """The dimensions any record labels, in rubric order; a dimension the rubric lacks raises
    :class:`UnknownDimensionError` naming it."""
    labelled = dict.fromkeys(d for r in records for d in r.dimensions)
    unknown = [d for d in labelled if d not in rubric_names]
    if unknown:
        raise UnknownDimensionError(
            unknown[0], f"the data labels it but the model's rubric has only {list(rubric_names)}"
        )
    return [d for d in rubric_names if d in labelled]


def score_records(
    scorer: Any,
    records: Sequence[Record],
    dimensions: Sequence[str],
    batch_size: int = 32,
    progress: bool = False,
) -> Evaluation:
    """Score every record once on ``dimensions`` in micro-batches of ``batch_size`` (a tqdm bar on stderr
    when ``progress``). Items the scorer refuses get NaN rows and an entry in ``errors``.

    Returns:
        An :class:`Evaluation` with the scores filled in (no entries, pairs or metrics yet).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    values = np.asarray(scorer.config.get_score_scale().values, dtype=np.float64)
    n, d, k = len(records), len(dimensions), len(values)
    mean, std = np.full((n, d), math.nan), np.full((n, d), math.nan)
    probs, reward = np.full((n, d, k), math.nan), np.full(n, math.nan)
    errors: dict[int, str] = {}
    with tqdm(total=n, disable=not progress, unit="img", desc="scoring", file=sys.stderr) as bar:
        for start in range(0, n, batch_size):
            chunk = records[start : start + batch_size]
            images, prompts = [str(r.image_path) for r in chunk], [r.prompt for r in chunk]
            res = scorer.score(images, prompts, dimensions=list(dimensions), errors="collect")
            order = [list(res.dimensions).index(name) for name in dimensions]  # ours, whatever the scorer's
            rows = slice(start, start + len(chunk))
            mean[rows], std[rows] = _numpy(res.mean)[:, order], _numpy(res.std)[:, order]
            probs[rows], reward[rows] = _numpy(res.probs)[:, order], _numpy(res.reward)
            for i, exc in (res.errors or {}).items():
                j = start + int(i)
                errors[j] = str(exc)
                mean[j] = std[j] = probs[j] = reward[j] = math.nan
            bar.update(len(chunk))
    return Evaluation(list(records), list(dimensions), values, mean, std, probs, reward, errors)


def _add_entries(ev: Evaluation, scale: Any) -> None:
    """Flatten labelled (item, dimension) entries, their ŝ and annotator histograms, and the pairs."""
    index: dict[tuple[int, str], int] = {}
    items, dims, human, annotations = [], [], [], []
    for i, record in enumerate(ev.records):
        for d, name in enumerate(ev.dimensions):
            s = record.human_score(name, "auto")
            if s is not None:
                index[(i, name)] = len(items)
                items.append(i)
                dims.append(d)
                human.append(s)
                annotations.append(record.annotations.get(name, ()))
    ev.entry_item, ev.entry_dim = np.asarray(items, np.int64), np.asarray(dims, np.int64)
    ev.human = np.asarray(human, np.float64)
    ev.human_hist = _histograms(annotations, scale)
    pairs = [
        (index[(p.a, p.dimension)], index[(p.b, p.dimension)]) for p in build_pairs(ev.records, ev.dimensions)
    ]
    ev.pairs = np.asarray(pairs, np.int64).reshape(-1, 2)


def _histograms(annotations: Sequence[Sequence[float]], scale: Any) -> np.ndarray:
    """Annotator histograms ``[E, K]`` on the scale's values: the mean of the annotations' two-hot targets
    (NaN rows where there are none). One ``soft_target`` call for all annotations together."""
    k = scale.num_scores
    out = np.full((len(annotations), k), math.nan)
    lengths = np.array([len(a) for a in annotations], dtype=np.int64)
    has = lengths > 0
    if has.any():
        flat = [float(v) for a in annotations for v in a]
        targets = scale.soft_target(flat).double().numpy()  # [T, K]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[has]
        out[has] = np.add.reduceat(targets, starts, axis=0) / lengths[has, None]
    return out


def judgement_means(
    mean: np.ndarray, dimensions: Sequence[str], dimension: str, rows: np.ndarray, rubric: Any
) -> np.ndarray:
    """μ of the records ``rows`` on a judgement's ``dimension`` from scores ``mean [N, D]`` over
    ``dimensions``: that column, or for ``"overall"`` the reward Σ_d w_d μ_d with the rubric's normalised
    weights over the whole rubric (NaN where a record failed)."""
    if dimension == OVERALL and overall_is_reward(rubric):
        columns = [list(dimensions).index(d) for d in rubric.names]
        weights = rubric.weights(rubric.names).double().numpy()
        return mean[rows][:, columns] @ weights
    return mean[rows, list(dimensions).index(dimension)]


def evaluate_preferences(
    scorer: Any,
    records: Sequence[Record],
    preferences: Sequence[Preference],
    batch_size: int = 32,
    progress: bool = False,
    scored: Evaluation | None = None,
) -> dict:
    """Preference HPA of ``scorer`` on judgements between ``records`` (:func:`~.metrics.preference_report`:
    pooled and per dimension, with the numbers of pairs and ties and a Wilson 95 % interval).

    Judgements naming a record that is not in ``records`` (e.g. cut by ``--limit``) are left out and
    counted in ``n_left_out``. The records judged are scored once on the dimensions the judgements need
    (:func:`preference_dimensions`), or taken from ``scored`` when it already holds them (the same
    records, every needed dimension). ``untrained_dimensions`` lists the judged dimensions the model's
    training record says were never trained ("overall" when any rubric dimension was not).
    """
    rubric = scorer.config.get_rubric()
    index = {r.id: i for i, r in enumerate(records)}
    kept = [p for p in preferences if p.a in index and p.b in index]
    needed = preference_dimensions(kept, rubric)
    judged = list(dict.fromkeys(i for p in kept for i in (index[p.a], index[p.b])))
    if scored is not None and scored.records == list(records) and set(needed) <= set(scored.dimensions):
        mean, dims, row_of = scored.mean, scored.dimensions, {i: i for i in judged}
    elif kept:
        ev = score_records(scorer, [records[i] for i in judged], needed, batch_size, progress)
        mean, dims, row_of = ev.mean, ev.dimensions, {i: k for k, i in enumerate(judged)}
    else:
        mean, dims, row_of = np.zeros((0, 0)), [], {}
    mu_a, mu_b = np.full(len(kept), math.nan), np.full(len(kept), math.nan)
    for dim in dict.fromkeys(p.dimension for p in kept):
        picks = [k for k, p in enumerate(kept) if p.dimension == dim]
        rows_a = np.array([row_of[index[kept[k].a]] for k in picks], dtype=np.int64)
        rows_b = np.array([row_of[index[kept[k].b]] for k in picks], dtype=np.int64)
        mu_a[picks] = judgement_means(mean, dims, dim, rows_a, rubric)
        mu_b[picks] = judgement_means(mean, dims, dim, rows_b, rubric)
    report = preference_report(mu_a, mu_b, [p.target for p in kept], [p.dimension for p in kept])
    trained = getattr(scorer.config, "trained_dimensions", lambda: None)()
    untrained = []
    if trained is not None:
        for dim in report["per_dimension"]:
            covers = rubric.names if dim == OVERALL and overall_is_reward(rubric) else [dim]
            if any(d not in trained for d in covers):
                untrained.append(dim)
    return {**report, "n_left_out": len(preferences) - len(kept), "untrained_dimensions": untrained}


def evaluate(
    scorer: Any,
    records: Sequence[Record],
    batch_size: int = 32,
    progress: bool = False,
    n_bins: int = 10,
    dimensions: Sequence[str] | None = None,
    preferences: Sequence[Preference] | None = None,
) -> Evaluation:
    """Score ``records`` with ``scorer`` and compute the metrics (pooled and per dimension).

    Args:
        scorer: a :class:`zreward_deploy.scoring.Scorer` or any object with the same interface.
        records: the records of one split (e.g. :func:`zreward_deploy.data.load_split`).
        batch_size: images per ``scorer.score`` call.
        progress: show a tqdm bar on stderr.
        n_bins: bins of the calibration error.
        dimensions: the dimensions to evaluate (each must be labelled in ``records`` or judged in
            ``preferences``). Default: the labelled dimensions the model was trained on (its training
            record), or every labelled one when the record names none of them.
            ``metrics["untrained_dimensions"]`` lists the evaluated dimensions the record says were never
            trained. Judgements on other rubric dimensions are left out; "overall" ones are kept.
        preferences: the split's judgements (:func:`zreward_deploy.data.load_preferences`), evaluated by
            :func:`evaluate_preferences` into ``metrics["preferences"]``. When the records label no
            dimension (a preference-only split), only the records judged are scored and the metrics hold
            no scored-record block.

    Returns:
        The :class:`Evaluation`; ``.metrics`` holds the report.
    """
    rubric = scorer.config.get_rubric()
    labelled = split_dimensions(records, rubric.names)
    trained = getattr(scorer.config, "trained_dimensions", lambda: None)()  # duck-typed configs: unknown
    prefs = list(preferences or ())
    if dimensions is not None:
        chosen = [d.name for d in rubric.select(list(dimensions))]
        judged = {p.dimension for p in prefs}
        unlabelled = [d for d in chosen if d not in labelled and d not in judged]
        if unlabelled:
            raise ZRewardInputError(unlabelled[0], f"is not labelled in these records; they label {labelled}")
        dims = [d for d in chosen if d in labelled]
        prefs = [
            p
            for p in prefs
            if p.dimension in chosen or (p.dimension == OVERALL and overall_is_reward(rubric))
        ]
    else:
        dims = [d for d in labelled if trained and d in trained] or labelled
    if prefs and not dims:  # a preference-only split: score the judged records for the judgements only
        by_id = {r.id: r for r in records}
        judged_ids = dict.fromkeys(i for p in prefs for i in (p.a, p.b) if i in by_id)
        judged_records = [by_id[i] for i in judged_ids]
        ev = score_records(scorer, judged_records, preference_dimensions(prefs, rubric), batch_size, progress)
        _add_entries(ev, scorer.config.get_score_scale())
        ev.metrics = {"n_records": len(ev.records), "n_failed": len(ev.errors), "dimensions": ev.dimensions}
        ev.metrics["preferences"] = evaluate_preferences(scorer, ev.records, prefs, batch_size, scored=ev)
        ev.metrics["preferences"]["n_left_out"] += len(preferences or ()) - len(prefs)
        return ev
    untrained = [] if trained is None else [d for d in dims if d not in trained]
    ev = score_records(scorer, records, dims, batch_size=batch_size, progress=progress)
    _add_entries(ev, scorer.config.get_score_scale())
    report = metric_report(
        ev.entry_mean,
        ev.human,
        ev.pairs,
        [ev.dimensions[d] for d in ev.entry_dim],
        pred_probs=ev.entry_probs,
        human_hist=ev.human_hist,
        values=ev.values,
        n_bins=n_bins,
    )
    ev.metrics = {
        "n_records": len(ev.records),
        "n_failed": len(ev.errors),
        "dimensions": ev.dimensions,
        "untrained_dimensions": untrained,
        **report,
    }
    if prefs:
        ev.metrics["preferences"] = evaluate_preferences(
            scorer, records, prefs, batch_size, progress, scored=ev
        )
        ev.metrics["preferences"]["n_left_out"] += len(preferences or ()) - len(prefs)
    return ev


# --------------------------------------------------------------------------------------------------
# Output: JSON, table, per-item JSONL
# --------------------------------------------------------------------------------------------------


def _json_safe(obj: Any) -> Any:
    """NaN and infinities -> ``None`` (strict JSON has no NaN), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def metrics_json(metrics: dict, **extra: Any) -> str:
    """The metrics as one strict-JSON object (undefined values are ``null``; see ``"undefined"``)."""
    return json.dumps(_json_safe({**extra, **metrics}), allow_nan=False)


def write_per_item(ev: Evaluation, path: str | os.PathLike) -> Path:
    """Write :meth:`Evaluation.item_rows` as JSONL to ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in ev.item_rows():
            f.write(json.dumps(_json_safe(row), allow_nan=False) + "\n")
    return path


_COLUMNS = (
    ("items", "n_items", "d"),
    ("pairs", "n_pairs", "d"),
    ("HPA", "hpa", "f"),
    ("mHPA", "margin_hpa", "f"),
    ("PLCC", "plcc", "f"),
    ("SRCC", "srcc", "f"),
    ("KRCC", "krcc", "f"),
    ("ECE", "ece", "f"),
    ("KL", "kl", "f"),
    ("JSD", "jsd", "f"),
    ("EMD", "emd", "f"),
    ("std q", "pred_std", "f"),
    ("std h", "human_std", "f"),
)


def format_table(metrics: dict) -> str:
    """A fixed-width table: one row per dimension and a pooled row, then what is undefined and why; then,
    with judgements (``metrics["preferences"]``), their table (:func:`format_preference_table`). A
    preference-only evaluation has only the latter."""
    tables = []
    if "n_items" in metrics:
        tables.append(_scored_table(metrics))
    if "preferences" in metrics:
        tables.append(format_preference_table(metrics["preferences"]))
    return "\n\n".join(tables) if tables else _scored_table(metrics)


def format_preference_table(report: dict) -> str:
    """The judgements' table: per dimension and pooled, the non-tie pairs, the ties, HPA and its Wilson
    95 % interval; then what is undefined and what was left out."""
    blocks = [*report.get("per_dimension", {}).items(), ("pooled", report)]
    width = max([len(name) for name, _ in blocks] + [11])
    header = f"{'preferences':<{width}} {'pairs':>6} {'ties':>6} {'HPA':>6}  95% CI"
    lines = [header, "-" * (len(header) + 10)]
    untrained = set(report.get("untrained_dimensions", ()))
    for name, block in blocks:
        hpa = block.get("hpa")
        lo, hi = block.get("hpa_ci95") or (None, None)
        if hpa is None or not math.isfinite(hpa):
            cells = f"{'n/a':>6}  n/a"
        else:
            cells = f"{hpa:>6.3f}  [{lo:.3f}, {hi:.3f}]"
        note = "  (untrained)" if name in untrained else ""
        lines.append(
            f"{name:<{width}} {block.get('n_pairs', 0):>6d} {block.get('n_ties', 0):>6d} {cells}{note}"
        )
    notes = []
    if report.get("n_unscored"):
        notes.append(f"{report['n_unscored']} judgement(s) have a side that could not be scored")
    if report.get("n_left_out"):
        notes.append(
            f"{report['n_left_out']} judgement(s) left out (a record outside the evaluated ones, or a "
            "dimension not selected)"
        )
    if untrained:
        notes.append(
            f"(untrained): the model's training record says {', '.join(sorted(untrained))} were never "
            "(fully) trained"
        )
    undefined = [
        f"  {name}.{metric}: {reason}"
        for name, block in blocks
        for metric, reason in block.get("undefined", {}).items()
    ]
    if undefined:
        notes += ["undefined (n/a):", *undefined]
    return "\n".join(lines + notes)


def _scored_table(metrics: dict) -> str:
    blocks = [*metrics.get("per_dimension", {}).items(), ("pooled", metrics)]
    width = max([len(name) for name, _ in blocks] + [9])
    header = f"{'dimension':<{width}} " + " ".join(f"{title:>6}" for title, _, _ in _COLUMNS)
    lines = [header, "-" * len(header)]
    untrained = set(metrics.get("untrained_dimensions", ()))
    for name, block in blocks:
        cells = []
        for _, key, kind in _COLUMNS:
            v = block.get(key)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                cells.append(f"{'n/a':>6}")
            else:
                cells.append(f"{v:>6d}" if kind == "d" else f"{v:>6.3f}")
        lines.append(f"{name:<{width}} " + " ".join(cells) + ("  (untrained)" if name in untrained else ""))
    undefined = [
        f"  {name}.{metric}: {reason}"
        for name, block in blocks
        for metric, reason in block.get("undefined", {}).items()
    ]
    if untrained:
        lines.append(
            f"(untrained): the model's training record says {', '.join(sorted(untrained))} were never "
            "trained; their metrics measure an untrained head"
            + (", and the pooled row includes them" if len(blocks) > 2 else "")
        )
    if metrics.get("n_failed"):
        lines.append(f"{metrics['n_failed']} item(s) could not be scored and are left out (see --per-item)")
    if undefined:
        lines += ["undefined (n/a):", *undefined]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("matplotlib", "plots", "eval plots") from None
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # an Agg canvas of its own: no pyplot state, no global backend switch
    return fig


def write_plots(ev: Evaluation, out_dir: str | os.PathLike, n_examples: int = 6) -> list[Path]:
    """Write PNGs to ``out_dir``: ``distributions.png`` (predicted q vs the human histogram for a few
    items, from best to worst EMD), ``reliability.png`` (pairwise-preference calibration),
    ``hpa_per_dimension.png`` and ``scores_scatter.png`` (μ vs ŝ per dimension). Needs matplotlib
    (the ``plots`` extra). Returns the paths written."""
    out = Path(out_dir)
    _figure(1, 1)  # fail on a missing matplotlib before creating any folder
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        _plot_distributions(ev, out / "distributions.png", n_examples),
        _plot_reliability(ev, out / "reliability.png"),
        _plot_hpa(ev, out / "hpa_per_dimension.png"),
        _plot_scatter(ev, out / "scores_scatter.png"),
    ]
    return paths


def _plot_distributions(ev: Evaluation, path: Path, n_examples: int) -> Path:
    q = ev.entry_probs
    ok = np.flatnonzero(np.isfinite(q).all(-1))
    annotated = ok[np.isfinite(ev.human_hist[ok]).all(-1)]
    if len(annotated):
        chosen_from = annotated
        dist = emd(ev.human_hist[annotated], q[annotated], ev.values)
    else:  # no annotations: compare with the human score, as a point mass on the scale
        chosen_from, dist = ok, np.abs(ev.entry_mean[ok] - ev.human[ok])
    order = chosen_from[np.argsort(dist, kind="stable")]
    picks = (
        order[np.unique(np.linspace(0, len(order) - 1, min(n_examples, len(order))).round().astype(int))]
        if len(order)
        else []
    )
    cols = 3
    rows = max(1, math.ceil(len(picks) / cols))
    fig = _figure(4.0 * cols, 2.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    x = np.arange(len(ev.values))
    for ax, e in zip(axes, picks, strict=False):
        hist = ev.human_hist[e]
        if np.isfinite(hist).all():
            ax.bar(x - 0.2, hist, width=0.4, label="annotators", color="#7a7a7a")
        else:
            ax.axvline(np.interp(ev.human[e], ev.values, x), color="#7a7a7a", lw=3, label="human score")
        ax.bar(x + 0.2, q[e], width=0.4, label="model q", color="#1f77b4")
        rec, name = ev.records[ev.entry_item[e]], ev.dimensions[ev.entry_dim[e]]
        ax.set_title(f"{rec.id} · {name}\nμ={ev.entry_mean[e]:.2f}  ŝ={ev.human[e]:.2f}", fontsize=9)
        ax.set_xticks(x, [format_score(v) for v in ev.values])
        ax.set_ylim(0, 1)
        ax.set_xlabel("score")
    for ax in axes[len(picks) :]:
        ax.axis("off")
    if len(picks):
        axes[0].legend(fontsize=8, loc="upper left")
    else:
        axes[0].text(0.5, 0.5, "no scored items", ha="center", va="center")
    fig.suptitle("Predicted vs human score distributions (best to worst EMD)")
    fig.savefig(path)
    return path


def _plot_reliability(ev: Evaluation, path: Path, n_bins: int = 10) -> Path:
    prob, outcome = pair_preferences(ev.entry_probs, ev.human, ev.pairs)
    fig = _figure(5.5, 6.0)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], ls="--", color="#999999", label="perfectly calibrated")
    if len(prob):
        bins = reliability_bins(prob, outcome, n_bins)
        centres = (bins.edges[:-1] + bins.edges[1:]) / 2
        used = bins.count > 0
        top.bar(
            centres[used],
            bins.frac_positive[used],
            width=1 / n_bins,
            edgecolor="k",
            alpha=0.7,
            label="human agreement",
        )
        top.plot(bins.mean_prob[used], bins.frac_positive[used], "o-", color="#d62728", label="bin mean")
        bottom.bar(centres, bins.count, width=1 / n_bins, edgecolor="k", color="#7a7a7a")
    else:
        top.text(0.5, 0.5, "no non-tied pairs", ha="center", va="center")
    ece = ev.metrics.get("ece", math.nan)
    ece_text = f"{ece:.3f}" if math.isfinite(ece) else "n/a"
    top.set_title(
        f"Pairwise preference calibration\nECE {ece_text} · {len(prob) // 2} pairs, each in both orders"
    )
    top.set_ylabel("fraction where humans prefer a")
    top.set_ylim(0, 1)
    top.legend(fontsize=8, loc="upper left")
    bottom.set_xlabel("predicted P(a ≻ b) from the two distributions")
    bottom.set_ylabel("count")
    bottom.set_xlim(0, 1)
    fig.savefig(path)
    return path


def _plot_hpa(ev: Evaluation, path: Path) -> Path:
    blocks = [*ev.metrics.get("per_dimension", {}).items(), ("pooled", ev.metrics)]
    fig = _figure(1.6 * len(blocks) + 2.5, 4.0)
    ax = fig.subplots()
    x = np.arange(len(blocks))
    for offset, key, label, colour in (
        (-0.2, "hpa", "HPA", "#1f77b4"),
        (0.2, "margin_hpa", "margin HPA", "#ff7f0e"),
    ):
        heights = np.array([b.get(key, math.nan) for _, b in blocks], dtype=float)
        ax.bar(x + offset, np.nan_to_num(heights), width=0.4, label=label, color=colour)
        for xi, h in zip(x + offset, heights, strict=True):
            ax.text(
                xi,
                (h if math.isfinite(h) else 0) + 0.01,
                f"{h:.2f}" if math.isfinite(h) else "n/a",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.axhline(0.5, ls="--", color="#999999", label="chance")
    ax.set_xticks(x, [f"{name}\n{b.get('n_pairs', 0)} pairs" for name, b in blocks])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title("Human preference accuracy per dimension")
    ax.legend(fontsize=8, loc="upper right", ncols=3)
    fig.savefig(path)
    return path


def _plot_scatter(ev: Evaluation, path: Path) -> Path:
    n = max(1, len(ev.dimensions))
    fig = _figure(3.2 * n, 3.4)
    axes = fig.subplots(1, n, squeeze=False).ravel()
    lo, hi = float(ev.values[0]), float(ev.values[-1])
    for d, (ax, name) in enumerate(zip(axes, ev.dimensions or ["(none)"], strict=False)):
        rows = ev.entry_dim == d
        ax.scatter(ev.human[rows], ev.entry_mean[rows], s=10, alpha=0.6)
        ax.plot([lo, hi], [lo, hi], ls="--", color="#999999")
        block = ev.metrics.get("per_dimension", {}).get(name, {})
        fmt = lambda v: f"{v:.2f}" if isinstance(v, float) and math.isfinite(v) else "n/a"  # noqa: E731
        ax.set_title(f"{name}\nPLCC {fmt(block.get('plcc'))}  SRCC {fmt(block.get('srcc'))}", fontsize=9)
        ax.set_xlim(lo - 0.1, hi + 0.1)
        ax.set_ylim(lo - 0.1, hi + 0.1)
        ax.set_xlabel("human ŝ")
    axes[0].set_ylabel("predicted μ")
    fig.savefig(path)
    return path
