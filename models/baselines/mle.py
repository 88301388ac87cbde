"""Maximum-likelihood fit shared by the probabilistic baselines (BG/NBD, Gamma-Gamma): positive parameters,
searched on the log scale."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import optimize


def fit_log_params(neg_log_likelihood: Callable[[np.ndarray], float], initial: Sequence[float]):
    """Minimise ``neg_log_likelihood(exp(log_params))`` over the log-parameters from ``log(initial)``: Nelder-Mead
    first (robust on these flat, curved likelihoods), then L-BFGS-B from its end point; returns the better
    ``scipy.optimize.OptimizeResult`` (``x`` on the log scale, ``fun`` the negative log-likelihood). A non-finite
    likelihood counts as 1e300, so the search steps away from parameters where the closed form overflows."""

    def objective(log_params):
        value = neg_log_likelihood(np.exp(log_params))
        return value if np.isfinite(value) else 1e300

    start = np.log(np.asarray(initial, dtype=np.float64))
    options = {"xatol": 1e-8, "fatol": 1e-8, "maxiter": 20000}
    res = optimize.minimize(objective, start, method="Nelder-Mead", options=options)
    res2 = optimize.minimize(objective, res.x, method="L-BFGS-B")
    return res2 if res2.fun <= res.fun else res
