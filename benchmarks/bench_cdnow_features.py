"""Would more CDNOW features lift churn AUC past the plateau (~0.772)? Candidate column groups, added to the feature
table of ``models.quality.cdnow_data``, scored by the quality benchmark's own protocol (5-fold cross-fitting, pooled
out-of-fold scores of all 23,570 customers, ``models.quality`` model settings).

The candidates are computed here from the calibration-window transactions (purchase days, as BG/NBD counts them):

* windows    purchase days and spend in the last 60 / 90 / 120 / 180 days;
* gaps       mean, last and standard deviation of the gaps between purchase days, and days since the last
             purchase over the mean gap ("overdue");
* items      CDs bought (CDNOW's ``n_items``: not in the standard schema), CDs per purchase day, price per CD;
* first_last spend of the first and of the last purchase day;
* quarters   purchase days in each quarter of the 39-week window.

    python benchmarks/bench_cdnow_features.py [--models gbt,mlp] [--repeats 1]

Prints one line per feature set and model: churn AUC, LTV Gini, decile MAPE (mean over the repeats).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.baselines import GradientBoostedTrees  # noqa: E402
from models.data.cdnow import CDNOW_CALIBRATION_END, CDNOW_START, load_cdnow  # noqa: E402
from models.metrics import evaluate  # noqa: E402
from models.quality import QualitySettings, cdnow_data, fit_mlp  # noqa: E402
from models.train import predict  # noqa: E402

WINDOWS = (60, 90, 120, 180)


def candidate_columns(user_ids) -> dict[str, dict[str, np.ndarray]]:
    """Candidate group -> column name -> values aligned to ``user_ids`` (calibration window only)."""
    events = load_cdnow()
    events = events[events.ts < CDNOW_CALIBRATION_END]
    length = (CDNOW_CALIBRATION_END - CDNOW_START).days
    days = (events.assign(day=(events.ts - CDNOW_START).dt.days)
            .groupby(["user_id", "day"], observed=True).agg(amount=("amount", "sum"), items=("n_items", "sum"))
            .reset_index().sort_values(["user_id", "day"]))  # fmt: skip
    index = pd.Index(user_ids)

    def per_user(series: pd.Series) -> np.ndarray:
        return series.reindex(index).fillna(0.0).to_numpy(np.float64)

    by_user = days.groupby("user_id", observed=True)
    first, last, n_days = per_user(by_user.day.min()), per_user(by_user.day.max()), per_user(by_user.size())
    items = per_user(by_user["items"].sum())
    gap_mean = np.where(n_days > 1, (last - first) / np.maximum(n_days - 1, 1), 0.0)
    gaps = days.assign(gap=by_user.day.diff()).groupby("user_id", observed=True).gap
    windows = {}
    for w in WINDOWS:
        recent = days[days.day >= length - w].groupby("user_id", observed=True)
        windows[f"days_last{w}"] = np.log1p(per_user(recent.size()))
        windows[f"spend_last{w}"] = np.log1p(per_user(recent.amount.sum()))
    quarters = {}
    for q in range(4):
        in_q = days[(days.day >= q * length / 4) & (days.day < (q + 1) * length / 4)]
        quarters[f"days_q{q}"] = np.log1p(per_user(in_q.groupby("user_id", observed=True).size()))
    return {
        "windows": windows,
        "gaps": {
            "gap_mean": gap_mean / length,
            "gap_last": per_user(gaps.last()) / length,
            "gap_std": per_user(gaps.std()) / length,
            "overdue": np.where(n_days > 1, np.log1p((length - last) / np.maximum(gap_mean, 1.0)), 0.0),
        },
        "items": {
            "items_total": np.log1p(items),
            "items_per_day": np.log1p(items / np.maximum(n_days, 1.0)),
            "price_per_item": np.log1p(per_user(by_user.amount.sum()) / np.maximum(items, 1.0)),
        },
        "first_last": {"first_spend": np.log1p(per_user(by_user.amount.first())),
                       "last_spend": np.log1p(per_user(by_user.amount.last()))},
        "quarters": quarters,
    }


def cross_fitted(X, churn, ltv, model: str, repeats: int, settings: QualitySettings) -> tuple[float, float, float]:
    """Mean (AUC, Gini, MAPE) over ``repeats`` runs of the quality protocol for one model on columns ``X``."""
    n, runs = len(churn), []
    for rep in range(repeats):
        seed = settings.seed + rep
        fold = np.random.default_rng(seed).permutation(n) % settings.folds
        churn_score, ltv_pred = np.zeros(n), np.zeros(n)
        for k in range(settings.folds):
            tr, te = fold != k, fold == k
            if model == "gbt":
                scored = GradientBoostedTrees(seed=seed * 100 + k).fit(X[tr], churn[tr], ltv[tr]).predict(X[te])
            else:
                net, _ = fit_mlp(X[tr], churn[tr], ltv[tr], settings.mlp, None, seed=seed * 100 + k)
                scored = predict(net, X[te])
            churn_score[te], ltv_pred[te] = scored
        m = evaluate(churn, churn_score, ltv, ltv_pred)
        runs.append((m["churn_auc"], m["ltv_gini"], m["decile_mape"]))
    return tuple(np.mean(runs, axis=0))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="gbt,mlp", help="comma-separated: gbt (boosted trees), mlp (non-private)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    table, _ = cdnow_data()
    base = table.X.astype(np.float32)
    groups = candidate_columns(table.user_ids)
    sets = {"current table": base}
    for name, cols in groups.items():
        sets[f"+ {name}"] = np.hstack([base, np.column_stack(list(cols.values())).astype(np.float32)])
    everything = [c for cols in groups.values() for c in cols.values()]
    sets["+ all candidates"] = np.hstack([base, np.column_stack(everything).astype(np.float32)])
    settings = QualitySettings()
    print(f"CDNOW: {len(table)} customers, {base.shape[1]} columns now, {len(everything)} candidates; "
          f"{settings.folds}-fold cross-fitting, {args.repeats} repeat(s)", flush=True)
    for model in args.models.split(","):
        for name, X in sets.items():
            auc, gini, mape = cross_fitted(X, table.churn, table.ltv, model, args.repeats, settings)
            print(f"[{time.perf_counter() - started:6.1f}s] {model:4s} {name:18s} ({X.shape[1]:2d} columns): "
                  f"AUC {auc:.4f}  Gini {gini:.4f}  MAPE {mape:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
