"""models.calibration: a strictly increasing spend map fitted on a partner's rows, checked on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import SpendCalibration, _pool_adjacent_violators
from models.metrics import decile_mape, normalized_gini


def test_pool_adjacent_violators_hand_case():
    got = _pool_adjacent_violators(np.array([1.0, 3.0, 2.0, 4.0]), np.ones(4))
    assert got.tolist() == [1.0, 2.5, 2.5, 4.0]
    weighted = _pool_adjacent_violators(np.array([5.0, 1.0]), np.array([1.0, 3.0]))
    assert weighted.tolist() == [2.0, 2.0]


def test_a_model_three_times_too_high_is_brought_to_the_true_level():
    rng = np.random.default_rng(0)
    true = rng.lognormal(3.0, 1.0, size=5000) * (rng.random(5000) < 0.4)
    signal = np.log1p(true) + rng.normal(0, 0.5, size=5000)
    pred = 3.0 * np.exp(signal)
    cal = SpendCalibration.fit(pred[:4000], true[:4000])
    served = cal.apply(pred[4000:])
    held_true, held_pred = true[4000:], pred[4000:]
    assert served.sum() / held_true.sum() == pytest.approx(1.0, abs=0.15)
    assert decile_mape(held_true, served) < 0.5 * decile_mape(held_true, held_pred)
    # strictly increasing map: the ranking, hence the Gini, is the model's own
    assert normalized_gini(held_true, served) == pytest.approx(normalized_gini(held_true, held_pred), abs=1e-12)


def test_map_is_strictly_increasing_even_where_the_bins_are_not():
    # true spend falls as the prediction rises in the middle bins: pooled, then stepped, never flat or falling
    pred = np.arange(1, 101, dtype=float)
    true = np.where((pred > 30) & (pred <= 60), 1.0, pred)
    cal = SpendCalibration.fit(pred, true)
    grid = np.exp(np.linspace(-3, 8, 500))  # inside and far outside the knots
    out = cal.apply(grid)
    assert np.all(np.diff(out) > 0)
    # beyond the last knot the end ratio holds (slope 1 in log-log)
    assert out[-1] / grid[-1] == pytest.approx(np.exp(cal.log_true[-1] - cal.log_pred[-1]))


def test_zero_predictions_and_all_zero_bins_stay_finite():
    pred = np.r_[np.zeros(50), np.linspace(1, 10, 50)]
    true = np.r_[np.zeros(60), np.linspace(5, 50, 40)]
    out = SpendCalibration.fit(pred, true).apply(np.r_[0.0, pred])
    assert np.isfinite(out).all() and (out >= 0).all()


@pytest.mark.parametrize(
    "pred, true, message",
    [
        ([1.0, 2.0], [1.0], "differ in length"),
        ([1.0] * 5, [1.0] * 5, "at least 10 rows"),
        ([np.nan] + [1.0] * 10, [1.0] * 11, "finite, non-negative"),
        ([1.0] * 11, [-1.0] + [1.0] * 10, "finite, non-negative"),
    ],
)
def test_bad_input_is_refused_with_the_reason(pred, true, message):
    with pytest.raises(ValueError, match=message):
        SpendCalibration.fit(pred, true)


def test_a_small_partner_calibrates_with_one_bin_per_row_and_none_without_rows():
    pred, true = np.array([1.0, 2.0, 4.0, 8.0, 16.0]), np.array([3.0, 5.0, 9.0, 20.0, 30.0])
    small = SpendCalibration.for_partner(pred, true)
    assert len(small.log_pred) == 5  # five rows: five knots, not a refusal for having fewer than ten
    assert np.allclose(small.apply(pred), true)
    assert len(SpendCalibration.for_partner(np.arange(1.0, 31.0), np.arange(1.0, 31.0)).log_pred) == 10
    assert SpendCalibration.for_partner([], []) is None
