"""Analytic tests of zreward_deploy.metrics: every expected value is computed by hand in the comments."""

import math
import warnings

import numpy as np
import pytest

from zreward_deploy import metrics as M

V5 = [1.0, 2.0, 3.0, 4.0, 5.0]
ALL_PAIRS_4 = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


# ------------------------------------------------------------------------------------------------ HPA


def test_hpa_hand_computed_with_human_tie_and_predicted_tie():
    human = [1.0, 2.0, 2.0, 4.5]
    pred = [1.5, 1.4, 3.0, 3.0]
    # (0,1): dh=-1,  dp=+0.1 -> wrong      (0,2): dh=-1,  dp=-1.5 -> right
    # (0,3): dh=-3.5, dp=-1.5 -> right     (1,2): human tie -> skipped
    # (1,3): dh=-2.5, dp=-1.6 -> right     (2,3): dh=-2.5, dp=0 -> predicted tie -> wrong
    m = M.hpa(pred, human, ALL_PAIRS_4)
    assert m.value == pytest.approx(3 / 5)
    assert m.n == 5 and m.undefined is None


def test_margin_hpa_keeps_only_gaps_above_half_a_point():
    human = [3.0, 3.5, 4.5]
    pred = [4.0, 3.0, 2.0]
    # pairs: (0,1) gap 0.5 -> not > 0.5, dropped; (0,2) gap 1.5, dp=+2 vs dh=-1.5 -> wrong;
    # (1,2) gap 1.0, dp=+1 vs dh=-1 -> wrong. Plain HPA also counts (0,1): dh=-0.5, dp=+1 -> wrong.
    pairs = [(0, 1), (0, 2), (1, 2)]
    assert M.margin_hpa(pred, human, pairs).value == 0.0
    assert M.margin_hpa(pred, human, pairs).n == 2
    assert M.hpa(pred, human, pairs).n == 3
    # a gap of exactly 0.5 reached through float arithmetic is still not a margin pair
    assert M.margin_hpa([1.0, 0.0], [11 / 3, 19 / 6], [(0, 1)]).undefined is not None


@pytest.mark.parametrize(
    "pred, expected", [([1.0, 2.0, 3.0], 1.0), ([3.0, 2.0, 1.0], 0.0), ([2.0, 2.0, 2.0], 0.0)]
)
def test_hpa_perfect_reversed_and_all_predicted_ties(pred, expected):
    # all three pairs have different human scores; constant predictions are ties, hence all wrong
    assert M.hpa(pred, [1.0, 2.0, 3.0], [(0, 1), (0, 2), (1, 2)]).value == expected


def test_hpa_is_symmetric_in_pair_orientation():
    human, pred = [1.0, 2.0, 4.0], [1.0, 3.0, 2.0]
    a = M.hpa(pred, human, [(0, 1), (1, 2)]).value
    b = M.hpa(pred, human, [(1, 0), (2, 1)]).value
    assert a == b == 0.5  # (0,1) right, (1,2): dh=-2, dp=+1 -> wrong


def test_hpa_single_pair_and_undefined_cases():
    assert M.hpa([1.0, 2.0], [1.0, 5.0], [(0, 1)]).value == 1.0
    empty = M.hpa([], [], np.zeros((0, 2), int))
    assert math.isnan(empty.value) and empty.n == 0 and "no same-prompt pairs" in empty.undefined
    tied = M.hpa([1.0, 2.0], [3.0, 3.0], [(0, 1)])
    assert math.isnan(tied.value) and "non-tied" in tied.undefined


def test_hpa_skips_pairs_with_nan_predictions():
    # item 1 failed to score: only (0, 2) counts, and it is right
    m = M.hpa([1.0, math.nan, 3.0], [1.0, 2.0, 3.0], [(0, 1), (0, 2), (1, 2)])
    assert (m.value, m.n) == (1.0, 1)


# ------------------------------------------------------------------------------------------------ correlations


def test_correlations_hand_computed():
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    # PLCC: deviations (-1.5,-.5,.5,1.5) and (-1.5,.5,-.5,1.5): sum of products 4, sums of squares 5 -> 0.8
    assert M.plcc(x, y).value == pytest.approx(0.8)
    # SRCC: no ties, d = (0,1,-1,0), 1 - 6*2/(4*15) = 0.8
    assert M.srcc(x, y).value == pytest.approx(0.8)
    # KRCC: 6 pairs, only (1,2) discordant: (5-1)/6
    assert M.krcc(x, y).value == pytest.approx(4 / 6)


def test_correlations_with_ties():
    x, y = [1.0, 1.0, 2.0, 3.0], [1.0, 2.0, 2.0, 3.0]
    # tau-b: concordant 4, discordant 0, n0 = 6, one tie in x, one in y: 4 / sqrt(5 * 5) = 0.8
    assert M.krcc(x, y).value == pytest.approx(0.8)
    # average ranks (1.5,1.5,3,4) and (1,2.5,2.5,4): Pearson = 3.75 / sqrt(4.5 * 4.5)
    assert M.srcc(x, y).value == pytest.approx(3.75 / 4.5)


