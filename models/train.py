"""One training loop for the churn/LTV network, with or without DP-SGD; privacy is configuration, not a second loop.

``train(model, X, churn, ltv, ...)`` trains ``model`` in place (warm start: set the global weights first with
``nets.set_weights``) and returns a ``TrainReport``. With ``dp=DPConfig(...)`` the same loop runs under Opacus:
Poisson sampling of each batch (every row independently with rate ``q = 1 / ceil(n / batch_size)``), per-example
gradients clipped to ``max_grad_norm`` (Opacus ghost clipping, through ``models.dp_engine``: exact per-example
norms, no per-example gradients), Gaussian noise of std ``noise_multiplier * max_grad_norm`` added to their sum, and
the steps recorded by an accountant. One row is one user, so the guarantee is user-level within a partner.

Composing federated rounds (one accountant per partner, kept across rounds and jobs)::

    accountant = make_accountant("rdp")                  # or restore: accountant.load_state_dict(saved)
    sigma = noise_for_budget(target_epsilon=3, delta=1e-5,
                             sample_rate=1 / ceil(n_rows / batch_size), steps=rounds * steps_per_round)
    for each round:
        set_weights(model, global_arrays)
        report = train(model, X, churn, ltv, epochs=local_epochs, batch_size=batch_size, lr=lr,
                       dp=DPConfig(noise_multiplier=sigma), accountant=accountant)
        report.epsilon          # cumulative epsilon of ALL steps this accountant has seen (all rounds)
        report.epsilon_round    # epsilon of this call's steps alone
        saved = accountant.state_dict()   # persist (its "history" is a plain list of (sigma, q, steps))

``DPConfig(target_epsilon=...)`` instead calibrates sigma so that THIS call alone spends the target (one-shot,
centralised training); a federated job should budget the whole job up front with ``noise_for_budget`` as above.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from opacus.accountants import IAccountant, RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier
from torch.utils.data import DataLoader, Dataset

import models.dp_samplers  # noqa: F401  (registers the ghost-clipping norm samplers train() relies on)
from models.dp_engine import CohortPrivacyEngine
from models.nets import ChurnLTVLoss, ziln_expected_value

DEFAULT_EPOCHS = 40
DEFAULT_BATCH_SIZE = 512
DEFAULT_LR = 3e-3


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings. Give exactly one of ``noise_multiplier`` or ``target_epsilon``.

    ``max_grad_norm`` defaults to 20 (FACTS.md: a clip of ~1 collapses the ZILN spend scale). Measured here on
    CDNOW, 20 still clips most high spenders (their log-normal gradients reach 30-70) and the predicted total spend
    comes out 25-35% low; C = 40-50 keeps it within ~10% at the same epsilon (``models/quality.py`` uses 50).
    ``accountant`` is Opacus' "rdp" (Renyi DP, conservative) or "prv" (privacy random variables, tighter).
    ``rdp_orders``: the Renyi orders of the epsilon ``train`` reports under "rdp" (``None``: Opacus' defaults); a
    partner passes the orders its budget check uses, so the epsilon it reports is the one it enforces.
    """

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 20.0
    delta: float = 1e-5
    accountant: str = "rdp"
    rdp_orders: tuple[float, ...] | None = None

    @property
    def epsilon_options(self) -> dict:
        """Keyword arguments of the accountant's ``get_epsilon`` for the epsilon ``train`` reports."""
        return accountant_options(self.accountant, self.rdp_orders)

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("DPConfig needs exactly one of noise_multiplier or target_epsilon")
        if self.accountant not in ("rdp", "prv"):
            raise ValueError(f"unknown accountant {self.accountant!r} (use 'rdp' or 'prv')")
        if self.max_grad_norm <= 0 or not (0 < self.delta < 1):
            raise ValueError("max_grad_norm must be > 0 and delta in (0, 1)")


@dataclass
class TrainReport:
    """What one ``train`` call did. Privacy fields are ``None`` for non-private training."""

    n_rows: int
    epochs: int
    steps: int
    seconds: float
    loss_history: list[float] = field(default_factory=list)  # mean training loss per epoch
    epsilon: float | None = None  # cumulative over the accountant's whole history
    epsilon_round: float | None = None  # this call's steps alone
    delta: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    sample_rate: float | None = None
    accountant: str | None = None

    @property
    def final_loss(self) -> float:
        return self.loss_history[-1] if self.loss_history else float("nan")


def make_accountant(kind: str = "rdp") -> IAccountant:
    """A fresh Opacus accountant ("rdp" or "prv") to keep per partner across rounds."""
    return create_accountant(mechanism=kind)


def accountant_options(accountant: str, rdp_orders: Sequence[float] | None) -> dict:
    """Keyword arguments of ``get_epsilon`` (and of sigma calibration) for ``accountant``: the Renyi orders under
    "rdp" (``None``: Opacus' defaults); PRV takes none."""
    return {"alphas": list(rdp_orders)} if accountant == "rdp" and rdp_orders else {}


