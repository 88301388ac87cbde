"""Per-user features and targets: hand-computed cases, category filtering, and CDNOW's known RFM figures."""

import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data import (
    CDNOW_CALIBRATION_END, CDNOW_HOLDOUT_END, generate_platforms, load_cdnow, load_cdnow_sample,
)
from models.features import CATEGORIES, build_features, feature_names, rfm_summary
from models.schema import EVENT_TYPES, validate_events

START, CAL_END, HOLD_END = pd.Timestamp("2024-01-01"), pd.Timestamp("2024-03-01"), pd.Timestamp("2024-04-01")
L = 60.0  # days in the calibration window


def _at(day: float) -> pd.Timestamp:
    return START + pd.Timedelta(days=day)


def _hand_events() -> pd.DataFrame:
    rows = [  # user, day, event type, amount, channel
        ("u1", 0.375, "pay", 10.0, "app"), ("u1", 0.625, "pay", 20.0, "app"), ("u1", 5, "like", 0, "app"),
        ("u1", 10.5, "pay", 30.0, "app"), ("u1", 40, "refund", 5.0, "app"),
        ("u1", 65, "pay", 40.0, "app"), ("u1", 66, "refund", 10.0, "app"),  # holdout
        ("u2", 2, "browse", 0, "social_link"), ("u2", 45, "share", 0, "web"),
        ("u2", 70, "browse", 0, "web"),  # holdout
        ("u3", 61, "browse", 0, "app"),  # holdout only: no row
        ("u4", -12, "pay", 99.0, "app"),  # before start: no row
        ("u1", 95, "pay", 1000.0, "app"),  # after the holdout: ignored
    ]
    df = pd.DataFrame(rows, columns=["user_id", "day", "event_type", "amount", "channel"])
    df["ts"] = df.pop("day").map(_at)
    return validate_events(df).events


@pytest.fixture(scope="module")
def hand():
    return build_features(_hand_events(), CAL_END, HOLD_END, start=START).to_frame()


def test_rows_are_users_with_a_calibration_event(hand):
    assert list(hand.index) == ["u1", "u2"]


def test_targets_by_hand(hand):
    assert hand["churn"].tolist() == [0.0, 1.0]
    assert hand["ltv"].tolist() == [30.0, 0.0]  # 40 paid - 10 refunded; the later 1000 is outside the holdout
    assert hand["calibration_value"].tolist() == [55.0, 0.0]


def test_transaction_features_by_hand(hand):
    u1, u2 = hand.loc["u1"], hand.loc["u2"]
    expected_u1 = {
        "txn_purchases": np.log1p(3), "txn_frequency": np.log1p(1),  # two purchase days
        "txn_days_since_purchase": (L - 10.5) / L, "txn_purchase_span": (10.5 - 0.375) / L,
        "txn_T": (L - 0.375) / L, "txn_spend_total": np.log1p(60), "txn_spend_mean": np.log1p(30),
        "txn_spend_max": np.log1p(30), "txn_refunds": np.log1p(1), "txn_refund_share": 5 / 60,
        "txn_purchases_recent": 0.0, "txn_spend_recent": 0.0,
        "txn_purchase_trend": np.log1p(0) - np.log1p(3 * 30 / (30 - 0.375)),
    }
    for name, value in expected_u1.items():
        assert u1[name] == pytest.approx(value, abs=1e-6), name
    assert u2["txn_days_since_purchase"] == 1.0 and u2["txn_T"] == 0.0 and u2["txn_spend_total"] == 0.0


def test_behavioural_and_basic_features_by_hand(hand):
    u1, u2 = hand.loc["u1"], hand.loc["u2"]
    expected_u2 = {
        "beh_browse_count": np.log1p(1), "beh_browse_days_since": (L - 2) / L,
        "beh_share_count": np.log1p(1), "beh_share_days_since": (L - 45) / L, "beh_like_days_since": 1.0,
        "beh_events": np.log1p(2), "beh_active_days": np.log1p(2), "beh_days_since_any": (L - 45) / L,
        "beh_events_recent": np.log1p(1), "beh_trend": np.log1p(1) - np.log1p(30 / 28),
        "beh_social_per_active_day": np.log1p(0.5), "beh_social_share": 0.5, "beh_social_recent": np.log1p(1),
        "basic_tenure": (L - 2) / L, "basic_channel_social_link": 0.5, "basic_channel_web": 0.5,
        "basic_channel_app": 0.0, "basic_first_channel_social_link": 1.0, "basic_first_channel_web": 0.0,
    }
    for name, value in expected_u2.items():
        assert u2[name] == pytest.approx(value, abs=1e-6), name
    assert u1["beh_like_days_since"] == pytest.approx((L - 5) / L)
    assert u1["beh_trend"] == pytest.approx(-np.log1p(30 / 25))
    assert u1["basic_channel_app"] == 1.0 and u1["basic_first_channel_app"] == 1.0


def test_only_consented_categories_are_emitted():
    events = _hand_events()
    full = build_features(events, CAL_END, HOLD_END, start=START)
    assert set(full.feature_categories) == set(CATEGORIES)
    only_txn = build_features(events, CAL_END, HOLD_END, categories=("transaction",), start=START)
    assert set(only_txn.feature_categories) == {"transaction"}
    assert all(n.startswith("txn_") for n in only_txn.feature_names)
    assert only_txn.feature_names == feature_names(("transaction",))
    narrowed = full.with_categories(("transaction",))
    assert narrowed.feature_names == only_txn.feature_names and np.array_equal(narrowed.X, only_txn.X)
    assert np.array_equal(only_txn.churn, full.churn)  # targets do not depend on the categories
    with pytest.raises(ValueError):
        build_features(events, CAL_END, HOLD_END, categories=("biometric",))


