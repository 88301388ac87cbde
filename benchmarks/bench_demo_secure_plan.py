"""Which plan the demo's secure job (``cohort demo --aggregation secure``, ``SECURE_PLANS["synthetic"]``) should use:
its secure federated model against each partner's local-only DP model, on the demo's synthetic platforms, scored as
the demo's closing table scores them (``cohort.demo.evaluation_users``: 5,000 new users of each platform).

Per seed ``s``: the platforms of data seed ``--data-seed + s`` (1,500 users each, ``--train-rows`` of them training
rows, as ``bench_demo_schedule.split_platforms`` draws them; the demo has ~870 eligible training users per partner),
the job's initial weights from that seed (``server.runner.initial_net``, as the demo's job has ``seed=seed``) and
sampling and noise from seed ``s``. Local-only DP is the demo's (``cohort.compare.comparison``): the plain plan's
3 x 20 = 60 epochs, batch 512, lr 0.02 constant, clip 20, ε of the job, initial weights and noise of seed 2.

Engines (``--engine``):

* ``job`` (default): the real secure job's arithmetic without Flower, masks or ledger: the server is
  ``server.secure_aggregation.SecureSum`` itself (its noise plan from the union's rows, ``noise_partners =
  min_partners``, its plausibility check and its Adam step with the job's lr schedule); each partner's reply is
  ``models.dp_sum.noisy_gradient_sum`` (Opacus, the partner's noise share), fixed-point encoded and summed as the
  secure sum does (``client.secure_sum.encode`` / ``sum_words`` / ``decode``). Any rounds, either schedule.
* ``emulation``: ``fedavg_emulation.distributed_dpsgd``. It differs from the job: each partner adds
  ``sigma / sqrt(partners)`` of the noise where the job's partners add ``sigma / sqrt(min_partners)`` (the demo:
  min_partners 2 of 3 partners, so the job's total noise is sqrt(3/2) = 1.22 x the emulation's); the schedule is
  always cosine; rounds must be whole epochs of the union (``ceil(N / batch)`` steps each).

    python benchmarks/bench_demo_secure_plan.py [--seeds 4] [--engine job] [--min-partners 2] \\
        [--plans 60x512:0.02:20,120x512:0.02:20:constant,...]   # rounds x batch : lr : clip [: schedule]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_demo_schedule import local_only, scores, split_platforms  # noqa: E402  (puts the repo on sys.path)

from client.data import SyntheticPlatforms  # noqa: E402
from client.secure_sum import decode, encode, sum_words  # noqa: E402
from cohort.demo import PLANS, SECURE_PLANS, evaluation_users  # noqa: E402
from cohort.demo_world import CATEGORIES  # noqa: E402
from fedavg_emulation import distributed_dpsgd  # noqa: E402
from models.dp_sum import noisy_gradient_sum  # noqa: E402
from models.nets import ChurnLTVNet, get_weights, set_weights  # noqa: E402
from server.job import Job  # noqa: E402
from server.runner import initial_model, initial_net  # noqa: E402
from server.secure_aggregation import SecureSum  # noqa: E402

PLAIN = PLANS["synthetic"]
CURRENT = SECURE_PLANS["synthetic"]


def parse_plan(text: str) -> tuple[int, int, float, float, str]:
    """``rounds x batch : lr : clip [: schedule]`` -> (rounds, batch, lr, clip, schedule)."""
    head, *rest = text.strip().split(":")
    rounds, batch = (int(v) for v in head.split("x"))
    lr, clip = float(rest[0]), float(rest[1])
    return rounds, batch, lr, clip, rest[2] if len(rest) > 2 else "cosine"


def secure_job(train: list, job: Job, noise_seed: int) -> ChurnLTVNet:
    """The global model after ``job.rounds`` secure rounds over the partners' training ``FeatureRows``."""
    n_features = train[0].X.shape[1]
    server = SecureSum(job, {f"p{k}": "unused" for k in range(len(train))},
                       {f"p{k}": len(rows.churn) for k, rows in enumerate(train)}, initial_model(job, n_features),
                       n_features)  # fmt: skip
    q = server.plan.sample_rate
    gen = torch.Generator().manual_seed(noise_seed)
    for r in range(1, job.rounds + 1):
        weights = get_weights(server.net)
        words = []
        for rows in train:
            model = ChurnLTVNet(n_features, hidden=job.hidden)  # as client.app.global_model rebuilds it
            set_weights(model, weights)
            grads = noisy_gradient_sum(model, rows.X, rows.churn, rows.ltv, sample_rate=q,
                                       max_grad_norm=job.max_grad_norm, noise_share=server.share, generator=gen)  # fmt: skip
            words.append(encode(np.concatenate([g.ravel() for g in grads])))
        server.apply(r, decode(sum_words(words)), len(train))
    server.net.eval()
    return server.net


