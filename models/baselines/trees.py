"""Gradient-boosted trees on the same feature table as the network: a classifier for churn and a Poisson
regressor for holdout spend (log link, so predictions stay positive and scale like a mean)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

DEFAULT_PARAMS = {
    "learning_rate": 0.05,
    "max_iter": 300,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 40,
    "l2_regularization": 1.0,
    "early_stopping": True,
    "validation_fraction": 0.15,
    "n_iter_no_change": 20,
}


@dataclass
class GradientBoostedTrees:
    """``fit(X, churn, ltv)`` then ``predict(X) -> (churn_prob, ltv_pred)``."""

    params: dict = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    seed: int = 0

    def fit(self, X, churn, ltv) -> "GradientBoostedTrees":
        X = np.asarray(X, dtype=np.float64)
        self.churn_model = HistGradientBoostingClassifier(random_state=self.seed, **self.params)
        self.churn_model.fit(X, np.asarray(churn).astype(int))
        self.ltv_model = HistGradientBoostingRegressor(loss="poisson", random_state=self.seed, **self.params)
        self.ltv_model.fit(X, np.asarray(ltv, dtype=np.float64))
        return self

    def predict(self, X) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        return self.churn_model.predict_proba(X)[:, 1], self.ltv_model.predict(X)
