"""Training settings for the CDNOW federated benchmark, compared in an in-process FedAvg emulation (cross-fitted).

The job of ``bench_federated_cdnow.py`` (cohort partners, 30 rounds x 2 local epochs, batch 1024, lr 0.01, cosine,
clip 30, ε=3 per partner, RDP) with one or more settings changed, run through ``fedavg_emulation.fedavg`` on every
fold of the 5 and scored on the pooled out-of-fold customers, with and without each partner's own spend
calibration (``models.calibration``). Seconds per setting instead of a Flower job per fold; confirm a winner with
the real job before adopting it.

    python benchmarks/bench_federated_search.py --settings "max_grad_norm=20;max_grad_norm=20,accountant=prv" \\
        [--seeds 0,1] [--by cohort] [--folds 0,1,2,3,4]

A setting is ``field=value`` pairs of ``server.job.Job`` (``hidden=32x16`` for tuples) or ``ltv_weight`` (the ZILN
loss weight in ``models.train.train``), comma-separated; ``base`` is the job unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch
from fedavg_emulation import fedavg  # first: it puts the repository on sys.path

from client.cdnow import CDNOWPartners  # noqa: E402
from models.calibration import SpendCalibration  # noqa: E402
from models.metrics import evaluate  # noqa: E402
from models.data.cdnow import CDNOW_CATEGORIES as CATEGORIES  # noqa: E402
from models.train import predict  # noqa: E402
from server.job import Job  # noqa: E402
from server.runner import initial_net  # noqa: E402
BASE = dict(rounds=30, local_epochs=2, batch_size=1024, lr=0.01, lr_schedule="cosine", max_grad_norm=30.0,
            target_epsilon=3.0, delta=1e-5, ltv_loc_init=4.0, categories=CATEGORIES)  # fmt: skip


def parse_setting(text: str) -> dict:
    """``"max_grad_norm=20,hidden=32x16"`` -> ``{"max_grad_norm": 20.0, "hidden": (32, 16)}`` (``base`` -> {})."""
    if text.strip() == "base":
        return {}
    fields = {f.name: f for f in dataclasses.fields(Job)}
    out = {}
    for pair in text.split(","):
        key, _, value = pair.partition("=")
        key = key.strip()
        if key == "ltv_weight":
            out[key] = float(value)
        elif key == "hidden":
            out[key] = tuple(int(h) for h in value.split("x"))
        elif key in fields:
            default = getattr(Job(job_id="x"), key)
            out[key] = type(default)(value) if not isinstance(default, bool) else value == "true"
        else:
            raise SystemExit(f"unknown setting {key!r}: a server.job.Job field or ltv_weight")
    return out


def run(setting: dict, seed: int, by: str, folds: list[int]) -> dict:
    """Pooled out-of-fold metrics of the emulated federated model (raw and calibrated) and per-partner Gini."""
    setting = dict(setting)
    ltv_weight = setting.pop("ltv_weight", 1.0)
    job = Job(job_id="search", seed=seed, **{**BASE, **setting})
    table, _, partner_of_row = CDNOWPartners(by=by, test_fold=folds[0]).all_rows()
    n, n_features = table.X.shape
    churn_s, ltv_s, ltv_cal = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    scored = np.zeros(n, dtype=bool)

    def fresh():
        return initial_net(job, n_features)  # the job's round-1 model (job.seed = seed)

    for fold in folds:
        data = CDNOWPartners(by=by, test_fold=fold)
        _, train_mask, _ = data.all_rows()
        parts = [data.features(p, CATEGORIES) for p in data.partners]
        model = fedavg(parts, job, seed + 100 * fold, fresh, ltv_weight=ltv_weight)
        test = ~train_mask
        churn_s[test], ltv_s[test] = predict(model, table.X[test])
        for k, rows in enumerate(parts):
            mine = test & (partner_of_row == k)
            ltv_cal[mine] = SpendCalibration.fit(predict(model, rows.X)[1], rows.ltv).apply(ltv_s[mine])
        scored |= test
    y_churn, y_ltv = table.churn, table.ltv
    raw = evaluate(y_churn[scored], churn_s[scored], y_ltv[scored], ltv_s[scored])
    cal = evaluate(y_churn[scored], churn_s[scored], y_ltv[scored], ltv_cal[scored])
    per_partner = [evaluate(y_churn[m], churn_s[m], y_ltv[m], ltv_cal[m])["ltv_gini"]
                   for m in (scored & (partner_of_row == k) for k in range(len(data.partners)))]  # fmt: skip
    return {"raw": raw, "cal": cal, "per_partner": per_partner}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="base", help='";"-separated settings, e.g. "base;max_grad_norm=20"')
    parser.add_argument("--seeds", default="0", help="comma-separated initial-weight / training seeds")
    parser.add_argument("--by", choices=("cohort", "spend_tier"), default="cohort")
    parser.add_argument("--folds", default="0,1,2,3,4", help="held-out folds; metrics pool their customers")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # two searches side by side on 2 cores, without oversubscription
    folds = [int(f) for f in args.folds.split(",")]
    print(f"CDNOW {args.by} partners, folds {folds} pooled; base job {BASE}")
    print("| setting | seed | AUC | Gini | MAPE | calibrated Gini | calibrated MAPE | calibrated Gini A / B / C | s |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for text in args.settings.split(";"):
        setting = parse_setting(text)
        for seed in (int(s) for s in args.seeds.split(",")):
            started = time.perf_counter()
            res = run(setting, seed, args.by, folds)
            raw, cal = res["raw"], res["cal"]
            print(f"| {text} | {seed} | {raw['churn_auc']:.4f} | {raw['ltv_gini']:.4f} | {raw['decile_mape']:.3f} | "
                  f"{cal['ltv_gini']:.4f} | {cal['decile_mape']:.3f} | "
                  + " / ".join(f"{g:.3f}" for g in res["per_partner"])
                  + f" | {time.perf_counter() - started:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
