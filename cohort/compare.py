"""The demo's closing table: the federated DP model against what each partner could do alone, and a pooled
centralized model (the ceiling no partner could build without sharing raw data), on each partner's held-out
eligible users (with synthetic platforms, on a larger fresh sample of each platform's users: ``evaluation``).

The federated model appears twice: as published, and as a partner serves it, with the partner's own spend
calibration (``models.calibration``) fitted on its training rows. One global model gets each non-IID partner's
spend level wrong; the calibration repairs the level (decile MAPE) without touching the partner's ranking, and it
never leaves the partner, so it costs the shared model no privacy budget."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from client.consent_link import ConsentLink
from client.data import EligibleRows, FeatureRows, load_eligible_rows
from client.protocol import lr_decays, record_to_arrays
from models.calibration import SpendCalibration
from models.metrics import evaluate
from models.nets import ChurnLTVNet, set_weights
from models.train import DPConfig, predict, train
from server.job import Job
from server.runner import JobResult


CALIBRATED = "federated, DP, calibrated"


def partner_rows(link: ConsentLink, data, result: JobResult) -> dict[str, EligibleRows]:
    config = result.job.round_config(1)
    return {p: load_eligible_rows(link, data, p, config) for p in data.partners}


def federated_model(result: JobResult, n_features: int) -> ChurnLTVNet:
    job = result.job
    model = ChurnLTVNet(n_features, hidden=job.hidden, ltv_loc_init=job.ltv_loc_init)
    set_weights(model, record_to_arrays(result.arrays))
    return model


def _fresh(job, n_features: int, seed: int) -> ChurnLTVNet:
    torch.manual_seed(seed)
    return ChurnLTVNet(n_features, hidden=job.hidden, ltv_loc_init=job.ltv_loc_init)


def comparison(result: JobResult, rows: dict[str, EligibleRows], epochs: int = 12, recipe: Job | None = None,
               evaluation: Mapping[str, FeatureRows] | None = None) -> list[dict]:  # fmt: skip
    """One row per (partner, model): churn AUC, LTV Gini, decile MAPE on that partner's evaluation users (or on
    ``evaluation[partner]``: other users of the partner, e.g. a larger synthetic sample). The local-only and
    centralized models train ``epochs`` epochs with ``recipe``'s batch, lr, schedule and clipping (default: the
    job's) at the job's ε."""
    job = recipe or result.job
    n_features = next(iter(rows.values())).n_features
    fed = federated_model(result, n_features)
    pooled_X = np.concatenate([r.train.X for r in rows.values()])
    pooled_c = np.concatenate([r.train.churn for r in rows.values()])
    pooled_l = np.concatenate([r.train.ltv for r in rows.values()])
    central = _fresh(job, n_features, 1)
    decay = lr_decays(job.lr_schedule)  # every model trains on the job's schedule
    train(central, pooled_X, pooled_c, pooled_l, epochs=epochs, batch_size=job.batch_size, lr=job.lr,
          lr_decay=decay, seed=1)  # fmt: skip
    out = []
    for partner, r in rows.items():
        local = _fresh(job, n_features, 2)
        dp = DPConfig(target_epsilon=job.target_epsilon, delta=job.delta, max_grad_norm=job.max_grad_norm)
        train(local, r.train.X, r.train.churn, r.train.ltv, epochs=epochs, batch_size=job.batch_size, lr=job.lr,
              lr_decay=decay, dp=dp, seed=2)  # fmt: skip
        served = SpendCalibration.for_partner(predict(fed, r.train.X)[1], r.train.ltv)
        held_out = (evaluation or {}).get(partner, r.evaluation)
        scores = {model: predict(model, held_out.X) for model in (fed, local, central)}
        for name, model, calibration in (("federated, DP", fed, None), (CALIBRATED, fed, served),
                                         ("local only, DP", local, None), ("centralized, no DP", central, None)):
            churn_prob, ltv_pred = scores[model]
            if calibration is not None:
                ltv_pred = calibration.apply(ltv_pred)
            m = evaluate(held_out.churn, churn_prob, held_out.ltv, ltv_pred)
            out.append({"partner": partner, "model": name, "n": len(held_out.churn), **m})
    return out
