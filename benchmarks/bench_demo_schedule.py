"""Which local-training schedule the demo's federated job should use: an in-process FedAvg emulation on the demo's
synthetic platforms, scored on held-out sets large enough to tell settings apart (the demo's own ~220 held-out
users per partner cannot: its Gini moves by several hundredths from run to run).

Emulation, not the Flower job (``fedavg_emulation.fedavg``: the same train call, noise plan and example-weighted
averaging as ``cohort demo``'s job; what it leaves out, ledger, manifests and Flower, does not touch the weights).
Per platform: ``--train-rows`` training users (the demo has ~870) and every other generated user held out.

    python benchmarks/bench_demo_schedule.py [--users 6000] [--seeds 3] [--plans 3x20:cosine,3x20:constant,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from client.data import SyntheticPlatforms  # noqa: E402
from client.protocol import lr_decays  # noqa: E402
from cohort.demo import PLANS  # noqa: E402
from cohort.demo_world import CATEGORIES  # noqa: E402
from fedavg_emulation import fedavg  # noqa: E402
from models.metrics import evaluate  # noqa: E402
from models.nets import ChurnLTVNet  # noqa: E402
from models.train import DPConfig, predict, train  # noqa: E402
from server.job import Job  # noqa: E402

DEMO = PLANS["synthetic"]


def split_platforms(users: int, train_rows: int, data_seed: int) -> dict:
    source = SyntheticPlatforms(users_per_platform=users, seed=data_seed)
    rng = np.random.default_rng(0)
    out = {}
    for partner in source.partners:
        table = source.features(partner, CATEGORIES)
        order = rng.permutation(len(table.churn))
        out[partner] = (table.select(order[:train_rows]), table.select(order[train_rows:]))
    return out


def fresh(n_features: int, seed: int) -> ChurnLTVNet:
    torch.manual_seed(seed)
    return ChurnLTVNet(n_features, ltv_loc_init=Job(job_id="x").ltv_loc_init)


def federated(parts: dict, rounds: int, local: int, schedule: str, seed: int, epsilon: float) -> ChurnLTVNet:
    job = Job(job_id="emulation", rounds=rounds, local_epochs=local, batch_size=DEMO.batch_size, lr=DEMO.lr,
              lr_schedule=schedule, max_grad_norm=DEMO.max_grad_norm, target_epsilon=epsilon)  # fmt: skip
    n_features = next(iter(parts.values()))[0].X.shape[1]
    return fedavg([train_rows for train_rows, _ in parts.values()], job, seed, lambda: fresh(n_features, seed))


def local_only(train_rows, epochs: int, schedule: str, seed: int, epsilon: float) -> ChurnLTVNet:
    model = fresh(train_rows.X.shape[1], seed)
    train(model, train_rows.X, train_rows.churn, train_rows.ltv, epochs=epochs, batch_size=DEMO.batch_size,
          lr=DEMO.lr, lr_decay=lr_decays(schedule), seed=seed,
          dp=DPConfig(target_epsilon=epsilon, max_grad_norm=DEMO.max_grad_norm))  # fmt: skip
    return model


def scores(model, held_out) -> tuple[float, float]:
    churn, ltv = predict(model, held_out.X)
    m = evaluate(held_out.churn, churn, held_out.ltv, ltv)
    return m["churn_auc"], m["ltv_gini"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=6000, help="generated per platform")
    parser.add_argument("--train-rows", type=int, default=870, help="training users per platform (demo: ~870)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--plans", default="3x20:cosine,3x20:constant,6x10:constant",
                        help="rounds x local epochs : lr schedule, comma-separated")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    parts = split_platforms(args.users, args.train_rows, args.data_seed)
    held = {p: len(h.churn) for p, (_, h) in parts.items()}
    print(f"{args.train_rows} training users per platform, held out {held}; DP ε={args.epsilon:g} per partner, "
          f"batch {DEMO.batch_size}, lr {DEMO.lr:g}, clip {DEMO.max_grad_norm:g}; mean of {args.seeds} seeds")
    print("| model | " + " | ".join(f"{p} AUC | {p} Gini" for p in parts) + " | s |")
    print("|---" * (2 * len(parts) + 2) + "|")
    plans = [(int(s.split("x")[0]), int(s.split("x")[1].split(":")[0]), s.split(":")[1]) for s in args.plans.split(",")]
    rows = []
    for schedule in sorted({p[2] for p in plans}):
        epochs = plans[0][0] * plans[0][1]
        rows.append((f"local only, DP, {epochs} epochs, {schedule}", lambda s, sc=schedule, e=epochs: {
            p: local_only(t, e, sc, s, args.epsilon) for p, (t, _) in parts.items()}))  # fmt: skip
    for rounds, local, schedule in plans:
        rows.append((f"federated, DP, {rounds}x{local}, {schedule}",
                     lambda s, r=rounds, lo=local, sc=schedule: federated(parts, r, lo, sc, s, args.epsilon)))  # fmt: skip
    for name, build in rows:
        started = time.perf_counter()
        per_seed = []
        for seed in range(args.seeds):
            built = build(seed)
            per_seed.append([scores(built[p] if isinstance(built, dict) else built, parts[p][1]) for p in parts])
        mean = np.mean(np.array(per_seed), axis=0)
        cells = " | ".join(f"{auc:.3f} | {gini:.3f}" for auc, gini in mean)
        print(f"| {name} | {cells} | {time.perf_counter() - started:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
