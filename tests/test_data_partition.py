"""Splitting one data set into partners: reproducible, disjoint, complete, and non-IID when asked."""

import numpy as np
import pandas as pd
import pytest

from models.data import (
    CDNOW_CALIBRATION_END, generate_platforms, load_cdnow_sample, partition_by_hash, partition_noniid,
)
from models.schema import validate_events


@pytest.fixture(scope="module")
def events():
    return generate_platforms(platforms=("group_buy",), users_per_platform=3000, seed=3)["group_buy"]


def _users(parts):
    return {k: set(v["user_id"].astype(str)) for k, v in parts.items()}


def _check_disjoint_and_complete(events, parts):
    users = _users(parts)
    names = list(users)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not users[a] & users[b]
    assert set().union(*users.values()) == set(events["user_id"].astype(str))
    assert sum(len(p) for p in parts.values()) == len(events)


def test_hash_partition_is_reproducible_disjoint_complete_and_follows_shares(events):
    shares = {"A": 0.5, "B": 0.3, "C": 0.2}
    parts = partition_by_hash(events, shares, seed=7)
    _check_disjoint_and_complete(events, parts)
    assert _users(parts) == _users(partition_by_hash(events, shares, seed=7))
    assert _users(parts) != _users(partition_by_hash(events, shares, seed=8))
    n = {k: len(u) for k, u in _users(parts).items()}
    for k, share in shares.items():
        assert abs(n[k] / 3000 - share) < 0.04
    # A partner's frame carries no other partner's user ids, not even as unused categories.
    assert set(parts["A"]["user_id"].cat.categories) == _users(parts)["A"]


def test_hash_partition_ignores_row_order_and_dtype(events):
    shuffled = events.sample(frac=1.0, random_state=0)
    shuffled["user_id"] = shuffled["user_id"].astype(str)
    shares = {"A": 1, "B": 1}
    assert _users(partition_by_hash(shuffled, shares, seed=1)) == _users(partition_by_hash(events, shares, seed=1))


def test_bad_shares_are_refused(events):
    with pytest.raises(ValueError):
        partition_by_hash(events, {"A": -1.0, "B": 2.0})


def test_spend_tier_partition_is_non_iid_but_mixed(events):
    w = events.attrs["windows"]
    parts = partition_noniid(events, 3, by="spend_tier", seed=0, mixing=0.2, calibration_end=w.calibration_end)
    _check_disjoint_and_complete(events, parts)
    assert _users(parts) == _users(partition_noniid(events, 3, by="spend_tier", seed=0, mixing=0.2,
                                                    calibration_end=w.calibration_end))
    cal = events[(events["ts"] < w.calibration_end) & (events["event_type"] == "pay")]
    spend = cal.groupby(cal["user_id"].astype(str))["amount"].sum()
    median_spend = {k: spend.reindex(list(u), fill_value=0.0).median() for k, u in _users(parts).items()}
    assert median_spend["A"] < median_spend["B"] < median_spend["C"]
    top = set(spend[spend >= spend.quantile(0.8)].index)
    assert all(len(u & top) > 0 for u in _users(parts).values())  # every partner has some big spenders


def test_cohort_partition_orders_first_purchase():
    sample = load_cdnow_sample()
    parts = partition_noniid(sample, 2, by="cohort", seed=0, mixing=0.0, calibration_end=CDNOW_CALIBRATION_END)
    _check_disjoint_and_complete(sample, parts)
    first = sample.groupby("user_id")["ts"].min()
    a, b = (first.loc[sorted(u)] for u in _users(parts).values())
    assert a.max() <= b.min()
    assert abs(len(a) - len(b)) <= 1


def test_mixing_one_is_random_assignment(events):
    parts = partition_noniid(events, 4, by="spend_tier", seed=0, mixing=1.0,
                             calibration_end=events.attrs["windows"].calibration_end)
    assert list(parts) == ["A", "B", "C", "D"]
    assert all(abs(len(u) - 750) < 120 for u in _users(parts).values())


def test_calibration_end_is_required():
    sample = load_cdnow_sample()
    with pytest.raises(TypeError, match="calibration_end"):
        partition_noniid(sample, 2, by="cohort")
    with pytest.raises(ValueError, match="calibration_end is required"):
        partition_noniid(sample, 2, by="spend_tier", calibration_end=None)


