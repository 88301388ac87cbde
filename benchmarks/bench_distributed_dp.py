"""Distributed DP (secure aggregation + one DP-SGD step a round) on the CDNOW federated benchmark, emulated in process.

Per-partner DP (plain jobs) has each partner add all of its noise, so the FedAvg average carries sqrt(3) times the
noise a central curator would add for the same ε (docs/benchmarks.md, "Why the CDNOW targets are missed"). In a
secure job (``aggregation = "secure"``) the server sees only the total of the partners' clipped, noised gradient
sums, and each partner adds sigma / sqrt(3) of the noise. ``fedavg_emulation.distributed_dpsgd`` emulates that in
process (no Flower, no masks, no ledger: seconds instead of a 600-round job); this script runs it cross-fitted on
the benchmark's partners and prints it next to centralized DP-SGD with the same settings (``models.train``,
Opacus), which it should match. The real job: ``bench_federated_cdnow.py --aggregation secure``.

    python benchmarks/bench_distributed_dp.py [--folds 0,1,2,3,4] [--by cohort] [--seed 0] [--doc]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from fedavg_emulation import distributed_dpsgd  # first: it puts the repository on sys.path

from bench_federated_cdnow import load_average, machine, update_subsection  # noqa: E402
from client.cdnow import CDNOWPartners  # noqa: E402
from models.calibration import SpendCalibration  # noqa: E402
from models.data.cdnow import CDNOW_CATEGORIES  # noqa: E402
from models.metrics import evaluate  # noqa: E402
from models.quality import QualitySettings, fit_mlp, new_mlp  # noqa: E402
from models.train import DPConfig, predict  # noqa: E402

DIST, DIST_CAL, CENTRAL_DP = ("distributed DP (emulated)", "distributed DP + partner's own spend calibration",
                              "centralized DP (models.train, Opacus)")  # fmt: skip


def run(args) -> dict:
    settings = QualitySettings().dp_mlp
    folds = [int(f) for f in args.folds.split(",")]
    table, _, partner_of_row = CDNOWPartners(by=args.by, test_fold=folds[0]).all_rows()
    n, n_features = table.X.shape
    names = (DIST, DIST_CAL, CENTRAL_DP)
    churn_s = {k: np.full(n, np.nan) for k in names}
    ltv_s = {k: np.full(n, np.nan) for k in names}
    scored = np.zeros(n, dtype=bool)
    started = time.perf_counter()
    seconds, facts = [], {}

    def fresh():
        return new_mlp(n_features, settings, args.seed)  # fit_mlp's initial weights for this seed

    for fold in folds:
        data = CDNOWPartners(by=args.by, test_fold=fold)
        _, train_mask, _ = data.all_rows()
        test = ~train_mask
        parts = [data.features(p, CDNOW_CATEGORIES) for p in data.partners]
        t0 = time.perf_counter()
        model, sigma, colluding = distributed_dpsgd(
            parts, fresh, settings.epochs, settings.batch_size, settings.lr, settings.max_grad_norm, args.epsilon,
            1e-5, seed=args.seed * 1000 + fold)  # fmt: skip
        seconds.append(time.perf_counter() - t0)
        facts = {"sigma": sigma, "colluding": colluding}
        churn_s[DIST][test], ltv_s[DIST][test] = predict(model, table.X[test])
        churn_s[DIST_CAL][test] = churn_s[DIST][test]
        for k, rows in enumerate(parts):
            mine = test & (partner_of_row == k)
            calibration = SpendCalibration.fit(predict(model, rows.X)[1], rows.ltv)
            ltv_s[DIST_CAL][mine] = calibration.apply(ltv_s[DIST][mine])
        dp = DPConfig(target_epsilon=args.epsilon, max_grad_norm=settings.max_grad_norm, delta=1e-5)
        central, report = fit_mlp(table.X[train_mask], table.churn[train_mask], table.ltv[train_mask], settings, dp,
                                  seed=args.seed + fold)  # fmt: skip
        facts["central_sigma"] = report.noise_multiplier
        churn_s[CENTRAL_DP][test], ltv_s[CENTRAL_DP][test] = predict(central, table.X[test])
        scored |= test
        print(f"[{time.perf_counter() - started:6.1f}s] fold {fold}: distributed {seconds[-1]:.0f} s, σ {sigma:.2f} "
              f"(centralized Opacus σ {report.noise_multiplier:.2f})", flush=True)

    def metrics(name, rows):
        return evaluate(table.churn[rows], churn_s[name][rows], table.ltv[rows], ltv_s[name][rows])

    overall = {name: metrics(name, scored) for name in names}
    per_partner = {p: {name: metrics(name, scored & (partner_of_row == k)) for name in names}
                   for k, p in enumerate(CDNOWPartners(by=args.by).partners)}  # fmt: skip
    return {"overall": overall, "per_partner": per_partner, "seconds": seconds, "facts": facts, "folds": folds,
            "held_out": int(scored.sum()), "settings": settings, "total": time.perf_counter() - started}


def report(args, res: dict) -> str:
    s, f = res["settings"], res["facts"]
    cross = "5-fold cross-fitted, pooled" if len(res["folds"]) == 5 else f"folds {args.folds} held out"
    lines = [
        f"Command: `python benchmarks/bench_distributed_dp.py --by {args.by} --folds {args.folds} --seed {args.seed}`",
        "",
        f"Data: CDNOW, the federated benchmark's {args.by} partners A/B/C, {cross} ({res['held_out']:,} held-out "
        f"customers). Both models: {s.epochs} epochs, batch {s.batch_size} (Poisson, the union's rate), Adam lr "
        f"{s.lr:g} cosine-decayed, clip C={s.max_grad_norm:g}, ε={args.epsilon:g} per partner's users (δ=1e-5, RDP), "
        f"σ {f['sigma']:.2f} in total ({f['sigma'] / np.sqrt(3):.2f} from each partner; if the server and the two "
        f"other partners colluded, a partner's users would have ε={f['colluding']:.1f}); centralized Opacus σ "
        f"{f['central_sigma']:.2f}. Emulation only (no Flower, no masks); the real secure job is `bench_federated_cdnow.py --aggregation secure`.",
        "",
        f"Machine: {machine()}; load average {load_average()}; distributed DP "
        + ", ".join(f"{x:.0f}" for x in res["seconds"]) + f" s a fold, whole run {res['total']:.0f} s.",
        "",
        "| model | churn AUC | LTV Gini | decile MAPE | Σpred/Σtrue | Gini A / B / C (own customers) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in res["overall"].items():
        per = " / ".join(f"{rows[name]['ltv_gini']:.3f}" for rows in res["per_partner"].values())
        lines.append(f"| {name} | {m['churn_auc']:.3f} | {m['ltv_gini']:.3f} | {m['decile_mape']:.3f} | "
                     f"{m['ltv_ratio']:.2f} | {per} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--by", choices=("cohort", "spend_tier"), default="cohort")
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doc", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    text = report(args, run(args))
    print("\n" + text)
    if args.doc:
        update_subsection(f"Distributed DP (emulated), CDNOW {args.by} partners, ε={args.epsilon:g}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
