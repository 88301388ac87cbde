"""Every metric against small cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import (
    calibration_table, churn_pr_auc, churn_roc_auc, cumulative_true, decile_mape, decile_mape_skipped, decile_stats,
    evaluate, gini, normalized_gini, spearman,
)


def test_roc_auc_counts_pairs_and_half_ties():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered correctly
    assert churn_roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # positives 0.5, 0.9 vs negatives 0.5, 0.5: two ties (1/2 each) + two wins
    assert churn_roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.9]) == pytest.approx(0.75)


def test_pr_auc_is_average_precision():
    # thresholds 0.8 (P=1, R=.5), 0.4 (P=.5, R=.5), 0.35 (P=2/3, R=1), 0.1 (P=.5, R=1)
    # AP = .5 * 1 + 0 * .5 + .5 * 2/3 + 0 * .5
    assert churn_pr_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 + 1 / 3)


def test_gain_chart_and_gini_by_hand():
    y, p = [5, 0, 20, 10], [0.3, 0.1, 0.2, 0.9]
    # order by prediction: 10, 5, 20, 0 -> cumulative 10, 15, 35, 35 of 35
    np.testing.assert_allclose(cumulative_true(y, p), [10 / 35, 15 / 35, 1, 1])
    assert gini(y, p) == pytest.approx(2 * (10 + 15 + 35 + 35) / 35 / 4 - 1)  # 0.357142...
    # perfect order: 20, 10, 5, 0 -> 20, 30, 35, 35 -> raw gini 0.714285...
    assert gini(y, y) == pytest.approx(2 * (20 + 30 + 35 + 35) / 35 / 4 - 1)
    assert normalized_gini(y, p) == pytest.approx(0.5)


def test_normalized_gini_extremes_and_ties():
    y = [0, 0, 10, 30]
    assert normalized_gini(y, [1, 2, 3, 4]) == pytest.approx(1.0)
    # reversed: cumulative 0, 0, 10/40, 1 -> raw -0.375; perfect raw 0.875
    assert normalized_gini(y, [4, 3, 2, 1]) == pytest.approx(-0.375 / 0.875)
    # one big tie: everyone credited the mean (10): cumulative .25 .5 .75 1 -> raw 0.25 (the 1/n offset of the
    # discrete formula), whatever order the rows come in
    assert normalized_gini(y, [7, 7, 7, 7]) == pytest.approx(0.25 / 0.875)
    assert normalized_gini(y[::-1], [7, 7, 7, 7]) == pytest.approx(0.25 / 0.875)
    # a partial tie: predictions 1, 1, 2, 3 -> order 30, 0, then (0, 10 tied -> 5, 5): cumulative 30, 30, 35, 40
    assert normalized_gini([0, 10, 0, 30], [1, 1, 2, 3]) == pytest.approx(
        (2 * (30 + 30 + 35 + 40) / 40 / 4 - 1) / 0.875
    )


def test_decile_mape_one_customer_per_decile():
    y = np.arange(1, 11) * 2.0
    p = np.arange(1, 11) * 1.0  # every prediction half the truth
    stats = decile_stats(y, p)
    assert list(stats["count"]) == [1] * 10
    np.testing.assert_allclose(stats["decile_mape"], 0.5)
    assert decile_mape(y, p) == pytest.approx(0.5)


def test_decile_mape_uses_bucket_means():
    # 20 customers, two per decile: bucket d holds predictions (2d+1, 2d+2) with truths (0, 2*(2d+1.5))
    p = np.arange(1, 21, dtype=float)
    y = np.zeros(20)
    y[1::2] = 2 * (p[::2] + 0.5)
    # per bucket: pred mean = 2d+1.5, label mean = (2d+1.5) -> MAPE 0
    assert decile_mape(y, p) == pytest.approx(0.0)
    y2 = y * 1.25  # truths 25% higher -> |m - 1.25m| / 1.25m = 0.2 in every bucket
    assert decile_mape(y2, p) == pytest.approx(0.2)


def test_decile_mape_skips_empty_truth_deciles_and_counts_them():
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 10.0])
    p = np.arange(10.0)
    # only the top decile has a true mean > 0: |9 - 10| / 10; the nine others are skipped, not counted as 0 or inf
    assert decile_mape(y, p) == pytest.approx(0.1)
    assert decile_mape_skipped(y, p) == 9
    assert decile_stats(y, p)["decile_mape"].isna().sum() == 9
    # three of ten deciles without a spender: the mean is over the seven others only
    y = np.array([0, 0, 0, 4, 5, 6, 7, 8, 9, 10.0])
    p = y * 1.5
    assert decile_mape_skipped(y, p) == 3 and decile_mape(y, p) == pytest.approx(0.5)
    assert decile_mape_skipped(y + 1, p) == 0


def test_decile_mape_with_no_spend_at_all_is_nan_without_a_warning(recwarn):
    y, p = np.zeros(20), np.linspace(0, 1, 20)
    assert np.isnan(decile_mape(y, p)) and decile_mape_skipped(y, p) == 10
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_spearman_by_hand():
    # rank differences 0, 1, -1, 0 -> 1 - 6 * 2 / (4 * 15)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_calibration_table_bins_by_score():
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    truth = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    table = calibration_table(truth, score, n_bins=2)
    np.testing.assert_allclose(table["pred_mean"], [0.25, 0.75])
    np.testing.assert_allclose(table["true_mean"], [0.25, 0.75])
    assert list(table["count"]) == [4, 4]


def test_evaluate_collects_everything():
    churn = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    score = [0.9, 0.1, 0.8, 0.3, 0.7, 0.2, 0.6, 0.4, 0.55, 0.45]
    ltv = [0, 5, 0, 8, 0, 12, 0, 3, 0, 20]
    pred = [1, 6, 1, 7, 1, 10, 1, 4, 1, 15]
    out = evaluate(churn, score, ltv, pred)
    assert set(out) == {"churn_auc", "churn_pr_auc", "ltv_gini", "decile_mape", "spearman", "ltv_ratio", "n"}
    assert out["churn_auc"] == pytest.approx(1.0)
    assert out["ltv_ratio"] == pytest.approx(47 / 48)
    assert out["n"] == 10
    with pytest.raises(ValueError):
        evaluate([1, 0], [0.5], [1, 2], [1, 2])
