"""The synthetic social-commerce generator: deterministic, non-IID across platforms, and learnable."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from models.data import PROFILES, Windows, generate_platforms
from models.data import generator
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


# --- the documented holdout mechanism: purchases rise with the social signal s -----------------------------------

def _per_user(df: pd.DataFrame):
    """(s, holdout pay count) per user, from the data: s = log1p(likes + comments + shares in the last 30
    calibration days), as the module docstring defines it."""
    w = df.attrs["windows"]
    users = df["user_id"].cat.categories
    code = df["user_id"].cat.codes.to_numpy()
    last30 = ((df["ts"] >= w.calibration_end - pd.Timedelta(days=30)) & (df["ts"] < w.calibration_end)
              & df["event_type"].isin(["like", "comment", "share"])).to_numpy()
    hold_pay = ((df["ts"] >= w.calibration_end) & (df["event_type"] == "pay")).to_numpy()
    s = np.log1p(np.bincount(code[last30], minlength=len(users)))
    return s, np.bincount(code[hold_pay], minlength=len(users))


def _generate(**constants):
    old = {k: getattr(generator, k) for k in constants}
    try:
        for k, v in constants.items():
            setattr(generator, k, v)
        return generate_platforms(platforms=("content",), users_per_platform=4000, seed=11)["content"]
    finally:
        for k, v in old.items():
            setattr(generator, k, v)


@pytest.fixture(scope="module")
def social_runs():
    return _generate(), _generate(SOCIAL_RATE_EFFECT=0.0), _generate(SOCIAL_SPEND_EFFECT=0.0)


def test_holdout_purchases_rise_with_the_social_signal(social_runs):
    df = social_runs[0]
    s, bought = _per_user(df)
    assert (s > 0).mean() > 0.2  # enough socially active users to see anything
    # Observed: holdout purchases per user grow across groups of rising s (confounded by engagement, but rising).
    groups = [bought[s == 0].mean(), bought[(s > 0) & (s <= np.log1p(2))].mean(), bought[s > np.log1p(2)].mean()]
    assert groups[0] < groups[1] < groups[2], groups


def test_the_social_rate_effect_is_the_documented_one(social_runs):
    """Same seed with SOCIAL_RATE_EFFECT = 0: the calibration behaviour is identical, so per user the holdout
    purchase counts of the two runs are Poisson with means m and m * exp(0.35 s).  Given their sum, the count of
    the real run is Binomial with logit = 0.35 s (no intercept): fit that slope."""
    real, flat, _ = social_runs
    w = real.attrs["windows"]
    # The calibration rows agree except the add_to_cart events of holdout purchases (up to 2 days before one, so
    # possibly just before calibration_end) and the channel of "stray" rows (drawn after all rows exist).
    cols = ["user_id", "ts", "event_type", "amount"]
    cal = lambda d: d.loc[(d["ts"] < w.calibration_end) & (d["event_type"] != "add_to_cart"), cols]  # noqa
    pd.testing.assert_frame_equal(cal(real).reset_index(drop=True), cal(flat).reset_index(drop=True))
    s, y1 = _per_user(real)
    s0, y0 = _per_user(flat)
    assert np.array_equal(s, s0)
    n = y1 + y0

    def neg_log_lik(beta):
        return -(y1 * beta * s - n * np.logaddexp(0.0, beta * s)).sum()

    grid = np.linspace(-1, 1, 2001)
    beta = grid[np.argmin([neg_log_lik(b) for b in grid])]
    assert abs(beta - generator.SOCIAL_RATE_EFFECT) < 0.07, beta
    assert y1.sum() > 1.1 * y0.sum()  # more purchases overall with the effect on


def test_the_social_spend_effect_scales_every_holdout_amount(social_runs):
    """With SOCIAL_SPEND_EFFECT = 0 the holdout purchases are the same draws, only their amounts differ, by
    exp(0.1 s) per user (up to rounding to cents)."""
    real, _, flat = social_runs
    w = real.attrs["windows"]
    pays = lambda d: d[(d["ts"] >= w.calibration_end) & (d["event_type"] == "pay")].reset_index(drop=True)  # noqa
    a, b = pays(real), pays(flat)
    assert np.array_equal(a["user_id"].cat.codes, b["user_id"].cat.codes) and a["ts"].equals(b["ts"])
    s, _ = _per_user(real)
    expected = np.exp(generator.SOCIAL_SPEND_EFFECT * s[a["user_id"].cat.codes.to_numpy()])
    big = b["amount"].to_numpy() > 5  # rounding to cents blurs tiny amounts
    np.testing.assert_allclose(a["amount"].to_numpy()[big] / b["amount"].to_numpy()[big], expected[big], rtol=2e-3)
