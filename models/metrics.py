"""Churn and LTV metrics, each defined exactly (google/lifetime_value's definitions for the LTV ones).

Conventions used by every function here:

* ``churn_true`` is 1 for a churner (no purchase in the holdout window), ``churn_score`` any score that is higher
  for likelier churners; ``ltv_true`` is holdout spend (>= 0), ``ltv_pred`` a predicted spend.
* Ties in a prediction are resolved in expectation: inside a group of equal predictions every member is credited
  with the group's mean true value, which equals the average over all orderings of the tie. Without this, models
  with many tied scores (trees, BG/NBD for one-time buyers) would be scored on an arbitrary sort order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

N_DECILES = 10


def _arrays(*xs):
    out = [np.asarray(x, dtype=np.float64).reshape(-1) for x in xs]
    if len({len(x) for x in out}) != 1:
        raise ValueError("inputs must have the same length")
    if len(out[0]) == 0:
        raise ValueError("empty input")
    return out


def churn_roc_auc(churn_true, churn_score) -> float:
    """Area under the ROC curve with churn (1) as the positive class: the probability that a random churner scores
    higher than a random non-churner, ties counting 1/2 (Mann-Whitney U / (n_pos * n_neg))."""
    y, s = _arrays(churn_true, churn_score)
    return float(skm.roc_auc_score(y, s))


def churn_pr_auc(churn_true, churn_score) -> float:
    """Area under the precision-recall curve with churn (1) as the positive class, as average precision:
    ``sum_k (R_k - R_{k-1}) * P_k`` over the distinct score thresholds taken in decreasing order (no interpolation;
    scikit-learn's ``average_precision_score``). A random scorer gets the churn rate."""
    y, s = _arrays(churn_true, churn_score)
    return float(skm.average_precision_score(y, s))


def _tie_mean_true(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) sorted by DEScending prediction, y_true replaced by its mean within each tie group."""
    order = np.argsort(-y_pred, kind="mergesort")
    pred_sorted, true_sorted = y_pred[order], y_true[order]
    _, group, counts = np.unique(-pred_sorted, return_inverse=True, return_counts=True)
    group_mean = np.bincount(group, weights=true_sorted) / counts
    return group_mean[group], pred_sorted


def cumulative_true(ltv_true, ltv_pred) -> np.ndarray:
    """Gain chart: ``G[k] = sum of true LTV of the k+1 customers with the highest prediction / total true LTV``."""
    y, p = _arrays(ltv_true, ltv_pred)
    true_sorted, _ = _tie_mean_true(y, p)
    total = true_sorted.sum()
    if total <= 0:
        raise ValueError("total true LTV must be positive")
    return np.cumsum(true_sorted) / total


def gini(ltv_true, ltv_pred) -> float:
    """Raw Gini of the ranking by ``ltv_pred``: ``2 * mean(G) - 1`` with ``G`` the gain chart ``cumulative_true``."""
    return float(2.0 * cumulative_true(ltv_true, ltv_pred).mean() - 1.0)


def normalized_gini(ltv_true, ltv_pred) -> float:
    """Normalized Gini (google/lifetime_value ``gini_from_gain``): the raw Gini of the model's ranking divided by
    the raw Gini of the perfect ranking (by ``ltv_true`` itself). 1 = perfect ranking, ~0 = random, < 0 = inverted."""
    return gini(ltv_true, ltv_pred) / gini(ltv_true, ltv_true)


def decile_stats(ltv_true, ltv_pred) -> pd.DataFrame:
    """Per-decile means (google/lifetime_value ``decile_stats``).

    Customers are sorted by ``ltv_pred`` (ascending) and split into 10 consecutive groups of equal size (sizes
    differ by at most one; decile 0 = lowest predictions). Per decile: ``label_mean`` = mean true LTV (tie-averaged,
    see module doc), ``pred_mean`` = mean prediction, ``decile_mape = |pred_mean - label_mean| / label_mean``
    (NaN when ``label_mean`` is 0), and ``count``.
    """
    y, p = _arrays(ltv_true, ltv_pred)
    true_desc, pred_desc = _tie_mean_true(y, p)
    true_asc, pred_asc = true_desc[::-1], pred_desc[::-1]
    rows = []
    for d, idx in enumerate(np.array_split(np.arange(len(y)), N_DECILES)):
        if len(idx) == 0:
            continue
        label_mean, pred_mean = true_asc[idx].mean(), pred_asc[idx].mean()
        mape = abs(pred_mean - label_mean) / label_mean if label_mean > 0 else np.nan
        rows.append(
            {"decile": d, "count": len(idx), "label_mean": label_mean, "pred_mean": pred_mean, "decile_mape": mape}
        )
    return pd.DataFrame(rows).set_index("decile")


def decile_mape(ltv_true, ltv_pred) -> float:
    """Mean over the prediction deciles of ``|mean predicted - mean true| / mean true`` (``decile_stats``),
    SKIPPING every decile whose true mean is 0 (its relative error is undefined).

    google/lifetime_value divides by that 0 and so reports inf (or NaN) for the whole model as soon as one
    decile holds no spender.  With most customers churning that happens for reasons unrelated to calibration
    (e.g. a test set of a few hundred users whose lowest-predicted tenth bought nothing), and it would turn whole
    benchmark rows into inf, so Cohort keeps the skip that its published figures were computed with, and makes
    it explicit: ``decile_mape_skipped`` counts the skipped deciles.  Where that count is 0 the two definitions
    agree (it was 0 for the BG/NBD and tree predictions of the CDNOW and synthetic quality benchmarks when this
    was written; small per-partner evaluation sets are where skips happen).  Returns NaN, not a warning, when
    every decile is skipped (no spend at all).
    """
    per_decile = decile_stats(ltv_true, ltv_pred)["decile_mape"].to_numpy()
    kept = per_decile[~np.isnan(per_decile)]
    return float(kept.mean()) if len(kept) else float("nan")


def decile_mape_skipped(ltv_true, ltv_pred) -> int:
    """How many prediction deciles ``decile_mape`` skips because their true mean LTV is 0."""
    return int(np.isnan(decile_stats(ltv_true, ltv_pred)["decile_mape"].to_numpy()).sum())


def spearman(ltv_true, ltv_pred) -> float:
    """Spearman rank correlation between true and predicted LTV (Pearson correlation of average ranks)."""
    y, p = _arrays(ltv_true, ltv_pred)
    return float(stats.spearmanr(y, p).statistic)


def calibration_table(y_true, y_score, n_bins: int = N_DECILES) -> pd.DataFrame:
    """Calibration by decile of the score: customers sorted by ``y_score`` split into ``n_bins`` equal groups,
    with the mean score (``pred_mean``) next to the mean outcome (``true_mean``; churn rate or mean spend).
    A calibrated model has ``pred_mean ≈ true_mean`` in every row."""
    y, s = _arrays(y_true, y_score)
    true_desc, score_desc = _tie_mean_true(y, s)
    true_asc, score_asc = true_desc[::-1], score_desc[::-1]
    rows = []
    for b, idx in enumerate(np.array_split(np.arange(len(y)), n_bins)):
        if len(idx):
            rows.append(
                {"bin": b, "count": len(idx), "pred_mean": score_asc[idx].mean(), "true_mean": true_asc[idx].mean()}
            )
    return pd.DataFrame(rows).set_index("bin")


def evaluate(churn_true, churn_score, ltv_true, ltv_pred) -> dict[str, float]:
    """All headline metrics: ``churn_auc``, ``churn_pr_auc``, ``ltv_gini`` (normalized), ``decile_mape``,
    ``spearman``, plus ``ltv_ratio`` = total predicted / total true spend (1 = right overall scale) and ``n``."""
    c, cs, y, p = _arrays(churn_true, churn_score, ltv_true, ltv_pred)
    return {
        "churn_auc": churn_roc_auc(c, cs),
        "churn_pr_auc": churn_pr_auc(c, cs),
        "ltv_gini": normalized_gini(y, p),
        "decile_mape": decile_mape(y, p),
        "spearman": spearman(y, p),
        "ltv_ratio": float(p.sum() / y.sum()),
        "n": float(len(y)),
    }
