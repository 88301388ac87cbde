"""In-process emulations of a Cohort job: FedAvg as the Flower job runs it (``fedavg``), and distributed DP as
Cohort's secure jobs run it (``distributed_dpsgd``; the real job: ``aggregation = "secure"``,
``server.secure_aggregation``).

Not a benchmark itself; `bench_demo_schedule.py`, `bench_federated_search.py` and `bench_distributed_dp.py` import
it to compare training settings in seconds instead of one Flower job each. In ``fedavg`` each partner trains with
the same ``models.train.train`` call, the same noise plan (``client.privacy.plan_noise``: sigma for rounds x local
epochs at the job's ε, δ, accountant) and the same example-weighted averaging as the Flower job; what it leaves out
(ledger, manifests, Flower, Ray) does not touch the weights. Confirm a setting it finds with the real job
(`bench_federated_cdnow.py`) before adopting it.
"""

from __future__ import annotations

import sys
from math import ceil, cos, pi, sqrt
from pathlib import Path

import torch
from torch.func import functional_call, grad, vmap

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client.privacy import RDP_ORDERS, plan_noise  # noqa: E402
from client.protocol import lr_decays  # noqa: E402
from models.nets import ChurnLTVNet, churn_ltv_loss, get_weights, set_weights  # noqa: E402
from models.train import DPConfig, accountant_options, epsilon_of, noise_for_budget, train  # noqa: E402
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


def distributed_dpsgd(parts: list, fresh, epochs: int, batch_size: int, lr: float, max_grad_norm: float,
                      epsilon: float, delta: float, seed: int) -> tuple[ChurnLTVNet, float, float]:  # fmt: skip
    """What a secure job does (``aggregation = "secure"``) without Flower, masks or ledger: distributed DP-SGD, one
    step a round. Each round every partner Poisson-samples its rows at the union's rate ``q = 1 / ceil(n / batch_size)``,
    clips each sampled example's gradient to ``max_grad_norm`` (as Opacus does) and adds Gaussian noise of std
    ``sigma * C / sqrt(partners)`` to its clipped sum; a secure sum would show the server only the total, whose noise
    is ``sigma * C``, the centralized DP-SGD step's. The server divides by the expected batch ``q * n`` and takes an
    Adam step (cosine-decayed rate). Returns (model, sigma, epsilon if the server and all other partners collude:
    they can remove their own noise, leaving a partner's users ``sigma / sqrt(partners)``)."""
    def tensors(rows):
        return (torch.as_tensor(rows.X, dtype=torch.float32), torch.as_tensor(rows.churn, dtype=torch.float32),
                torch.as_tensor(rows.ltv, dtype=torch.float32))  # fmt: skip

    data = [tensors(rows) for rows in parts]
    n = sum(len(c) for _, c, _ in data)
    steps_per_epoch = ceil(n / batch_size)
    q, steps = 1.0 / steps_per_epoch, epochs * steps_per_epoch
    orders = accountant_options("rdp", RDP_ORDERS)
    sigma = noise_for_budget(epsilon, delta, q, steps, "rdp", **orders)
    colluding = epsilon_of([(sigma / sqrt(len(parts)), q, steps)], delta, "rdp", **orders)
    model = fresh()
    names = [name for name, _ in model.named_parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def example_loss(params, x, c, y):
        churn_logit, ziln = functional_call(model, params, (x.unsqueeze(0),))
        return churn_ltv_loss(churn_logit, ziln, c.unsqueeze(0), y.unsqueeze(0))

    per_example_grads = vmap(grad(example_loss), in_dims=(None, 0, 0, 0))
    gen = torch.Generator().manual_seed(seed)
    partner_std = sigma * max_grad_norm / sqrt(len(parts))
    model.train()
    for t in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + cos(pi * t / steps))
        params = {name: p.detach() for name, p in model.named_parameters()}
        total = {name: torch.zeros_like(p) for name, p in params.items()}
        for X, c, y in data:
            take = torch.rand(len(c), generator=gen) < q
            if take.any():
                g = per_example_grads(params, X[take], c[take], y[take])
                norms = torch.sqrt(sum(g[name].flatten(1).pow(2).sum(1) for name in names))
                factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
                for name in names:
                    total[name] += torch.einsum("i,i...->...", factor, g[name])
            for name in names:  # the partner's share of the noise, added before its sum leaves it
                total[name] += torch.normal(0.0, partner_std, size=total[name].shape, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        for name, p in model.named_parameters():
            p.grad = total[name] / (q * n)
        optimizer.step()
    model.eval()
    return model, sigma, colluding