def noise_for_budget(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp", **kwargs
) -> float:
    """Noise multiplier sigma such that ``steps`` Poisson-sampled steps at rate ``sample_rate`` spend
    ``target_epsilon`` (at ``delta``) under the given accountant (``kwargs``, e.g. RDP ``alphas``, go to its
    ``get_epsilon``)."""
    with _quiet_orders():
        # The binary search visits tiny sigmas whose best Renyi order is the largest one tried; Opacus warns about
        # each; the sigma returned still meets the target.
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                **kwargs,
            )
        )


def epsilon_of(history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp", **kwargs) -> float:
    """Epsilon of a list of ``(noise_multiplier, sample_rate, steps)`` segments, composed (``kwargs`` go to the
    accountant's ``get_epsilon``, e.g. RDP ``alphas``)."""
    if not history:
        return 0.0
    segments = [tuple(h) for h in history]
    if accountant == "rdp" and all(float(sigma) != 0.0 for sigma, _, _ in segments):
        return _rdp_epsilon(segments, delta, kwargs.get("alphas"))
    acc = make_accountant(accountant)
    acc.history = segments
    return accountant_epsilon(acc, delta, **kwargs)


def _rdp_epsilon(segments: list[tuple], delta: float, alphas: Sequence[float] | None) -> float:
    """RDPAccountant.get_privacy_spent, with each (sigma, q)'s one-step RDP curve remembered: a partner asks this
    about the same segments every round (three times a round in a secure job of hundreds), and the curve over all
    orders was most of what a one-step round cost. Same arithmetic, so the same epsilon to the last bit."""
    orders = tuple(alphas or RDPAccountant.DEFAULT_ALPHAS)
    rdp = sum([_one_step_rdp(float(q), float(sigma), orders) * steps for sigma, q, steps in segments])
    with _quiet_orders():
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=256)
def _one_step_rdp(q: float, sigma: float, orders: tuple[float, ...]) -> np.ndarray:
    curve = rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(orders))
    curve.setflags(write=False)  # shared by every later call
    return curve


def accountant_epsilon(accountant: IAccountant, delta: float, **kwargs) -> float:
    """``accountant.get_epsilon(delta, **kwargs)`` without Opacus' "largest alpha" warning: the PRV accountant bounds
    its domain with an RDP pass that warns on every call, though the epsilon it returns is its proven upper bound.
    A step without noise (sigma 0) has no finite epsilon: ``inf`` for both accountants (PRV would overflow)."""
    if any(float(sigma) == 0.0 for sigma, _, _ in accountant.history):
        return math.inf
    with _quiet_orders():
        return float(accountant.get_epsilon(delta=delta, **kwargs))


@contextmanager
def _quiet_orders():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


def _as_tensor(a, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=dtype)


