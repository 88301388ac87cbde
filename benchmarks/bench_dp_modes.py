"""Bare optimiser step of the partner model under each Opacus grad_sample_mode, next to a non-private step: which
per-example-gradient machinery is cheapest for the ~5,600-parameter MLP (the figures quoted under "DP-SGD step cost").
Stock Opacus: its own ``PrivacyEngine`` and norm samplers (this script does not import ``models.dp_samplers``).

One fixed batch of random rows, Adam, ``ChurnLTVLoss``; no Poisson sampling (the same batch every step), 10 warm-up
steps, then the best of 5 × 50 steps per mode; ``torch.set_num_threads(1)``.

    python benchmarks/bench_dp_modes.py [--batch 512]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODES = ("plain", "ghost", "hooks", "ew", "functorch")


def step_ms(mode: str, batch: int, n_features: int) -> float:
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from models.nets import ChurnLTVLoss, ChurnLTVNet

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(batch * 8, n_features, generator=gen)
    churn = (torch.rand(batch * 8, generator=gen) < 0.7).float()
    ltv = torch.exp(3 + torch.randn(batch * 8, generator=gen)) * (1 - churn)
    model, criterion = ChurnLTVNet(n_features), ChurnLTVLoss(1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if mode != "plain":
        loader = DataLoader(TensorDataset(X, churn, ltv), batch_size=batch)
        kw = dict(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=20.0,
                  poisson_sampling=False, grad_sample_mode=mode)  # fmt: skip
        if mode == "ghost":
            model, optimizer, criterion, _ = PrivacyEngine().make_private(criterion=criterion, **kw)
        else:
            model, optimizer, _ = PrivacyEngine().make_private(**kw)
    xb, cb, lb = X[:batch], churn[:batch], ltv[:batch]

    def step():
        optimizer.zero_grad(set_to_none=True)
        churn_logit, ziln = model(xb)
        criterion(churn_logit, ziln, cb, lb).backward()
        optimizer.step()

    for _ in range(10):
        step()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(50):
            step()
        best = min(best, (time.perf_counter() - t0) / 50)
    return best * 1000


def main() -> None:
    import torch

    from models.features import feature_names

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    n = len(feature_names())
    plain = None
    for mode in MODES:
        ms = step_ms(mode, args.batch, n)
        plain = plain or ms
        print(f"{mode:10s} {ms:6.2f} ms/step  {ms / plain:5.2f}x non-DP   (batch {args.batch}, {n} features)")


if __name__ == "__main__":
    main()
