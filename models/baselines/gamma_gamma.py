"""Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV"), fitted by maximum likelihood.

A customer's transaction values are Gamma(p, nu) with nu ~ Gamma(q, v) across customers. For ``x`` repeat
purchases with mean value ``m`` (lifetimes ``monetary_value``: mean of the repeat purchases, first one excluded)::

    LL = lnG(p x + q) - lnG(p x) - lnG(q) + q ln v + (p x - 1) ln m + p x ln x - (p x + q) ln(x m + v)

and the expected mean transaction value given the history is::

    E[M | x, m] = p (v + x m) / (p x + q - 1)          (= p v / (q - 1), the population mean, when x = 0)

Only customers with ``x > 0`` are used to fit; the model assumes spend is independent of purchase frequency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from models.baselines.mle import fit_log_params


def gamma_gamma_log_likelihood(params, frequency, monetary_value) -> np.ndarray:
    """Per-customer Gamma-Gamma log-likelihood at ``params = (p, q, v)`` (customers with x > 0, m > 0)."""
    p, q, v = params
    x = np.asarray(frequency, dtype=np.float64)
    m = np.asarray(monetary_value, dtype=np.float64)
    px = p * x
    return (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * np.log(v)
        + (px - 1) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(x * m + v)
    )


@dataclass(frozen=True)
class GammaGammaFitter:
    """Fitted Gamma-Gamma parameters; ``GammaGammaFitter.fit(frequency, monetary_value)`` estimates them."""

    p: float
    q: float
    v: float
    log_likelihood: float = float("nan")

    @property
    def params(self) -> tuple[float, float, float]:
        return (self.p, self.q, self.v)

    @classmethod
    def fit(cls, frequency, monetary_value, initial=(1.0, 1.0, 1.0)) -> "GammaGammaFitter":
        x = np.asarray(frequency, dtype=np.float64)
        m = np.asarray(monetary_value, dtype=np.float64)
        keep = (x > 0) & (m > 0)
        x, m = x[keep], m[keep]
        if len(x) < 3:
            raise ValueError("Gamma-Gamma needs several customers with repeat purchases")

        best = fit_log_params(lambda params: -gamma_gamma_log_likelihood(params, x, m).sum(), initial)
        p, q, v = np.exp(best.x)
        if q <= 1:
            raise ValueError(f"fitted q = {q:.3f} <= 1: the population mean spend is undefined")
        return cls(float(p), float(q), float(v), float(-best.fun))

    def expected_spend(self, frequency, monetary_value) -> np.ndarray:
        """E[mean transaction value | x, m] (the population mean for customers without repeat purchases)."""
        p, q, v = self.params
        x = np.asarray(frequency, dtype=np.float64)
        m = np.where(x > 0, np.asarray(monetary_value, dtype=np.float64), 0.0)
        return p * (v + x * m) / (p * x + q - 1)