class _Rows(Dataset):
    """(X, churn, ltv) rows that a DataLoader fetches a whole batch at a time (``__getitems__``): one fancy-index
    per batch instead of one ``__getitem__`` and a stack per row, which took most of a step's time."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, i):
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def _batch(fetched):
    return fetched  # ``_Rows.__getitems__`` already returns stacked tensors


def train(
    model: torch.nn.Module,
    X,
    churn,
    ltv,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    dp: DPConfig | None = None,
    seed: int = 0,
    ltv_weight: float = 1.0,
    weight_decay: float = 0.0,
    lr_decay: bool = True,
    accountant: IAccountant | None = None,
    verbose: bool = False,
) -> TrainReport:
    """Train ``model`` in place on rows ``X`` [n, d] with targets ``churn`` (0/1) and ``ltv`` (holdout spend >= 0).

    Adam on ``churn_ltv_loss`` (BCE + ``ltv_weight`` * ZILN), ``epochs`` passes of ``n / batch_size`` steps each,
    the learning rate decaying from ``lr`` to 0 on a cosine over the call's steps (``lr_decay=False``: constant).
    ``dp=None``: shuffled mini-batches. ``dp=DPConfig(...)``: Opacus DP-SGD with Poisson sampling at rate
    ``1 / ceil(n / batch_size)`` and ghost clipping (per-example gradient norms without materialising per-example
    gradients; the same clipped-and-noised update as Opacus' default hooks mode); ``accountant`` (optional, persistent)
    receives the steps so rounds compose.
    The RNG (initial shuffles, Poisson masks, DP noise) is seeded from ``seed`` and the global torch RNG is
    restored afterwards.
    """
    X_t, churn_t, ltv_t = _check_rows(X, churn, ltv)
    n = X_t.shape[0]
    batch_size = max(1, min(int(batch_size), n))
    report = TrainReport(n_rows=n, epochs=epochs, steps=0, seconds=0.0)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # Opacus hooks make torch warn that a full backward hook fires with no input requiring grad (the first
        # Linear's input); harmless here.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        torch.manual_seed(seed)
        loader = DataLoader(_Rows(X_t, churn_t, ltv_t), batch_size=batch_size, shuffle=True, collate_fn=_batch)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        criterion = ChurnLTVLoss(ltv_weight)
        model.train()
        net, engine = model, None
        if dp is not None:
            engine, net, optimizer, criterion, loader = _make_private(
                model, optimizer, criterion, loader, dp, epochs, accountant
            )
            report.delta, report.max_grad_norm = dp.delta, dp.max_grad_norm
            report.noise_multiplier, report.sample_rate = optimizer.noise_multiplier, 1.0 / len(loader)
            report.accountant = engine.accountant.mechanism()
        planned_steps = max(1, epochs * len(loader))
        try:
            for epoch in range(epochs):
                total, count = 0.0, 0
                for xb, cb, lb in loader:
                    if lr_decay:
                        # Cosine decay to 0: the last steps average the DP noise out instead of ending on it.
                        factor = 0.5 * (1.0 + math.cos(math.pi * min(report.steps, planned_steps) / planned_steps))
                        for group in optimizer.param_groups:
                            group["lr"] = lr * factor
                    optimizer.zero_grad(set_to_none=True)
                    churn_logit, ziln_logits = net(xb)
                    loss = criterion(churn_logit, ziln_logits, cb, lb)
                    # An empty Poisson batch has a NaN mean loss but no per-example gradients: the step adds pure
                    # noise, as the accountant assumes.
                    loss.backward()
                    optimizer.step()
                    report.steps += 1
                    if xb.shape[0]:
                        total += float(loss.detach()) * xb.shape[0]
                        count += xb.shape[0]
                report.loss_history.append(total / max(count, 1))
                if verbose:
                    print(f"  epoch {epoch + 1}/{epochs} loss {report.loss_history[-1]:.4f}", flush=True)
        finally:
            if net is not model:
                net._close()  # drop Opacus hooks and per-example attributes; `model` keeps the trained weights
    if engine is not None:
        report.epsilon = accountant_epsilon(engine.accountant, dp.delta, **dp.epsilon_options)
        this_call = [(report.noise_multiplier, report.sample_rate, report.steps)]
        if [tuple(h) for h in engine.accountant.history] == this_call:
            report.epsilon_round = report.epsilon  # a fresh accountant: its whole history is this call's steps
        else:
            report.epsilon_round = epsilon_of(this_call, dp.delta, report.accountant, **dp.epsilon_options)
    report.seconds = time.perf_counter() - started
    model.eval()
    return report


def _check_rows(X, churn, ltv) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    X_t, churn_t, ltv_t = _as_tensor(X), _as_tensor(churn).reshape(-1), _as_tensor(ltv).reshape(-1)
    n = X_t.shape[0]
    if X_t.ndim != 2 or not (churn_t.shape[0] == ltv_t.shape[0] == n):
        raise ValueError("X must be [n, d] and churn, ltv must have n rows")
    if n == 0:
        raise ValueError("no rows to train on")
    if not torch.isfinite(X_t).all() or not torch.isfinite(ltv_t).all() or (ltv_t < 0).any():
        raise ValueError("X and ltv must be finite and ltv >= 0")
    return X_t, churn_t, ltv_t


def _make_private(model, optimizer, criterion, loader, dp: DPConfig, epochs: int, accountant: IAccountant | None):
    if accountant is not None and accountant.mechanism() != dp.accountant:
        raise ValueError(f"accountant is {accountant.mechanism()!r} but DPConfig says {dp.accountant!r}")
    with warnings.catch_warnings():
        # Opacus warns that secure_mode (a CSPRNG for noise and sampling) is off: benchmarks and tests want seeded,
        # reproducible runs; the accountant's guarantee is computed the same way.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = CohortPrivacyEngine(accountant=dp.accountant)
    if accountant is not None:
        engine.accountant = accountant
    if dp.noise_multiplier is not None:
        sigma = float(dp.noise_multiplier)
    else:  # what make_private_with_epsilon does, for ghost clipping too
        # Calibrated with the orders train() reports epsilon with, so the reported epsilon meets the target.
        sigma = noise_for_budget(dp.target_epsilon, dp.delta, 1.0 / len(loader), epochs * len(loader), dp.accountant,
                                 **dp.epsilon_options)
    net, optimizer, criterion, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="ghost",
    )
    return engine, net, optimizer, criterion, loader


@torch.no_grad()
def predict(model: torch.nn.Module, X, batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """``(churn_prob, ltv_pred)`` for rows ``X``: ``sigmoid(churn_logit)`` and the ZILN mean ``E[Y]`` (dollars)."""
    was_training = model.training
    model.eval()
    X_t = _as_tensor(X)
    probs, values = [], []
    for start in range(0, X_t.shape[0], batch_size):
        churn_logit, ziln_logits = model(X_t[start : start + batch_size])
        probs.append(torch.sigmoid(churn_logit))
        values.append(ziln_expected_value(ziln_logits))
    model.train(was_training)
    if not probs:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return torch.cat(probs).numpy(), torch.cat(values).numpy()


__all__ = [
    "DPConfig",
    "TrainReport",
    "train",
    "predict",
    "make_accountant",
    "noise_for_budget",
    "epsilon_of",
    "accountant_epsilon",
    "DEFAULT_EPOCHS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LR",
]
