"""BG/NBD x Gamma-Gamma as one churn/LTV baseline over an RFM summary (frequency, recency, T, monetary_value)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.baselines.bgnbd import BetaGeoFitter
from models.baselines.gamma_gamma import GammaGammaFitter

RFM_COLUMNS = ("frequency", "recency", "T", "monetary_value")


@dataclass(frozen=True)
class BGNBDGammaGamma:
    """Churn score = BG/NBD P(no purchase in the horizon); LTV = E[purchases in the horizon] x Gamma-Gamma E[spend].

    ``horizon`` is in the RFM summary's time unit (weeks for CDNOW: 39).
    """

    bgnbd: BetaGeoFitter
    gamma_gamma: GammaGammaFitter
    horizon: float

    @classmethod
    def fit(cls, rfm: pd.DataFrame, horizon: float) -> "BGNBDGammaGamma":
        missing = [c for c in RFM_COLUMNS if c not in rfm.columns]
        if missing:
            raise ValueError(f"RFM summary lacks columns {missing}")
        bgnbd = BetaGeoFitter.fit(rfm["frequency"], rfm["recency"], rfm["T"])
        gamma_gamma = GammaGammaFitter.fit(rfm["frequency"], rfm["monetary_value"])
        return cls(bgnbd, gamma_gamma, float(horizon))

    def predict(self, rfm: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``(churn_score, ltv_pred)`` per row of ``rfm``."""
        x, t_x, T = rfm["frequency"], rfm["recency"], rfm["T"]
        churn = self.bgnbd.prob_no_purchase(self.horizon, x, t_x, T)
        purchases = self.bgnbd.expected_purchases(self.horizon, x, t_x, T)
        spend = self.gamma_gamma.expected_spend(x, rfm["monetary_value"])
        return churn, purchases * spend