@pytest.mark.parametrize("metric", [M.plcc, M.srcc, M.krcc])
def test_correlations_perfect_reversed_and_undefined(metric):
    # y = 2x + 1 and y = -2x + 11: linear, so every correlation is exactly +1 / -1
    assert metric([1.0, 2.0, 5.0], [3.0, 5.0, 11.0]).value == pytest.approx(1.0)
    assert metric([1.0, 2.0, 5.0], [9.0, 7.0, 1.0]).value == pytest.approx(-1.0)
    for pred, human, reason in [
        ([], [], "at least 2"),
        ([1.0], [2.0], "at least 2"),
        ([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], "predicted"),
        ([1.0, 2.0, 3.0], [4.0, 4.0, 4.0], "human"),
    ]:
        m = metric(pred, human)
        assert math.isnan(m.value) and reason in m.undefined


def test_correlations_drop_non_finite_entries():
    # the NaN row goes, leaving a perfect positive relation on 3 points
    assert M.plcc([1.0, math.nan, 2.0, 3.0], [1.0, 5.0, 2.0, 3.0]).value == pytest.approx(1.0)
    assert M.krcc([1.0, math.nan, 2.0, 3.0], [1.0, 5.0, 2.0, 3.0]).n == 3


def test_rankdata_averages_ties():
    assert M.rankdata([10.0, 20.0, 20.0, 5.0]).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_correlations_agree_with_scipy_on_random_data_with_ties():
    stats = pytest.importorskip(
        "scipy.stats", reason="scipy is only a cross-check; the analytic tests above stand alone"
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 6, 301).astype(float)  # many ties
    y = x + rng.normal(0, 2, 301).round(0)
    assert M.plcc(x, y).value == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert M.srcc(x, y).value == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    # chunk_elements small enough to force several row chunks
    assert M.krcc(x, y, chunk_elements=1000).value == pytest.approx(stats.kendalltau(x, y)[0], abs=1e-12)


# ------------------------------------------------------------------------------------------------ distributions


def test_kl_jsd_emd_hand_computed():
    p = np.array([[1.0, 0.0, 0.0]])
    q = np.array([[0.5, 0.5, 0.0]])
    # KL(p||q) = 1 * ln(1 / 0.5) = ln 2
    assert M.kl_divergence(p, q)[0] == pytest.approx(math.log(2))
    # m = (.75, .25, 0): KL(p||m) = ln(4/3); KL(q||m) = .5 ln(2/3) + .5 ln 2; JSD = half their sum / ln 2
    jsd = 0.5 * (math.log(4 / 3) + 0.5 * math.log(2 / 3) + 0.5 * math.log(2)) / math.log(2)
    assert M.js_divergence(p, q)[0] == pytest.approx(jsd)
    assert jsd == pytest.approx(0.31128, abs=1e-5)
    # CDFs (1,1,1) vs (.5,1,1): |.5| * 1 = 0.5
    assert M.emd(p, q, [1.0, 2.0, 3.0])[0] == pytest.approx(0.5)


def test_distribution_endpoints():
    p = np.array([[0.2, 0.3, 0.5]])
    assert M.kl_divergence(p, p)[0] == pytest.approx(0.0, abs=1e-15)
    assert M.js_divergence(p, p)[0] == pytest.approx(0.0, abs=1e-15)
    assert M.emd(p, p, [1, 2, 3])[0] == pytest.approx(0.0, abs=1e-15)
    one, other = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert M.js_divergence(one, other)[0] == pytest.approx(1.0)  # disjoint supports: 1 bit
    # EMD uses the value spacing: mass moves from 1 to 3 through 1.5: 0.5 + 1.5
    assert M.emd([[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]], [1.0, 1.5, 3.0])[0] == pytest.approx(2.0)
    # q = 0 where p > 0: floored at 1e-12, so ln(1e12) instead of inf
    assert M.kl_divergence(one, other)[0] == pytest.approx(12 * math.log(10))


def test_distribution_std_and_spread_metrics():
    # q = (.5, 0, .5) on 1..3: mean 2, variance 1
    assert M.distribution_std([0.5, 0.0, 0.5], [1, 2, 3]) == pytest.approx(1.0)
    p = np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [np.nan] * 3])  # last row: no annotations
    q = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    out = M.distribution_metrics(p, q, [1, 2, 3])
    # row 0 identical (EMD 0); row 1: CDFs (.5,.5,1) vs (0,1,1): 0.5 + 0.5 = 1 -> mean 0.5 over 2 rows
    assert out["emd"].value == pytest.approx(0.5) and out["emd"].n == 2
    assert out["pred_std"].value == pytest.approx(0.0)  # both predicted rows are point masses
    assert out["human_std"].value == pytest.approx(0.5)  # stds 0 and 1
    assert "predicted stds are all equal" in out["std_plcc"].undefined