def test_columns_do_not_depend_on_the_data():
    cdnow = build_features(load_cdnow_sample(), CDNOW_CALIBRATION_END, CDNOW_HOLDOUT_END)
    synthetic = build_features(_hand_events(), CAL_END, HOLD_END, start=START)
    assert cdnow.feature_names == synthetic.feature_names == feature_names()


def test_select_and_subset_users():
    ft = build_features(_hand_events(), CAL_END, HOLD_END, start=START)
    sub = ft.subset_users(["u2", "nobody"])
    assert sub.user_ids.tolist() == ["u2"] and sub.X.shape == (1, ft.X.shape[1]) and sub.churn.tolist() == [1.0]
    assert ft.select(np.array([True, False])).user_ids.tolist() == ["u1"]
    assert ft.select([1, 0]).ltv.tolist() == [0.0, 30.0]


def test_cdnow_targets_match_a_direct_computation_and_build_fast():
    events = load_cdnow()
    t0 = time.perf_counter()
    ft = build_features(events, CDNOW_CALIBRATION_END, CDNOW_HOLDOUT_END)
    assert time.perf_counter() - t0 < 5.0
    assert len(ft) == 23_570 and ft.X.dtype == np.float32 and np.isfinite(ft.X).all()
    holdout = events[(events["ts"] >= CDNOW_CALIBRATION_END) & (events["ts"] < CDNOW_HOLDOUT_END)]
    spend = holdout.groupby("user_id")["amount"].sum()
    frame = ft.to_frame()
    assert frame["churn"].sum() == 23_570 - holdout["user_id"].nunique()
    np.testing.assert_allclose(frame["ltv"], spend.reindex(frame.index, fill_value=0.0), rtol=1e-6)
    assert 0.6 < ft.churn.mean() < 0.8


def test_rfm_summary_on_the_cdnow_sample_known_customers():
    rfm = rfm_summary(load_cdnow_sample(), CDNOW_CALIBRATION_END)
    assert len(rfm) == 2_357
    # Customer 00004 (sample id 1): 1997-01-01 $29.33, 01-18 $29.73, 08-02 $14.96 (12-12 is in the holdout).
    assert rfm.loc["00004"].tolist() == pytest.approx([2, 213 / 7, 272 / 7, (29.73 + 14.96) / 2])
    # Customer 00314: 01-02 $3.99, then two orders on 01-13 ($166.89 + $60.25) = one repeat purchase day.
    assert rfm.loc["00314"].tolist() == pytest.approx([1, 11 / 7, 271 / 7, 166.89 + 60.25])
    # Customer 00619: 24 transactions on 20 days between 02-03 and 09-29.
    assert rfm.loc["00619", ["frequency", "recency", "T"]].tolist() == pytest.approx([19, 238 / 7, 239 / 7])
    assert rfm_summary(load_cdnow_sample(), CDNOW_CALIBRATION_END, time_unit="D").loc["00004", "T"] == 272


def test_rfm_summary_matches_a_plain_pandas_reference():
    events = load_cdnow_sample()
    cal = events[events["ts"] < CDNOW_CALIBRATION_END]
    days = cal.groupby(["user_id", "ts"])["amount"].sum().reset_index()
    g = days.groupby("user_id")
    last_day = CDNOW_CALIBRATION_END - pd.Timedelta(days=1)
    reference = pd.DataFrame({
        "frequency": g.size() - 1.0,
        "recency": (g["ts"].max() - g["ts"].min()).dt.days / 7,
        "T": (last_day - g["ts"].min()).dt.days / 7,
        "monetary_value": ((g["amount"].sum() - g["amount"].first()) / (g.size() - 1)).fillna(0.0),
    })
    pd.testing.assert_frame_equal(rfm_summary(events, CDNOW_CALIBRATION_END), reference, check_names=False)


def test_synthetic_features_stay_in_a_fixed_range():
    df = generate_platforms(users_per_platform=1000, seed=2)["group_buy"]
    w = df.attrs["windows"]
    ft = build_features(df, w.calibration_end, w.holdout_end, start=w.start)
    assert np.isfinite(ft.X).all() and ft.X.min() >= -6 and ft.X.max() <= 12


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.floats(-5, 100),
                          st.sampled_from(EVENT_TYPES), st.floats(0, 500)), min_size=1, max_size=40))
def test_invariants_on_random_event_logs(rows):
    df = pd.DataFrame(rows, columns=["user_id", "day", "event_type", "amount"])
    df["ts"] = df.pop("day").map(_at)
    ft = build_features(validate_events(df).events, CAL_END, HOLD_END, start=START)
    in_calibration = df[(df["ts"] >= START) & (df["ts"] < CAL_END)]["user_id"]
    assert sorted(ft.user_ids.tolist()) == sorted(set(in_calibration))
    assert np.isfinite(ft.X).all() and (ft.ltv >= 0).all() and set(np.unique(ft.churn)) <= {0.0, 1.0}
    assert ft.X.shape == (len(ft), len(feature_names()))
