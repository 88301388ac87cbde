"""In-process FedAvg emulation of a Cohort job: what the partners' weights would be after ``job.rounds`` rounds.

Not a benchmark itself; `bench_demo_schedule.py` and `bench_federated_search.py` import it to compare training
settings in seconds instead of one Flower job each. Each partner trains with the same ``models.train.train`` call,
the same noise plan (``client.privacy.plan_noise``: sigma for rounds x local epochs at the job's ε, δ, accountant) and
the same example-weighted averaging as the Flower job; what it leaves out (ledger, manifests, Flower, Ray) does
not touch the weights. Confirm a setting it finds with the real job (`bench_federated_cdnow.py`) before adopting it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client.privacy import plan_noise  # noqa: E402
from client.protocol import lr_decays  # noqa: E402
from models.nets import ChurnLTVNet, get_weights, set_weights  # noqa: E402
from models.train import DPConfig, train  # noqa: E402
from server.job import Job  # noqa: E402


def fedavg(parts: list, job: Job, seed: int, fresh, ltv_weight: float = 1.0) -> ChurnLTVNet:
    """The global model after ``job.rounds`` FedAvg rounds over ``parts`` (each partner's training
    ``FeatureRows``). ``fresh()`` builds the initial model; partner ``k`` trains round ``r`` with seed
    ``seed * 1000 + r * 10 + k``. The noise plan is computed once per partner, as the client keeps it."""
    config = job.round_config(1)
    plans = [plan_noise(len(rows.churn), config) for rows in parts]
    global_model = fresh()
    weights = get_weights(global_model)
    sizes = [len(rows.churn) for rows in parts]
    for r in range(job.rounds):
        updates = []
        for k, (rows, plan) in enumerate(zip(parts, plans)):
            model = fresh()
            set_weights(model, weights)
            dp = DPConfig(noise_multiplier=plan.noise_multiplier, max_grad_norm=job.max_grad_norm, delta=job.delta,
                          accountant=job.accountant)  # fmt: skip
            train(model, rows.X, rows.churn, rows.ltv, epochs=job.local_epochs, batch_size=plan.batch_size,
                  lr=job.lr, lr_decay=lr_decays(job.lr_schedule), seed=seed * 1000 + r * 10 + k, dp=dp,
                  ltv_weight=ltv_weight)  # fmt: skip
            updates.append(get_weights(model))
        weights = [sum(n * u[i] for u, n in zip(updates, sizes)) / sum(sizes) for i in range(len(weights))]
    set_weights(global_model, weights)
    return global_model