def emulated_job(train: list, job: Job, noise_seed: int) -> ChurnLTVNet:
    n = sum(len(rows.churn) for rows in train)
    steps_per_epoch = math.ceil(n / min(job.batch_size, n))
    if job.rounds % steps_per_epoch or job.lr_schedule != "cosine":
        raise SystemExit(f"--engine emulation: rounds must be a multiple of {steps_per_epoch} and the schedule "
                         f"cosine, got {job.rounds} rounds, {job.lr_schedule}")  # fmt: skip
    n_features = train[0].X.shape[1]
    model, _, _ = distributed_dpsgd(train, lambda: initial_net(job, n_features), job.rounds // steps_per_epoch,
                                    job.batch_size, job.lr, job.max_grad_norm, job.target_epsilon, job.delta,
                                    noise_seed)  # fmt: skip
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1500, help="generated per platform (the demo's)")
    parser.add_argument("--train-rows", type=int, default=870, help="training users per platform (demo: ~870)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--data-seed", type=int, default=7, help="seed s uses data seed data_seed + s")
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--min-partners", type=int, default=2, help="the job's (demo: 2); sets the noise shares")
    parser.add_argument("--engine", choices=("job", "emulation"), default="job")
    parser.add_argument("--plans", default=f"{CURRENT.rounds}x{CURRENT.batch_size}:{CURRENT.lr:g}:"
                        f"{CURRENT.max_grad_norm:g}:{CURRENT.lr_schedule}",
                        help="rounds x batch : lr : clip [: cosine|constant], comma-separated")  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    plans = [parse_plan(p) for p in args.plans.split(",")]
    build = secure_job if args.engine == "job" else emulated_job
    epochs = PLAIN.rounds * PLAIN.local_epochs

    worlds = []  # per seed: (training rows per partner, the demo's evaluation users per partner)
    for s in range(args.seeds):
        data_seed = args.data_seed + s
        parts = split_platforms(args.users, args.train_rows, data_seed)
        fresh = evaluation_users(SyntheticPlatforms(users_per_platform=args.users, seed=data_seed), CATEGORIES)
        worlds.append(({p: t for p, (t, _) in parts.items()}, fresh))
    partners = list(worlds[0][0])
    print(f"{args.train_rows} training users per platform ({args.users} generated), scored on "
          f"{len(next(iter(worlds[0][1].values())).churn):,} new users per platform; ε={args.epsilon:g}, "
          f"δ={Job(job_id='x').delta:g}; engine {args.engine}, min_partners {args.min_partners}; "
          f"{args.seeds} seeds (data seeds {args.data_seed}..{args.data_seed + args.seeds - 1}); "
          "cells: mean (min over seeds)")  # fmt: skip
    print("| model | " + " | ".join(f"{p} AUC | {p} Gini" for p in partners) + " | s/job |")
    print("|---" * (2 * len(partners) + 2) + "|")

    def row(name: str, per_seed: np.ndarray, seconds: float) -> None:  # per_seed: seeds x partners x (auc, gini)
        mean, low = per_seed.mean(axis=0), per_seed.min(axis=0)
        cells = " | ".join(f"{mean[k, 0]:.3f} ({low[k, 0]:.3f}) | {mean[k, 1]:.3f} ({low[k, 1]:.3f})"
                           for k in range(len(partners)))  # fmt: skip
        print(f"| {name} | {cells} | {seconds:.1f} |", flush=True)

    started = time.perf_counter()
    base = []
    for train, fresh in worlds:
        base.append([scores(local_only(train[p], epochs, PLAIN.lr_schedule, 2, args.epsilon), fresh[p])
                     for p in partners])  # fmt: skip
    base = np.array(base)
    row(f"local only, DP, {epochs} epochs x {PLAIN.batch_size}, lr {PLAIN.lr:g} {PLAIN.lr_schedule}, clip "
        f"{PLAIN.max_grad_norm:g}", base, (time.perf_counter() - started) / args.seeds / len(partners))  # fmt: skip

    deltas = []
    for rounds, batch, lr, clip, schedule in plans:
        name = f"secure, {rounds}x{batch}, lr {lr:g} {schedule}, clip {clip:g}"
        job = Job(job_id="bench-secure", rounds=rounds, local_epochs=1, batch_size=batch, lr=lr,
                  lr_schedule=schedule, max_grad_norm=clip, target_epsilon=args.epsilon,
                  min_partners=args.min_partners, aggregation="secure")  # fmt: skip
        per_seed, seconds = [], []
        for s, (train, fresh) in enumerate(worlds):
            t0 = time.perf_counter()
            model = build([train[p] for p in partners], replace(job, seed=args.data_seed + s), s)
            seconds.append(time.perf_counter() - t0)
            per_seed.append([scores(model, fresh[p]) for p in partners])
        per_seed = np.array(per_seed)
        row(name, per_seed, float(np.mean(seconds)))
        deltas.append((name, per_seed - base))

    print("\nPer seed, secure minus local-only (Gini; AUC in brackets):")
    print("| model | " + " | ".join(partners) + " | all ≥ 0 |")
    print("|---" * (len(partners) + 2) + "|")
    for name, d in deltas:
        cells = " | ".join(", ".join(f"{d[s, k, 1]:+.3f} ({d[s, k, 0]:+.3f})" for s in range(len(d)))
                           for k in range(len(partners)))  # fmt: skip
        print(f"| {name} | {cells} | {'yes' if (d >= 0).all() else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
