"""BG/NBD, Gamma-Gamma and the trees: published parameters recovered, conditional formulas checked by simulation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.baselines import BetaGeoFitter, BGNBDGammaGamma, GammaGammaFitter, GradientBoostedTrees
from models.baselines.bgnbd import bgnbd_log_likelihood
from models.data.cdnow import CDNOW_CALIBRATION_END, load_cdnow_sample
from models.features import rfm_summary

# Fader, Hardie & Lee (2005), 2,357-customer CDNOW sample, 39-week calibration: r, alpha, a, b and the log-likelihood.
PUBLISHED_BGNBD = (0.243, 4.414, 0.793, 2.426)
PUBLISHED_LL = -9582.4
# Gamma-Gamma on the same sample's 946 repeat buyers (lifetimes' documentation): p, q, v.
PUBLISHED_GG = (6.25, 3.74, 15.44)
TOLERANCE = 0.01  # relative; the published figures are rounded to 3-4 significant digits


@pytest.fixture(scope="module")
def sample_rfm() -> pd.DataFrame:
    return rfm_summary(load_cdnow_sample(), CDNOW_CALIBRATION_END)


def test_bgnbd_recovers_published_cdnow_parameters(sample_rfm):
    assert len(sample_rfm) == 2357
    fit = BetaGeoFitter.fit(sample_rfm["frequency"], sample_rfm["recency"], sample_rfm["T"])
    for got, want in zip(fit.params, PUBLISHED_BGNBD):
        assert got == pytest.approx(want, rel=TOLERANCE)
    assert fit.log_likelihood == pytest.approx(PUBLISHED_LL, abs=0.5)
    total = bgnbd_log_likelihood(fit.params, sample_rfm["frequency"], sample_rfm["recency"], sample_rfm["T"]).sum()
    assert total == pytest.approx(fit.log_likelihood, rel=1e-9)


def test_gamma_gamma_recovers_published_cdnow_parameters(sample_rfm):
    fit = GammaGammaFitter.fit(sample_rfm["frequency"], sample_rfm["monetary_value"])
    for got, want in zip(fit.params, PUBLISHED_GG):
        assert got == pytest.approx(want, rel=TOLERANCE)
    # without repeat purchases the expected spend is the population mean p v / (q - 1)
    p, q, v = fit.params
    assert fit.expected_spend([0], [0])[0] == pytest.approx(p * v / (q - 1))
    # with many repeat purchases it approaches the customer's own mean
    assert fit.expected_spend([500], [40.0])[0] == pytest.approx(40.0, rel=0.02)


def test_bgnbd_conditional_formulas_agree_with_simulation():
    """Law of total expectation: averaged over simulated histories, P(no purchase in the horizon | history) and
    E[purchases in the horizon | history] must equal the simulated future."""
    model = BetaGeoFitter(*PUBLISHED_BGNBD)
    rng = np.random.default_rng(7)
    T = rng.uniform(27, 39, 40_000)
    horizon = 39.0
    freq, rec, future = model.simulate(T, rng, horizon)
    p_none = model.prob_no_purchase(horizon, freq, rec, T)
    expected = model.expected_purchases(horizon, freq, rec, T)
    assert p_none.mean() == pytest.approx((future == 0).mean(), abs=0.006)
    assert expected.mean() == pytest.approx(future.mean(), rel=0.04)
    # one-time buyers are alive for BG/NBD, yet may well not buy: P(no purchase) is not 1 - P(alive)
    one_timers = freq == 0
    assert np.all(model.p_alive(freq[one_timers], rec[one_timers], T[one_timers]) == 1.0)
    assert np.all(p_none[one_timers] > 0.5)


def test_probabilistic_baseline_scores_churn_and_ltv(sample_rfm):
    baseline = BGNBDGammaGamma.fit(sample_rfm, horizon=39.0)
    churn, ltv = baseline.predict(sample_rfm)
    assert churn.shape == ltv.shape == (2357,)
    assert np.all((churn > 0) & (churn < 1)) and np.all(ltv >= 0)
    heavy = sample_rfm["frequency"] >= 5
    assert churn[heavy].mean() < churn[~heavy].mean()
    assert ltv[heavy].mean() > ltv[~heavy].mean()


def test_trees_fit_and_predict():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(800, 4))
    churn = (X[:, 0] + 0.5 * rng.normal(size=800) > 0).astype(int)
    ltv = np.where(churn == 1, 0.0, np.exp(2 + X[:, 1]))
    trees = GradientBoostedTrees(params={"max_iter": 30, "learning_rate": 0.1}).fit(X, churn, ltv)
    prob, value = trees.predict(X)
    assert prob.shape == value.shape == (800,)
    assert np.all(value > 0)
    assert np.corrcoef(prob, churn)[0, 1] > 0.5
