"""Splitting one data set into partners: reproducible, disjoint, complete, and non-IID when asked."""

import numpy as np
import pandas as pd
import pytest

from models.data import generate_platforms, load_cdnow_sample, partition_by_hash, partition_noniid


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
    parts = partition_noniid(sample, 2, by="cohort", seed=0, mixing=0.0)
    _check_disjoint_and_complete(sample, parts)
    first = sample.groupby("user_id")["ts"].min()
    a, b = (first.loc[sorted(u)] for u in _users(parts).values())
    assert a.max() <= b.min()
    assert abs(len(a) - len(b)) <= 1


def test_mixing_one_is_random_assignment(events):
    parts = partition_noniid(events, 4, by="spend_tier", seed=0, mixing=1.0)
    assert list(parts) == ["A", "B", "C", "D"]
    assert all(abs(len(u) - 750) < 120 for u in _users(parts).values())
