"""The synthetic social-commerce generator: deterministic, non-IID across platforms, and learnable."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from models.data import PROFILES, Windows, generate_platforms
from models.features import build_features
from models.schema import COLUMNS, validate_events


def _assert_same(a: pd.DataFrame, b: pd.DataFrame):
    """Frame equality that compares categoricals by codes (pandas' own check is slow on them)."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for col in a.columns:
        if isinstance(a[col].dtype, pd.CategoricalDtype):
            assert a[col].cat.categories.equals(b[col].cat.categories), col
            assert np.array_equal(a[col].cat.codes.to_numpy(), b[col].cat.codes.to_numpy()), col
        else:
            assert np.array_equal(a[col].to_numpy(), b[col].to_numpy()), col


@pytest.fixture(scope="module")
def platforms():
    return generate_platforms(users_per_platform=2000, seed=0)


def test_same_seed_same_data_other_seed_other_data(platforms):
    again = generate_platforms(users_per_platform=2000, seed=0)
    other = generate_platforms(users_per_platform=2000, seed=1)
    for name, df in platforms.items():
        _assert_same(df, again[name])
        assert len(df) != len(other[name]) or not df["ts"].equals(other[name]["ts"])


def test_a_platform_does_not_depend_on_which_others_are_generated(platforms):
    alone = generate_platforms(platforms=("loyal",), users_per_platform=2000, seed=0)["loyal"]
    _assert_same(alone, platforms["loyal"])


def test_events_fit_the_schema_and_windows(platforms):
    w = Windows.from_days("2024-01-01", 180, 90)
    for df in platforms.values():
        assert list(df.columns) == list(COLUMNS)
        assert validate_events(df, max_error_rate=0.0).n_bad == 0
        assert df.attrs["windows"] == w
        assert df["ts"].is_monotonic_increasing
        assert df["ts"].min() >= w.start and df["ts"].max() < w.holdout_end
        assert df["user_id"].nunique() == 2000
        assert 8 <= len(df) / 2000 <= 40  # modest events per user
    ids = [set(df["user_id"].cat.categories) for df in platforms.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_platforms_differ_in_event_mix_and_spend(platforms):
    mix = {k: df["event_type"].value_counts(normalize=True) for k, df in platforms.items()}
    spend = {k: df.loc[df["event_type"] == "pay", "amount"].mean() for k, df in platforms.items()}
    per_user = {k: len(df) / 2000 for k, df in platforms.items()}
    assert mix["content"]["like"] + mix["content"]["comment"] > 2 * (mix["group_buy"]["like"]
                                                                     + mix["group_buy"]["comment"])
    assert mix["group_buy"]["share"] > 3 * mix["content"]["share"]
    assert mix["group_buy"]["pay"] > 2 * mix["content"]["pay"]
    assert spend["loyal"] > 2 * spend["content"] > 2 * spend["group_buy"] * 0.9
    assert per_user["loyal"] < per_user["group_buy"] < per_user["content"]
    link = {k: (df.groupby("user_id", observed=True)["channel"].first() == "social_link").mean()
            for k, df in platforms.items()}
    assert link["group_buy"] > link["content"] > link["loyal"]


def test_churn_is_learnable_from_rfm_and_social_features(platforms):
    for name, df in platforms.items():
        w = df.attrs["windows"]
        ft = build_features(df, w.calibration_end, w.holdout_end, start=w.start)
        assert len(ft) == 2000 and 0.3 < ft.churn.mean() < 0.9
        train, test = np.arange(1000), np.arange(1000, 2000)
        model = LogisticRegression(max_iter=2000).fit(ft.X[train], ft.churn[train])
        auc = roc_auc_score(ft.churn[test], model.predict_proba(ft.X[test])[:, 1])
        assert 0.7 < auc < 0.95, (name, auc)


def test_sizes_per_platform_and_custom_profiles():
    small = generate_platforms(platforms=("content", PROFILES["loyal"]), users_per_platform={"content": 10,
                                                                                            "loyal": 5})
    assert small["content"]["user_id"].nunique() == 10 and small["loyal"]["user_id"].nunique() == 5
    with pytest.raises(ValueError):
        generate_platforms(platforms=("content", "content"))
