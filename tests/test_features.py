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
from models.schema import BEHAVIOURAL_EVENTS, EVENT_TYPES, MONEY_EVENTS, validate_events

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
        "basic_tenure": (L - 2) / L, "basic_first_channel_social_link": 1.0, "basic_first_channel_web": 0.0,
        "beh_channel_social_link": 0.5, "beh_channel_web": 0.5, "beh_channel_app": 0.0,
        "txn_channel_app": 0.0, "txn_channel_web": 0.0,  # no transaction rows
    }
    for name, value in expected_u2.items():
        assert u2[name] == pytest.approx(value, abs=1e-6), name
    assert u1["beh_like_days_since"] == pytest.approx((L - 5) / L)
    assert u1["beh_trend"] == pytest.approx(-np.log1p(30 / 25))
    assert u1["basic_first_channel_app"] == 1.0 and u1["basic_tenure"] == pytest.approx((L - 0.375) / L)
    assert u1["beh_channel_app"] == 1.0 and u1["txn_channel_app"] == 1.0  # like; pays and the refund on app


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


def test_cdnow_columns_are_basic_and_transaction_with_zero_channel_columns():
    # CDNOW rows carry no channel: every channel column is 0 and the rest is tenure + the transaction block.
    ft = build_features(load_cdnow_sample(), CDNOW_CALIBRATION_END, CDNOW_HOLDOUT_END,
                        categories=("basic", "transaction"))
    channel_cols = [j for j, n in enumerate(ft.feature_names) if "_channel_" in n]
    assert [ft.feature_names[j] for j in channel_cols] == (
        [f"basic_first_channel_{c}" for c in ("app", "web", "mini_program", "social_link")]
        + [f"txn_channel_{c}" for c in ("app", "web", "mini_program", "social_link")])
    assert channel_cols == list(range(1, 9)) and not ft.X[:, channel_cols].any()


# --- each category group reads only its own rows --------------------------------------------------------------

@pytest.fixture(scope="module")
def small_platform():
    df = generate_platforms(platforms=("group_buy",), users_per_platform=400, seed=5)["group_buy"]
    ev = df.assign(user_id=df["user_id"].astype(str), event_type=df["event_type"].astype(str),
                   channel=df["channel"].astype(str), item_id=df["item_id"].astype(str))
    return ev, df.attrs["windows"]


def _first_seen_rows(ev: pd.DataFrame, w) -> np.ndarray:
    """Row positions of each user's first-seen record: earliest calibration row, first listed among ties."""
    cal = ev[(ev["ts"] >= w.start) & (ev["ts"] < w.calibration_end)]
    return cal.reset_index().sort_values(["ts", "index"], kind="stable").groupby("user_id")["index"].first().to_numpy()


def _table(ev: pd.DataFrame, w, categories):
    return build_features(validate_events(ev, max_error_rate=0.0).events, w.calibration_end, w.holdout_end,
                          categories=categories, start=w.start)


def test_basic_columns_read_only_the_first_seen_record(small_platform):
    """Basic = the user's first-seen record (earliest calibration row of any type; its ts and channel).  Every
    other row of every user is rewritten: type (behavioural <-> transaction), amount, channel, item, later time
    (inside the calibration window or out into the holdout), some dropped, new ones added after first seen."""
    ev, w = small_platform
    base = _table(ev, w, ("basic",))
    rng = np.random.default_rng(0)
    first = _first_seen_rows(ev, w)
    first_ts = ev.loc[first].set_index("user_id")["ts"]
    others = ev.drop(index=first)
    others = others[rng.random(len(others)) < 0.7].copy()
    m = len(others)
    others["event_type"] = rng.choice(list(EVENT_TYPES), m)
    others["amount"] = np.round(rng.lognormal(3, 1, m), 2)
    others["channel"] = rng.choice(["app", "web", "mini_program", "social_link", "tv"], m)
    others["item_id"] = "changed"
    t0 = first_ts[others["user_id"]].to_numpy()
    seconds = (np.datetime64(w.holdout_end) - t0) / np.timedelta64(1, "s")
    others["ts"] = t0 + np.maximum(1, (rng.random(m) * seconds).astype(np.int64)) * np.timedelta64(1, "s")
    users = rng.choice(ev["user_id"].unique(), 500)
    added = pd.DataFrame({"user_id": users, "event_type": rng.choice(list(EVENT_TYPES), 500),
                          "amount": 9.99, "channel": "web",
                          "ts": first_ts[users].to_numpy() + pd.Timedelta(hours=1)})
    altered = pd.concat([ev.loc[first], others, added], ignore_index=True)
    altered = altered.sample(frac=1.0, random_state=1)
    again = _table(altered, w, ("basic",))
    assert again.feature_names == base.feature_names == ["basic_tenure"] + [
        f"basic_first_channel_{c}" for c in ("app", "web", "mini_program", "social_link")]
    assert np.array_equal(again.user_ids, base.user_ids)
    assert np.array_equal(again.X, base.X)
    # ...while the other groups do see the change.
    assert not np.array_equal(_table(altered, w, ("behavioural",)).X, _table(ev, w, ("behavioural",)).X)


