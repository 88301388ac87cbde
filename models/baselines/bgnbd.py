"""BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way"), fitted by maximum likelihood.

Per customer, from the calibration window (lifetimes conventions, time in weeks): ``x`` = frequency (repeat
purchase days), ``t_x`` = recency (first to last purchase), ``T`` = age (first purchase to the end of calibration).

Model: while alive, purchases are Poisson with rate ``lambda ~ Gamma(r, alpha)``; after each purchase the customer
drops out with probability ``p ~ Beta(a, b)``. Individual log-likelihood (paper eq. 6)::

    LL = lnG(r+x) - lnG(r) + r ln(alpha) + lnG(a+b) + lnG(b+x) - lnG(b) - lnG(a+b+x)
         + ln[ (alpha+T)^-(r+x)  +  1[x>0] * a/(b+x-1) * (alpha+t_x)^-(r+x) ]

Conditional quantities for a holdout window of length ``t`` after ``T``:

* ``P(alive at T) = 1 / (1 + 1[x>0] * a/(b+x-1) * ((alpha+T)/(alpha+t_x))^(r+x))``;
* ``E[Y(t)]`` (paper eq. 10) = (a+b+x-1)/(a-1) * [1 - ((alpha+T)/(alpha+T+t))^(r+x)
  * 2F1(r+x, b+x; a+b+x-1; t/(alpha+T+t))] * P(alive at T);
* ``P(no purchase in (T, T+t]) = 1 - P(alive) * (1 - ((alpha+T)/(alpha+T+t))^(r+x))``: a customer alive at ``T``
  can only drop out right after a purchase, so "no purchase" means no Poisson event, whose probability given the
  history is ``E[exp(-lambda t)]`` under the posterior ``lambda ~ Gamma(r+x, alpha+T)``. This, not
  ``1 - P(alive)``, is the churn score (FACTS.md: one-time buyers are "certainly alive" under BG/NBD).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from models.baselines.mle import fit_log_params


def _arrays(*xs):
    return [np.asarray(x, dtype=np.float64).reshape(-1) for x in xs]


def bgnbd_log_likelihood(params, frequency, recency, T) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood at ``params = (r, alpha, a, b)``."""
    r, alpha, a, b = params
    x, t_x, T = _arrays(frequency, recency, T)
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    a4 = np.full_like(x, -np.inf)
    xr = x[repeat]
    a4[repeat] = np.log(a) - np.log(b + xr - 1) - (r + xr) * np.log(alpha + t_x[repeat])
    return a1 + a2 + np.logaddexp(a3, a4)


@dataclass(frozen=True)
class BetaGeoFitter:
    """Fitted BG/NBD parameters; ``BetaGeoFitter.fit(frequency, recency, T)`` estimates them."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = float("nan")

    @property
    def params(self) -> tuple[float, float, float, float]:
        return (self.r, self.alpha, self.a, self.b)

    @classmethod
    def fit(cls, frequency, recency, T, initial=(1.0, 1.0, 1.0, 1.0)) -> "BetaGeoFitter":
        """Maximum likelihood over log-parameters (Nelder-Mead, then L-BFGS-B polish). Identical
        ``(x, t_x, T)`` rows are collapsed and weighted, so large populations fit in well under a second."""
        x, t_x, T = _arrays(frequency, recency, T)
        if np.any(x < 0) or np.any(t_x < 0) or np.any(T < t_x) or np.any((x == 0) & (t_x != 0)):
            raise ValueError("need 0 <= recency <= T, frequency >= 0, recency = 0 when frequency = 0")
        keys, counts = np.unique(np.column_stack([x, t_x, T]), axis=0, return_counts=True)
        ux, ut, uT = keys.T
        w = counts.astype(np.float64)

        best = fit_log_params(lambda params: -(w * bgnbd_log_likelihood(params, ux, ut, uT)).sum(), initial)
        r, alpha, a, b = np.exp(best.x)
        return cls(float(r), float(alpha), float(a), float(b), float(-best.fun))

    def p_alive(self, frequency, recency, T) -> np.ndarray:
        """P(customer is still alive at ``T``) given the calibration history."""
        r, alpha, a, b = self.params
        x, t_x, T = _arrays(frequency, recency, T)
        ratio = np.zeros_like(x)
        repeat = x > 0
        xr = x[repeat]
        ratio[repeat] = np.exp(
            np.log(a) - np.log(b + xr - 1) + (r + xr) * (np.log(alpha + T[repeat]) - np.log(alpha + t_x[repeat]))
        )
        return 1.0 / (1.0 + ratio)

    def expected_purchases(self, t: float, frequency, recency, T) -> np.ndarray:
        """E[number of purchases in (T, T+t]] given the history (paper eq. 10)."""
        r, alpha, a, b = self.params
        x, t_x, T = _arrays(frequency, recency, T)
        z = t / (alpha + T + t)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        bracket = 1.0 - np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t))) * hyp
        value = (a + b + x - 1) / (a - 1) * bracket * self.p_alive(x, t_x, T)
        return np.maximum(value, 0.0)

    def prob_no_purchase(self, t: float, frequency, recency, T) -> np.ndarray:
        """P(no purchase in (T, T+t]) given the history: the BG/NBD churn score."""
        r, alpha, _, _ = self.params
        x, t_x, T = _arrays(frequency, recency, T)
        no_event_if_alive = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t)))
        return 1.0 - self.p_alive(x, t_x, T) * (1.0 - no_event_if_alive)

    def simulate(self, T, rng: np.random.Generator, horizon: float = 0.0):
        """Draw ``(frequency, recency, future_purchases)`` for customers of ages ``T`` (weeks) from the model:
        calibration history over ``[0, T]`` and the purchase count in ``(T, T+horizon]`` (used by tests)."""
        (T,) = _arrays(T)
        n = len(T)
        lam = rng.gamma(self.r, 1.0 / self.alpha, n)
        p = rng.beta(self.a, self.b, n)
        freq = np.zeros(n)
        rec = np.zeros(n)
        future = np.zeros(n)
        now = np.zeros(n)
        alive = np.ones(n, dtype=bool)
        end = T + horizon
        while alive.any():
            idx = np.flatnonzero(alive)
            now[idx] += rng.exponential(1.0 / lam[idx])
            past_end = now[idx] > end[idx]
            alive[idx[past_end]] = False
            bought = idx[~past_end]
            in_cal = now[bought] <= T[bought]
            freq[bought[in_cal]] += 1
            rec[bought[in_cal]] = now[bought[in_cal]]
            future[bought[~in_cal]] += 1
            dies = rng.random(len(bought)) < p[bought]
            alive[bought[dies]] = False
        return freq, rec, future
