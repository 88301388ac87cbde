"""Spend calibration: a monotone correction of predicted LTV fitted on one partner's own rows.

Why.  One federated model serves partners whose spend scales differ (non-IID), and DP noise on the ZILN location /
scale outputs moves ``E[Y] = p·exp(mu + sigma²/2)`` by tens of percent; the ranking (Gini) survives both, the
dollar level per prediction decile (decile MAPE) does not.  Each partner can repair the level on its own data:
the calibration is fitted on the partner's own training rows and applied to the partner's own predictions; it is
never sent anywhere, so it spends none of the shared model's privacy budget (the partner already holds these rows).

The map.  Sort the rows by prediction, cut them into ``bins`` equal-count groups (the deciles of
``models.metrics.decile_stats`` when ``bins`` = 10), and take each group's mean prediction ``m_b`` and mean true
spend ``t_b``.  The ``t_b`` are made strictly increasing (pool-adjacent-violators, then a tiny step where two
pooled knots are equal) so the map is strictly increasing: ranking metrics (AUC is untouched anyway; Gini and
Spearman of the LTV) do not change.  Between knots the map is linear in log-log space through
``(log m_b, log t_b)``; beyond the first and last knot it keeps the end knots' ratio ``t_b / m_b`` (slope 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 10
_MIN_SPEND = 1e-6  # floor under means and predictions before taking logs (a bin may have no spender)
_STEP = 1e-6  # strict increase between pooled knots, in log-dollars


@dataclass(frozen=True)
class SpendCalibration:
    """``fit(pred, true)`` on a partner's rows, then ``apply(pred)``; ``log_pred`` / ``log_true`` are the knots."""

    log_pred: np.ndarray
    log_true: np.ndarray

    @classmethod
    def fit(cls, pred, true, bins: int = DEFAULT_BINS) -> SpendCalibration:
        pred = np.asarray(pred, dtype=np.float64).reshape(-1)
        true = np.asarray(true, dtype=np.float64).reshape(-1)
        if pred.shape != true.shape:
            raise ValueError(f"pred and true differ in length: {len(pred)} vs {len(true)}")
        if len(pred) < bins or bins < 1:
            raise ValueError(f"need at least {bins} rows (one per bin) to fit a spend calibration, got {len(pred)}")
        if not (np.isfinite(pred).all() and np.isfinite(true).all()) or (pred < 0).any() or (true < 0).any():
            raise ValueError("spend calibration needs finite, non-negative predictions and spends")
        order = np.argsort(pred, kind="stable")
        groups = np.array_split(order, bins)
        m = np.array([pred[g].mean() for g in groups])
        t = np.array([true[g].mean() for g in groups])
        w = np.array([len(g) for g in groups], dtype=np.float64)
        log_m = np.log(np.maximum(m, _MIN_SPEND))
        log_t = np.log(np.maximum(_pool_adjacent_violators(t, w), _MIN_SPEND))
        log_m = _strictly_increasing(log_m)
        log_t = _strictly_increasing(log_t)
        return cls(log_pred=log_m, log_true=log_t)

    @classmethod
    def for_partner(cls, pred, true) -> SpendCalibration | None:
        """The calibration a partner serves with: ``DEFAULT_BINS`` bins, one per row when it has fewer rows than
        that, ``None`` when it has none (the demo's table and the partner's federated evaluation both use this)."""
        n = len(np.asarray(true).reshape(-1))
        return cls.fit(pred, true, bins=min(DEFAULT_BINS, n)) if n else None

    def apply(self, pred) -> np.ndarray:
        pred = np.asarray(pred, dtype=np.float64)
        x = np.log(np.maximum(pred, _MIN_SPEND))
        y = np.interp(x, self.log_pred, self.log_true)
        # np.interp is flat outside the knots; keep slope 1 there (the end knots' ratio) so the map stays strictly
        # increasing and a prediction beyond the last knot still scales like one.
        y = np.where(x < self.log_pred[0], x + (self.log_true[0] - self.log_pred[0]), y)
        y = np.where(x > self.log_pred[-1], x + (self.log_true[-1] - self.log_pred[-1]), y)
        return np.exp(y)


def _pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit of ``values`` (isotonic regression on a short sequence)."""
    blocks: list[list[float]] = []  # [weighted mean, weight, count]
    for v, w in zip(values, weights):
        blocks.append([float(v), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, c2 = blocks.pop()
            v1, w1, c1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, c1 + c2])
    return np.concatenate([np.full(c, v) for v, _, c in blocks])


def _strictly_increasing(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + _STEP)
    return out