@pytest.mark.parametrize("group, changed", [("behavioural", MONEY_EVENTS), ("transaction", BEHAVIOURAL_EVENTS)])
def test_behavioural_and_transaction_columns_read_only_their_own_rows(small_platform, group, changed):
    """Rows of the other group are rewritten inside the calibration window (so no user loses a row): time, channel,
    item, amount and type (within that other group); plus new rows of that group."""
    ev, w = small_platform
    base = _table(ev, w, (group,))
    rng = np.random.default_rng(1)
    other = ev["event_type"].isin(changed) & (ev["ts"] < w.calibration_end)
    alt = ev.copy()
    k = int(other.sum())
    alt.loc[other, "event_type"] = rng.choice(list(changed), k)
    alt.loc[other, "amount"] = np.round(rng.lognormal(3, 1, k), 2)
    alt.loc[other, "channel"] = rng.choice(["app", "web", "tv"], k)
    alt.loc[other, "ts"] = w.start + pd.to_timedelta(rng.integers(0, 180 * 86_400, k), unit="s")
    users = rng.choice(ev["user_id"].unique(), 300)
    added = pd.DataFrame({"user_id": users, "event_type": rng.choice(list(changed), 300), "amount": 5.0,
                          "channel": "app", "ts": w.start + pd.to_timedelta(rng.integers(0, 180, 300), unit="D")})
    again = _table(pd.concat([alt, added], ignore_index=True), w, (group,))
    assert np.array_equal(again.user_ids, base.user_ids) and np.array_equal(again.X, base.X)


# --- holdout rows never reach X -------------------------------------------------------------------------------

def test_features_of_one_seed_with_the_holdout_of_another_are_bit_identical():
    w = generate_platforms(platforms=("content",), users_per_platform=1, seed=0)["content"].attrs["windows"]
    a = generate_platforms(platforms=("content",), users_per_platform=800, seed=0)["content"]
    b = generate_platforms(platforms=("content",), users_per_platform=800, seed=1)["content"]
    spliced = pd.concat([a[a["ts"] < w.calibration_end], b[b["ts"] >= w.calibration_end]], ignore_index=True)
    ft_a = build_features(a, w.calibration_end, w.holdout_end, start=w.start)
    ft_s = build_features(spliced, w.calibration_end, w.holdout_end, start=w.start)
    assert np.array_equal(ft_a.user_ids, ft_s.user_ids) and ft_a.X.tobytes() == ft_s.X.tobytes()
    assert not np.array_equal(ft_a.ltv, ft_s.ltv)  # the targets did change


_ROW = st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), st.floats(-5, 100), st.sampled_from(EVENT_TYPES),
                 st.floats(0, 500), st.sampled_from(["app", "web", "social_link", None]))


@settings(max_examples=80, deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=40), st.lists(_ROW, max_size=20), st.integers(0, 2**32 - 1),
       st.booleans())
def test_altering_holdout_rows_leaves_X_bit_identical(rows, added, seed, default_start):
    """Holdout (and later) rows are dropped, re-typed, re-priced, moved anywhere from calibration_end on, and new
    ones added, for known and new users, interleaved at random positions among the calibration rows (whose own
    order is kept); X and the row set stay the same to the bit."""
    df = pd.DataFrame(rows, columns=["user_id", "day", "event_type", "amount", "channel"])
    rng = np.random.default_rng(seed)
    late = df["day"] >= L
    changed = df[late].copy()
    changed["event_type"] = rng.choice(list(EVENT_TYPES), len(changed))
    changed["amount"] = rng.random(len(changed)) * 100
    changed["day"] = L + rng.random(len(changed)) * 40  # anywhere from calibration_end on
    changed["channel"] = rng.choice(["app", "web", "mini_program"], len(changed))
    changed = changed[rng.random(len(changed)) < 0.7]
    extra = pd.DataFrame(added, columns=df.columns).assign(day=lambda x: L + x["day"].abs() % 50)
    extra["user_id"] = np.where(rng.random(len(extra)) < 0.5, extra["user_id"], "newcomer")
    cal = df[~late]
    new_rows = pd.concat([changed, extra], ignore_index=True)
    key = np.r_[np.arange(len(cal)), rng.random(len(new_rows)) * (len(cal) + 1) - 0.5]
    altered = pd.concat([cal, new_rows], ignore_index=True).iloc[np.argsort(key, kind="stable")]
    start = None if default_start and len(cal) else START  # the default start is the first event's day

    def table(frame):
        frame = frame.assign(ts=frame["day"].map(_at)).drop(columns="day")
        return build_features(validate_events(frame).events, CAL_END, HOLD_END, start=start)

    base, again = table(df), table(altered)
    assert base.user_ids.tolist() == again.user_ids.tolist()
    assert base.feature_names == again.feature_names
    assert base.X.tobytes() == again.X.tobytes()