def _partner_of(parts) -> dict:
    return {u: k for k, users in _users(parts).items() for u in users}


def _alter_holdout(events, calibration_end, seed: int) -> pd.DataFrame:
    """The same calibration rows; holdout rows thinned, re-typed, re-priced and moved, plus new holdout buyers and
    holdout-only users."""
    rng = np.random.default_rng(seed)
    ev = events.assign(user_id=events["user_id"].astype(str), event_type=events["event_type"].astype(str),
                       channel=events["channel"].astype(str))
    cal, hold = ev[ev["ts"] < calibration_end], ev[ev["ts"] >= calibration_end]
    hold = hold[rng.random(len(hold)) < 0.5].copy()
    hold["event_type"] = rng.choice(["pay", "order", "browse", "share", "refund"], len(hold))
    hold["amount"] = np.round(rng.lognormal(4, 1, len(hold)), 2)
    hold["ts"] = calibration_end + pd.to_timedelta(rng.integers(0, 90 * 86_400, len(hold)), unit="s")
    buyers = rng.choice(cal["user_id"].unique(), 300)
    newcomers = [f"new-{i}" for i in range(200)]
    extra = pd.DataFrame({
        "user_id": np.r_[buyers, newcomers],
        "ts": calibration_end + pd.to_timedelta(rng.integers(0, 90 * 86_400, 500), unit="s"),
        "event_type": "pay", "amount": 500.0, "channel": "app",
    })
    out = pd.concat([cal, hold, extra], ignore_index=True)
    return validate_events(out.sample(frac=1.0, random_state=seed), max_error_rate=0.0).events


@pytest.mark.parametrize("by", ["cohort", "spend_tier"])
def test_holdout_events_do_not_move_anyone(events, by):
    # Before the fix, cohort ranked by the first purchase over all events: a user whose first purchase is in the
    # holdout drifted to the last partner, i.e. the split depended on the outcome a model is scored on.
    w = events.attrs["windows"]
    before = _partner_of(partition_noniid(events, 3, by=by, seed=0, mixing=0.2, calibration_end=w.calibration_end))
    cal_users = set(events.loc[events["ts"] < w.calibration_end, "user_id"].astype(str))
    for seed in (1, 2):
        altered = _alter_holdout(events, w.calibration_end, seed)
        after = _partner_of(partition_noniid(altered, 3, by=by, seed=0, mixing=0.2,
                                             calibration_end=w.calibration_end))
        assert {u: after[u] for u in cal_users} == {u: before[u] for u in cal_users}
    # Without any holdout row at all: the same again.
    no_holdout = events[events["ts"] < w.calibration_end]
    assert _partner_of(partition_noniid(no_holdout, 3, by=by, seed=0, mixing=0.2,
                                        calibration_end=w.calibration_end)) == {u: before[u] for u in cal_users}


def test_cohort_is_the_first_event_not_the_first_purchase():
    day = pd.Timestamp("2024-01-01")
    rows = [("early_browser", 0, "browse", 0.0), ("early_browser", 100, "pay", 5.0),  # buys only in the holdout
            ("mid_buyer", 10, "pay", 5.0), ("late_browser", 20, "like", 0.0), ("late_browser", 21, "pay", 1.0),
            ("holdout_only", 95, "pay", 50.0)]
    df = pd.DataFrame(rows, columns=["user_id", "day", "event_type", "amount"])
    df["ts"] = day + pd.to_timedelta(df.pop("day"), unit="D")
    parts = partition_noniid(validate_events(df).events, 3, by="cohort", mixing=0.0,
                             calibration_end=day + pd.Timedelta(days=90))
    assert _users(parts) == {"A": {"early_browser"}, "B": {"mid_buyer"}, "C": {"late_browser", "holdout_only"}}
    spend = partition_noniid(validate_events(df).events, 3, by="spend_tier", mixing=0.0,
                             calibration_end=day + pd.Timedelta(days=90))
    # Ranked on calibration spend only: early_browser's holdout purchase does not count; holdout_only is in A.
    assert _users(spend) == {"A": {"early_browser", "holdout_only"}, "B": {"late_browser"}, "C": {"mid_buyer"}}
