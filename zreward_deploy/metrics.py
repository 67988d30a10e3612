"""Evaluation metrics (docs/design.md §7, docs/method.md §6): pure functions over numpy arrays.

Notation: ``pred`` = the model's expectation μ per scored (item, dimension), ``human`` = the human score
ŝ, ``pairs`` = ``[P, 2]`` indices of same-prompt, same-dimension entries (built by
:func:`zreward_deploy.data.build_pairs`), ``q`` = predicted distributions ``[N, K]`` over the score
values ``v [K]``, ``p`` = annotator histograms ``[N, K]`` placed on the same values.

- **HPA** = (1/|P|) Σ 1[(μ_a − μ_b)(ŝ_a − ŝ_b) > 0] over pairs with ŝ_a ≠ ŝ_b. Strict: a predicted tie is
  wrong; human ties are skipped. **Margin-HPA**: the same over pairs with |ŝ_a − ŝ_b| > 0.5.
- **PLCC** (Pearson), **SRCC** (Spearman: Pearson of average ranks), **KRCC** (Kendall τ-b) of μ vs ŝ.
- **KL**(p ‖ q) in nats, **JSD**(p, q) in bits (∈ [0, 1]), **EMD** = Σ_k |CDF_p(k) − CDF_q(k)| (v_{k+1} − v_k)
  in score units (the 1-D Wasserstein-1 distance on the ordered values).
- **Preference probability** implied by two distributions: P(a ≻ b) = Σ_{i,j} q_a(i) q_b(j)
  ([v_i > v_j] + ½[v_i = v_j]). **ECE** of that probability against the human outcome 1[ŝ_a > ŝ_b]
  over equal-width bins: Σ_bins (n_bin / n) |mean outcome − mean probability|.
- **Spread**: the std of q against the std of p, as their means and their Pearson correlation.
- **Preference HPA** (judgements without scores, docs/data.md "Preference records"): over the non-tie
  judgements "a preferred to b" (target t = 1) or "b preferred to a" (t = 0), correct iff
  (μ_a − μ_b)(2t − 1) > 0: the HPA rule with the judgement in place of ŝ_a − ŝ_b (a predicted tie is
  wrong, human ties are skipped and counted). With a Wilson 95 % interval.

Nothing here raises or warns on small or degenerate input: a metric that is undefined (no pairs, fewer
than 2 items, zero variance, no annotations) is NaN and its :class:`MetricValue` says why. Entries with a
non-finite prediction or human score (e.g. items the scorer failed on) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TIE_TOLERANCE = 1e-9  # human scores closer than this are tied (same constant as zreward_deploy.data)
MARGIN = 0.5  # margin-HPA keeps pairs with |ŝ_a − ŝ_b| > MARGIN
Q_FLOOR = 1e-12  # floor on q inside KL: an underflowed probability gives a large, finite KL


@dataclass(frozen=True)
class MetricValue:
    """A metric's value, the number of items or pairs it is computed over, and why it is undefined (then
    ``value`` is NaN)."""

    value: float
    n: int
    undefined: str | None = None


def _undefined(n: int, reason: str) -> MetricValue:
    return MetricValue(math.nan, n, reason)


def _as_1d(x: np.ndarray | Sequence[float]) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _as_pairs(pairs: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------------------------------
# Pairwise accuracy
# --------------------------------------------------------------------------------------------------


def usable_pairs(pred: np.ndarray, human: np.ndarray, pairs: np.ndarray, min_gap: float = 0.0) -> np.ndarray:
    """The pairs ``[P', 2]`` that HPA counts: finite values on both sides and |ŝ_a − ŝ_b| > ``min_gap``
    (``min_gap=0``: any difference beyond :data:`TIE_TOLERANCE`, i.e. human ties are skipped)."""
    pred, human, pairs = _as_1d(pred), _as_1d(human), _as_pairs(pairs)
    if len(pairs) == 0:
        return pairs
    a, b = pairs[:, 0], pairs[:, 1]
    finite = np.isfinite(pred[a]) & np.isfinite(pred[b]) & np.isfinite(human[a]) & np.isfinite(human[b])
    gap = np.abs(human[a] - human[b])
    return pairs[finite & (gap > min_gap + TIE_TOLERANCE)]


def hpa(
    pred: np.ndarray | Sequence[float],
    human: np.ndarray | Sequence[float],
    pairs: np.ndarray | Sequence[Sequence[int]],
    min_gap: float = 0.0,
) -> MetricValue:
    """Human preference accuracy over ``pairs`` ``[P, 2]`` of indices into ``pred``/``human`` ``[N]``.

    Correct iff (μ_a − μ_b)(ŝ_a − ŝ_b) > 0; a predicted tie is wrong, human ties are skipped. With
    ``min_gap=0.5`` this is margin-HPA. Undefined without a usable pair.
    """
    pred, human = _as_1d(pred), _as_1d(human)
    kept = usable_pairs(pred, human, pairs, min_gap)
    if len(kept) == 0:
        what = "non-tied" if min_gap == 0 else f"|ŝ_a − ŝ_b| > {min_gap}"
        return _undefined(0, f"no same-prompt pairs with {what} human scores")
    a, b = kept[:, 0], kept[:, 1]
    correct = (pred[a] - pred[b]) * (human[a] - human[b]) > 0
    return MetricValue(float(correct.mean()), len(kept))


def margin_hpa(pred, human, pairs) -> MetricValue:
    """HPA over pairs with |ŝ_a − ŝ_b| > 0.5 (:data:`MARGIN`)."""
    return hpa(pred, human, pairs, min_gap=MARGIN)


Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def binomial_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (95 % for the default ``z``); ``(nan, nan)``
    for ``n = 0``. Unlike the normal approximation it stays inside [0, 1] and is sensible near 0 and 1."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends (no rounding residue)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def preference_hpa(
    pred_a: np.ndarray | Sequence[float],
    pred_b: np.ndarray | Sequence[float],
    target: np.ndarray | Sequence[float],
) -> MetricValue:
    """HPA over judgements ``[P]``: ``target`` = 1 (a preferred), 0 (b preferred) or 0.5 (tie, skipped);
    correct iff (μ_a − μ_b)(2t − 1) > 0, so a predicted tie is wrong (as in :func:`hpa`). Judgements with
    a non-finite prediction are left out. Undefined without a usable non-tie judgement."""
    pred_a, pred_b, target = _as_1d(pred_a), _as_1d(pred_b), _as_1d(target)
    keep = np.isfinite(pred_a) & np.isfinite(pred_b) & (target != 0.5)
    if not keep.any():
        return _undefined(0, "no non-tie judgement with scores on both sides")
    correct = (pred_a[keep] - pred_b[keep]) * (2 * target[keep] - 1) > 0
    return MetricValue(float(correct.mean()), int(keep.sum()))


def _preference_block(pred_a: np.ndarray, pred_b: np.ndarray, target: np.ndarray) -> dict:
    finite = np.isfinite(pred_a) & np.isfinite(pred_b)
    m = preference_hpa(pred_a, pred_b, target)
    correct = 0 if m.n == 0 else round(m.value * m.n)
    lo, hi = binomial_interval(correct, m.n)
    out = {
        "n_preferences": len(target),
        "n_pairs": m.n,
        "n_ties": int((finite & (target == 0.5)).sum()),
        "n_unscored": int((~finite).sum()),
        "hpa": m.value,
        "hpa_ci95": [lo, hi],
        "undefined": {"hpa": m.undefined} if m.undefined else {},
    }
    return out


def preference_report(
    pred_a: np.ndarray | Sequence[float],
    pred_b: np.ndarray | Sequence[float],
    target: np.ndarray | Sequence[float],
    dimension: Sequence[str],
) -> dict:
    """Preference HPA pooled over all judgements and per dimension (``dimension [P]``, e.g.
    ``"overall"``): ``{"n_preferences", "n_pairs" (non-tie, scored), "n_ties", "n_unscored" (a side
    the scorer failed on), "hpa", "hpa_ci95": [lo, hi] (Wilson), "undefined", "per_dimension": {...}}``."""
    pred_a, pred_b, target = _as_1d(pred_a), _as_1d(pred_b), _as_1d(target)
    dimension = np.asarray(dimension, dtype=object)
    report = _preference_block(pred_a, pred_b, target)
    report["per_dimension"] = {
        name: _preference_block(pred_a[rows], pred_b[rows], target[rows])
        for name in dict.fromkeys(dimension.tolist())
        for rows in [dimension == name]
    }
    return report


# --------------------------------------------------------------------------------------------------
# Correlations
# --------------------------------------------------------------------------------------------------


def _finite_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_1d(x), _as_1d(y)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _pearson(x: np.ndarray, y: np.ndarray, what: str) -> MetricValue:
    n = len(x)
    if n < 2:
        return _undefined(n, f"needs at least 2 items, got {n}")
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    # relative threshold: values equal up to rounding have no variance to correlate
    if sxx <= 1e-24 * max(1.0, float(x @ x)):
        return _undefined(n, f"the predicted {what} are all equal (zero variance)")
    if syy <= 1e-24 * max(1.0, float(y @ y)):
        return _undefined(n, f"the human {what} are all equal (zero variance)")
    r = float(dx @ dy) / math.sqrt(sxx * syy)
    return MetricValue(max(-1.0, min(1.0, r)), n)


def plcc(pred, human) -> MetricValue:
    """Pearson linear correlation of ``pred`` and ``human`` ``[N]``; undefined for N < 2 or a constant side."""
    return _pearson(*_finite_xy(pred, human), "scores")


def rankdata(x: np.ndarray | Sequence[float]) -> np.ndarray:
    """1-based ranks ``[N]``, ties get the average of the ranks they span (as ``scipy.stats.rankdata``)."""
    x = _as_1d(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # start index of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def srcc(pred, human) -> MetricValue:
    """Spearman rank correlation (Pearson of average ranks); undefined for N < 2 or a constant side."""
    x, y = _finite_xy(pred, human)
    return _pearson(rankdata(x), rankdata(y), "scores' ranks")


def _tied_pairs(x: np.ndarray) -> int:
    _, counts = np.unique(x, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def krcc(pred, human, chunk_elements: int = 1 << 22) -> MetricValue:
    """Kendall's τ-b = (n_c − n_d) / sqrt((n_0 − n_x)(n_0 − n_y)), n_0 = N(N−1)/2, n_x / n_y the pairs tied
    in ``pred`` / ``human``. O(N²) time in row chunks of at most ``chunk_elements`` entries of memory.
    Undefined for N < 2 or a constant side."""
    x, y = _finite_xy(pred, human)
    n = len(x)
    if n < 2:
        return _undefined(n, f"needs at least 2 items, got {n}")
    n0 = n * (n - 1) // 2
    nx, ny = n0 - _tied_pairs(x), n0 - _tied_pairs(y)
    if nx == 0:
        return _undefined(n, "the predicted scores are all equal (every pair tied)")
    if ny == 0:
        return _undefined(n, "the human scores are all equal (every pair tied)")
    rows = max(1, chunk_elements // n)
    s = 0
    for start in range(0, n, rows):
        dx = np.sign(x[start : start + rows, None] - x[None, :])
        dy = np.sign(y[start : start + rows, None] - y[None, :])
        s += int((dx * dy).sum())
    # every unordered pair was counted twice, as (i, j) and (j, i), with the same sign product
    return MetricValue(max(-1.0, min(1.0, (s / 2) / math.sqrt(nx * ny))), n)


# --------------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------------


def _finite_rows(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, q = np.atleast_2d(np.asarray(p, np.float64)), np.atleast_2d(np.asarray(q, np.float64))
    keep = np.isfinite(p).all(-1) & np.isfinite(q).all(-1)
    return p[keep], q[keep]


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) = Σ_k p_k ln(p_k / q_k) per row, in nats: ``[N, K], [N, K] -> [N]``.

    0 ln 0 = 0; q is floored at :data:`Q_FLOOR` so an underflowed probability gives a large finite value.
    """
    p, q = np.asarray(p, np.float64), np.maximum(np.asarray(q, np.float64), Q_FLOOR)
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    return terms.sum(-1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence in bits, ½ KL(p ‖ m) + ½ KL(q ‖ m) with m = (p + q)/2: ``[N, K] -> [N]``,
    0 for equal rows, 1 for disjoint supports."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = 0.5 * (p + q)
    # m >= p/2 > 0 wherever p > 0, so the floor inside kl_divergence never acts here
    return np.maximum(0.5 * (kl_divergence(p, m) + kl_divergence(q, m)) / math.log(2), 0.0)


def emd(p: np.ndarray, q: np.ndarray, values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Earth mover's (Wasserstein-1) distance on the ordered ``values [K]``:
    Σ_{k<K} |CDF_p(k) − CDF_q(k)| (v_{k+1} − v_k), in score units: ``[N, K] -> [N]``."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    steps = np.diff(_as_1d(values))
    cdf_gap = np.abs(np.cumsum(p, -1) - np.cumsum(q, -1))[..., :-1]
    return cdf_gap @ steps


def distribution_std(probs: np.ndarray, values: np.ndarray | Sequence[float]) -> np.ndarray:
    """Standard deviation of distributions ``[..., K]`` over ``values [K]`` -> ``[...]``."""
    probs, v = np.asarray(probs, np.float64), _as_1d(values)
    mean = probs @ v
    return np.sqrt(np.maximum(probs @ (v * v) - mean * mean, 0.0))


def _mean_over_rows(per_row: np.ndarray, what: str) -> MetricValue:
    if len(per_row) == 0:
        return _undefined(0, f"no item has annotations to compare {what} with")
    return MetricValue(float(per_row.mean()), len(per_row))


def distribution_metrics(
    p: np.ndarray, q: np.ndarray, values: np.ndarray | Sequence[float]
) -> dict[str, MetricValue]:
    """Mean KL(p ‖ q), JSD and EMD over the rows where both ``p`` and ``q`` ``[N, K]`` are finite
    (rows of NaN mark items without annotations), and the spread: mean std of q (``pred_std``), mean
    std of p (``human_std``) and their Pearson correlation (``std_plcc``)."""
    p, q = _finite_rows(p, q)
    out = {
        "kl": _mean_over_rows(kl_divergence(p, q), "q"),
        "jsd": _mean_over_rows(js_divergence(p, q), "q"),
        "emd": _mean_over_rows(emd(p, q, values), "q"),
    }
    pred_std, human_std = distribution_std(q, values), distribution_std(p, values)
    out["pred_std"] = _mean_over_rows(pred_std, "the predicted spread")
    out["human_std"] = _mean_over_rows(human_std, "the predicted spread")
    out["std_plcc"] = _pearson(pred_std, human_std, "stds")
    return out


# --------------------------------------------------------------------------------------------------
# Calibration of pairwise preferences
# --------------------------------------------------------------------------------------------------


def preference_probability(q_a: np.ndarray, q_b: np.ndarray) -> np.ndarray:
    """P(a ≻ b) = Σ_{i,j} q_a(i) q_b(j) ([v_i > v_j] + ½[v_i = v_j]) for ascending values: ``[P, K] -> [P]``.

    With strictly ascending values, v_i > v_j iff i > j, so this is Σ_i q_a(i) (CDF_b(i−1) + ½ q_b(i)).
    """
    q_a, q_b = np.asarray(q_a, np.float64), np.asarray(q_b, np.float64)
    below = np.cumsum(q_b, -1) - q_b  # P(b's score < v_i)
    return (q_a * (below + 0.5 * q_b)).sum(-1)


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width bins of predicted probability on [0, 1]: ``edges [B+1]``, and per bin ``count``,
    ``mean_prob`` and ``frac_positive`` ``[B]`` (NaN in empty bins)."""

    edges: np.ndarray
    count: np.ndarray
    mean_prob: np.ndarray
    frac_positive: np.ndarray


def reliability_bins(prob: np.ndarray, outcome: np.ndarray, n_bins: int = 10) -> ReliabilityBins:
    """Bin ``prob [N]`` into ``n_bins`` equal bins (the last one closed at 1) with the outcomes ``[N]``."""
    prob, outcome = _as_1d(prob), _as_1d(outcome)
    index = np.clip(np.floor(prob * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(index, prob, n_bins) / count
        frac = np.bincount(index, outcome, n_bins) / count
    return ReliabilityBins(np.linspace(0.0, 1.0, n_bins + 1), count, mean_prob, frac)


def expected_calibration_error(prob: np.ndarray, outcome: np.ndarray, n_bins: int = 10) -> MetricValue:
    """ECE = Σ_bins (n_bin / n) |mean(outcome) − mean(prob)| of probabilities ``prob [N]`` for binary
    ``outcome [N]``; undefined with no finite probability."""
    prob, outcome = _as_1d(prob), _as_1d(outcome)
    keep = np.isfinite(prob) & np.isfinite(outcome)
    prob, outcome = prob[keep], outcome[keep]
    if len(prob) == 0:
        return _undefined(0, "no pairs to calibrate")
    bins = reliability_bins(prob, outcome, n_bins)
    used = bins.count > 0
    gaps = np.abs(bins.frac_positive[used] - bins.mean_prob[used]) * bins.count[used]
    return MetricValue(float(gaps.sum() / len(prob)), len(prob))


def pair_preferences(
    probs: np.ndarray, human: np.ndarray, pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted P(a ≻ b) and human outcome 1[ŝ_a > ŝ_b] for the non-tied finite ``pairs``, each pair in
    both orientations ((a, b) and (b, a)) so that the result does not depend on which item is listed
    first: ``probs [N, K], human [N], pairs [P, 2] -> prob [2P'], outcome [2P']``."""
    probs, human = np.asarray(probs, np.float64), _as_1d(human)
    finite = np.isfinite(probs).all(-1)
    kept = usable_pairs(np.where(finite, 0.0, np.nan), human, pairs)
    a, b = kept[:, 0], kept[:, 1]
    prob = preference_probability(probs[a], probs[b])
    outcome = (human[a] > human[b]).astype(np.float64)
    return np.concatenate([prob, 1.0 - prob]), np.concatenate([outcome, 1.0 - outcome])


# --------------------------------------------------------------------------------------------------
# The report: pooled and per dimension
# --------------------------------------------------------------------------------------------------


def metric_block(
    pred: np.ndarray,
    human: np.ndarray,
    pairs: np.ndarray,
    pred_probs: np.ndarray | None = None,
    human_hist: np.ndarray | None = None,
    values: np.ndarray | Sequence[float] | None = None,
    n_bins: int = 10,
) -> dict:
    """All metrics of one group of entries as a JSON-friendly dict.

    Args:
        pred, human: ``[N]`` predicted μ and human ŝ.
        pairs: ``[P, 2]`` same-prompt pairs of entries (human ties are skipped).
        pred_probs: ``[N, K]`` predicted q (enables ECE and, with ``human_hist``, the distribution metrics).
        human_hist: ``[N, K]`` annotator histograms on the model's values (NaN rows: no annotations).
        values: ``[K]`` score values (needed with ``pred_probs``).
        n_bins: ECE bins.

    Returns:
        ``{"n_items", "n_pairs", "n_margin_pairs", "hpa", "margin_hpa", "plcc", "srcc", "krcc", ...,
        "undefined": {metric: reason}}``; with ``pred_probs`` also ``"ece"``, and with ``human_hist``
        ``"n_annotated", "kl", "jsd", "emd", "pred_std", "human_std", "std_plcc"``. Undefined values are NaN.
    """
    pred, human = _as_1d(pred), _as_1d(human)
    metrics: dict[str, MetricValue] = {
        "hpa": hpa(pred, human, pairs),
        "margin_hpa": margin_hpa(pred, human, pairs),
        "plcc": plcc(pred, human),
        "srcc": srcc(pred, human),
        "krcc": krcc(pred, human),
    }
    if pred_probs is not None:
        metrics["ece"] = expected_calibration_error(*pair_preferences(pred_probs, human, pairs), n_bins)
        if human_hist is not None:
            metrics.update(distribution_metrics(human_hist, pred_probs, values))
    out: dict = {
        "n_items": int((np.isfinite(pred) & np.isfinite(human)).sum()),
        "n_pairs": metrics["hpa"].n,
        "n_margin_pairs": metrics["margin_hpa"].n,
    }
    if "kl" in metrics:
        out["n_annotated"] = metrics["kl"].n
    out.update({name: m.value for name, m in metrics.items()})
    out["undefined"] = {name: m.undefined for name, m in metrics.items() if m.undefined}
    return out


def metric_report(
    pred: np.ndarray,
    human: np.ndarray,
    pairs: np.ndarray,
    dimension: Sequence[str],
    pred_probs: np.ndarray | None = None,
    human_hist: np.ndarray | None = None,
    values: np.ndarray | Sequence[float] | None = None,
    n_bins: int = 10,
) -> dict:
    """Pooled metrics over all entries (all dimensions together; pairs never cross dimensions) at the top
    level, and the same per dimension under ``"per_dimension"``.

    Args are those of :func:`metric_block`, plus ``dimension [N]``: the dimension name of each entry.
    Pairs whose two entries have different dimensions are refused (``ValueError``: a caller bug).
    """
    dimension = np.asarray(dimension, dtype=object)
    pairs = _as_pairs(pairs)
    if len(pairs) and (dimension[pairs[:, 0]] != dimension[pairs[:, 1]]).any():
        raise ValueError("a pair joins entries of two different dimensions")
    report = metric_block(pred, human, pairs, pred_probs, human_hist, values, n_bins)
    per_dim = {}
    for name in dict.fromkeys(dimension.tolist()):
        rows = np.flatnonzero(dimension == name)
        remap = np.full(len(dimension), -1)
        remap[rows] = np.arange(len(rows))
        dim_pairs = remap[pairs[dimension[pairs[:, 0]] == name]] if len(pairs) else pairs
        per_dim[name] = metric_block(
            _as_1d(pred)[rows],
            _as_1d(human)[rows],
            dim_pairs,
            None if pred_probs is None else np.asarray(pred_probs)[rows],
            None if human_hist is None else np.asarray(human_hist)[rows],
            values,
            n_bins,
        )
    report["per_dimension"] = per_dim
    return report