def test_distribution_metrics_without_annotations_are_undefined():
    out = M.distribution_metrics(np.full((2, 3), np.nan), np.full((2, 3), 1 / 3), [1, 2, 3])
    for name in ("kl", "jsd", "emd", "pred_std", "human_std"):
        assert math.isnan(out[name].value) and "annotations" in out[name].undefined


# ------------------------------------------------------------------------------------------------ calibration


def test_preference_probability_hand_computed():
    # certain a=3 vs certain b=1: 1; identical distributions: 1/2
    assert M.preference_probability([[0, 0, 1]], [[1, 0, 0]])[0] == pytest.approx(1.0)
    assert M.preference_probability([[0.2, 0.3, 0.5]], [[0.2, 0.3, 0.5]])[0] == pytest.approx(0.5)
    # a = (.5 on 1, .5 on 2), b = 2: .5*0 (1 < 2) + .5*.5 (tie) = 0.25
    assert M.preference_probability([[0.5, 0.5, 0.0]], [[0.0, 1.0, 0.0]])[0] == pytest.approx(0.25)
    rng = np.random.default_rng(1)
    qa, qb = rng.dirichlet(np.ones(5), 7), rng.dirichlet(np.ones(5), 7)
    np.testing.assert_allclose(M.preference_probability(qa, qb) + M.preference_probability(qb, qa), 1.0)


def test_expected_calibration_error_hand_computed():
    # bin [0.9, 1]: probs (.9, .9), outcomes (1, 0): |0.5 - 0.9| * 2; bin [0.2, 0.3): |0 - .2| * 1; / 3
    ece = M.expected_calibration_error([0.9, 0.9, 0.2], [1, 0, 0])
    assert ece.value == pytest.approx((0.8 + 0.2) / 3) and ece.n == 3
    assert M.expected_calibration_error([1.0, 0.0], [1, 0]).value == 0.0
    empty = M.expected_calibration_error([], [])
    assert math.isnan(empty.value) and empty.undefined


def test_pair_preferences_counts_each_pair_in_both_orders_and_skips_ties():
    probs = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    human = [3.0, 1.0, 1.0]
    prob, outcome = M.pair_preferences(probs, human, [(0, 1), (1, 2)])  # (1, 2) is a human tie
    assert prob.tolist() == [1.0, 0.0] and outcome.tolist() == [1.0, 0.0]


def test_reliability_bins_puts_probability_one_in_the_last_bin():
    bins = M.reliability_bins([0.0, 0.05, 1.0], [0, 1, 1], n_bins=4)
    assert bins.count.tolist() == [2, 0, 0, 1]
    assert bins.frac_positive[0] == 0.5 and math.isnan(bins.frac_positive[1])


# ------------------------------------------------------------------------------------------------ report


def test_metric_report_per_dimension_and_pooled():
    # entries 0-2 alignment, 3-4 realism; pairs never cross dimensions
    pred = [1.0, 2.0, 3.0, 5.0, 4.0]
    human = [1.0, 2.0, 3.0, 2.0, 4.0]
    dims = ["alignment"] * 3 + ["realism"] * 2
    pairs = [(0, 1), (0, 2), (1, 2), (3, 4)]
    rep = M.metric_report(pred, human, pairs, dims)
    assert rep["per_dimension"]["alignment"]["hpa"] == 1.0  # all three alignment pairs right
    assert rep["per_dimension"]["realism"]["hpa"] == 0.0  # dh=-2, dp=+1
    assert rep["hpa"] == pytest.approx(3 / 4) and rep["n_pairs"] == 4
    assert rep["per_dimension"]["realism"]["n_pairs"] == 1
    # realism has 2 items: correlations defined (-1), but a single pair suffices for HPA
    assert rep["per_dimension"]["realism"]["plcc"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="two different dimensions"):
        M.metric_report(pred, human, [(0, 3)], dims)


@pytest.mark.filterwarnings("error")  # degenerate input must not warn either
def test_metric_report_empty_and_single_item_inputs_are_nan_with_reasons():
    rep = M.metric_report([], [], np.zeros((0, 2), int), [], np.zeros((0, 5)), np.zeros((0, 5)), V5)
    for key in ("hpa", "margin_hpa", "plcc", "srcc", "krcc", "ece", "kl", "jsd", "emd"):
        assert math.isnan(rep[key]) and key in rep["undefined"]
    assert rep["n_pairs"] == 0 and rep["per_dimension"] == {}
    one = M.metric_report(
        [3.0], [4.0], np.zeros((0, 2), int), ["realism"], [[0, 0, 1, 0, 0]], [[0, 0, 0, 1, 0]], V5
    )
    assert one["kl"] == pytest.approx(12 * math.log(10))  # q floored at 1e-12 where p = 1
    assert one["emd"] == pytest.approx(1.0)
    assert "at least 2" in one["undefined"]["plcc"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.metric_report([2.0, 2.0], [1.0, 3.0], [(0, 1)], ["a", "a"])  # constant predictions
