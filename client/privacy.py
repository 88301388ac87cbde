"""DP-SGD for one round, budgeted for the whole job, with the partner's spend carried across rounds.

The job states a target (epsilon, delta) for the whole job. A partner calibrates its noise once for
``num_rounds * local_epochs`` epochs at its own sample rate ``q = 1 / ceil(n / batch_size)`` so that taking part in
every round spends at most the target; the steps actually taken are kept in the node's ``Context.state`` as
``(noise_multiplier, sample_rate, steps)`` segments and composed by the accountant. A round that would take the
partner past the target is refused before any row is touched.

In a secure job (``RoundConfig.aggregation == "secure"``, distributed DP) a round is one step over the union of the
partners' rows instead: ``secure_gradient`` returns this partner's clipped, noised gradient sum, with its share
``sigma / sqrt(noise_partners)`` of the noise, and is charged as one step of the total ``sigma`` at the union's rate
(every partner plans the same ``sigma`` from the union's row count).

The noise seed is drawn from the OS per round: a seed the server could derive would let it subtract the noise.

In Flower's simulation a node whose reply is late can have its next message picked up, with the node's previous
``Context``, by another actor before the late one finishes; from ``Context.state`` alone the late round's steps
would be missing (the reported epsilon too low, the budget check too lenient). So with a state dir the whole
read-train-write of a round holds an exclusive lock on ``<state_dir>/<job_id>.privacy.lock`` and the spend file is
the truth: the second actor waits for the late round, then counts it (``server.simulation`` gives every simulated
partner a state dir for this). Deployment SuperNodes handle one message at a time.

A SuperNode's ``Context.state`` lives as long as its process; with ``state_dir`` (the partner's ``state-dir`` node
config) the spend is also written to ``<state_dir>/<job_id>.privacy.json`` and read back after a restart, so a
partner that crashed and rejoined does not start counting from zero.
"""

from __future__ import annotations

import fcntl
import json
import math
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ConfigRecord, RecordDict

from client.data import FeatureRows
from client.protocol import LR_SCHEDULES, RoundConfig, lr_decays
from client.state_files import job_file, write_json
from models.dp_sum import noisy_gradient_sum
from models.train import DPConfig, TrainReport, accountant_options, make_accountant, noise_for_budget, train
from models.train import epsilon_of as models_epsilon_of

STATE_KEY = "privacy"
EPSILON_SLACK = 1e-6  # the calibrated sigma spends <= target; this only absorbs float noise in the accountant
# RDP orders for calibration, the budget check and the epsilon a partner reports: integers only, which Opacus
# computes in closed form (tens of ms instead of seconds for its default 150 mostly fractional orders). Fewer orders
# can only make the computed epsilon larger (a valid, slightly looser bound), never smaller.
RDP_ORDERS = tuple(range(2, 65)) + (80, 96, 128, 192, 256)


class BudgetExceeded(RuntimeError):
    """Training this round would spend more than the job's target epsilon."""


@dataclass(frozen=True)
class NoisePlan:
    """Noise and sampling for this partner in this job (the same in every round: the eligible set is fixed)."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    batch_size: int


@dataclass(frozen=True)
class PrivateRound:
    """What one round of private training did and what the partner has spent in the job so far."""

    report: TrainReport
    plan: NoisePlan
    epsilon: float  # cumulative over all rounds this partner trained in this job
    epsilon_round: float
    rounds_trained: int


def noise_plan(state: RecordDict, n_rows: int, job: RoundConfig) -> NoisePlan:
    """This partner's plan for ``job``, computed once and kept in the node state (calibrating sigma is a binary
    search over the accountant and takes seconds; preflight computes it so round 1 does not have to)."""
    record = _job_record(state, job.job_id) or ConfigRecord({"job-id": job.job_id, "rounds": 0})
    n_rows = job.union_rows if job.secure else n_rows
    if record.get("plan-rows") != n_rows:
        plan = plan_noise(n_rows, job)
        record.update(
            {
                "plan-rows": n_rows,
                "plan-noise-multiplier": plan.noise_multiplier,
                "plan-sample-rate": plan.sample_rate,
                "plan-steps-per-round": plan.steps_per_round,
                "plan-batch-size": plan.batch_size,
            }
        )
        state[STATE_KEY] = record
    return NoisePlan(
        noise_multiplier=float(record["plan-noise-multiplier"]),
        sample_rate=float(record["plan-sample-rate"]),
        steps_per_round=int(record["plan-steps-per-round"]),
        batch_size=int(record["plan-batch-size"]),
    )


def plan_noise(n_rows: int, job: RoundConfig) -> NoisePlan:
    """Noise multiplier so that ``num_rounds * local_epochs`` epochs over ``n_rows`` spend ``job.target_epsilon``.

    In a secure job ``n_rows`` is the union's row count and a round is one step at ``q = 1 / ceil(n / batch)``:
    every partner computes the same plan, and the noise multiplier is that of the secure sum's total noise."""
    if n_rows <= 0:
        raise ValueError("no eligible rows to train on")
    batch_size = max(1, min(job.batch_size, n_rows))
    steps_per_epoch = math.ceil(n_rows / batch_size)
    steps_per_round = 1 if job.secure else job.local_epochs * steps_per_epoch
    sample_rate = 1.0 / steps_per_epoch
    sigma = noise_for_budget(
        job.target_epsilon, job.delta, sample_rate, job.num_rounds * steps_per_round, job.accountant, **_orders(job)
    )
    return NoisePlan(float(sigma), sample_rate, steps_per_round, batch_size)


def spent_so_far(state: RecordDict, job: RoundConfig, state_dir: str | None = None) -> float:
    """Epsilon this partner has spent in ``job`` (0 before its first round)."""
    _restore(state, job.job_id, state_dir)
    return epsilon_of(_history(state, job.job_id), job)


def epsilon_of(history: list[tuple[float, float, int]], job: RoundConfig) -> float:
    """Epsilon of ``(noise_multiplier, sample_rate, steps)`` segments, composed (0 for none)."""
    return models_epsilon_of(history, job.delta, job.accountant, **_orders(job))


def _orders(job: RoundConfig) -> dict:
    return accountant_options(job.accountant, RDP_ORDERS)


def train_privately(
    model, rows: FeatureRows, job: RoundConfig, state: RecordDict, state_dir: str | None = None
) -> PrivateRound:
    """Train ``model`` in place on ``rows`` with DP-SGD; refuse if the job's budget would be exceeded."""
    with _spend_lock(state_dir, job.job_id):
        return _train_privately(model, rows, job, state, state_dir)


def _train_privately(model, rows: FeatureRows, job: RoundConfig, state: RecordDict, state_dir: str | None):
    if job.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"round config: unknown lr-schedule {job.lr_schedule!r}; expected one of {LR_SCHEDULES}")
    plan, accountant = _admit(state, int(rows.X.shape[0]), job, state_dir)
    report = train(
        model,
        rows.X,
        rows.churn,
        rows.ltv,
        epochs=job.local_epochs,
        batch_size=plan.batch_size,
        lr=job.lr,
        lr_decay=lr_decays(job.lr_schedule),
        dp=DPConfig(
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=job.max_grad_norm,
            delta=job.delta,
            accountant=job.accountant,
            # train() reports epsilon with the budget check's orders (used under "rdp" only), so the number a
            # partner reports (computed once, there) is the one it enforces.
            rdp_orders=RDP_ORDERS,
        ),
        seed=secrets.randbits(31),
        accountant=accountant,
    )
    return _record(state, job, state_dir, accountant, report, plan)


def secure_gradient(
    model, rows: FeatureRows, job: RoundConfig, state: RecordDict, state_dir: str | None = None
) -> tuple[list, PrivateRound]:
    """A secure job's round: this partner's clipped gradient sum at ``model`` over a Poisson sample of ``rows`` at the
    union's rate, with its share ``sigma / sqrt(noise_partners)`` of the noise (``models.dp_sum``); the round is
    charged to the budget as one step of the total noise ``sigma`` at that rate. Refused like any round when it
    would exceed the target."""
    if job.union_rows < int(rows.X.shape[0]):
        raise ValueError(f"round config: union of {job.union_rows} rows is smaller than this partner's "
                         f"{int(rows.X.shape[0])}")  # fmt: skip
    with _spend_lock(state_dir, job.job_id):
        plan, accountant = _admit(state, int(rows.X.shape[0]), job, state_dir)
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(secrets.randbits(63))  # sample and noise: never known to the server
        grads = noisy_gradient_sum(model, rows.X, rows.churn, rows.ltv, sample_rate=plan.sample_rate,
                                   max_grad_norm=job.max_grad_norm, generator=generator,
                                   noise_share=plan.noise_multiplier / math.sqrt(max(1, job.noise_partners)))
        accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
        history = [tuple(h) for h in accountant.history]
        report = TrainReport(
            n_rows=int(rows.X.shape[0]), epochs=0, steps=1, seconds=time.perf_counter() - started,
            epsilon=epsilon_of(history, job),
            epsilon_round=epsilon_of([(plan.noise_multiplier, plan.sample_rate, 1)], job),
            delta=job.delta, noise_multiplier=plan.noise_multiplier, max_grad_norm=job.max_grad_norm,
            sample_rate=plan.sample_rate, accountant=job.accountant,
        )  # fmt: skip
        return grads, _record(state, job, state_dir, accountant, report, plan)


def _admit(state: RecordDict, n_rows: int, job: RoundConfig, state_dir: str | None):
    """The plan and an accountant holding this partner's history, once the round is known to fit the budget."""
    _restore(state, job.job_id, state_dir)
    plan = noise_plan(state, n_rows, job)
    history = _history(state, job.job_id)
    segment = (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
    projected = epsilon_of(history + [segment], job)
    if projected > job.target_epsilon + EPSILON_SLACK:
        raise BudgetExceeded(
            f"round {job.server_round} would bring epsilon to {projected:.4f} > target {job.target_epsilon} "
            f"(job {job.job_id}, {len(history)} round(s) already trained)"
        )
    accountant = make_accountant(job.accountant)
    accountant.history = list(history)
    return plan, accountant


def _record(state: RecordDict, job: RoundConfig, state_dir: str | None, accountant, report: TrainReport,
            plan: NoisePlan) -> PrivateRound:  # fmt: skip
    rounds_trained = _rounds(state, job.job_id) + 1
    _save_history(state, job.job_id, [tuple(h) for h in accountant.history], rounds_trained)
    _persist(state, job.job_id, state_dir)
    return PrivateRound(
        report=report,
        plan=plan,
        epsilon=report.epsilon,
        epsilon_round=report.epsilon_round,
        rounds_trained=rounds_trained,
    )


def _job_record(state: RecordDict, job_id: str) -> ConfigRecord | None:
    record = state.config_records.get(STATE_KEY)
    return record if record is not None and record.get("job-id") == job_id else None


def _rounds(state: RecordDict, job_id: str) -> int:
    record = _job_record(state, job_id)
    return int(record["rounds"]) if record is not None else 0


def _history(state: RecordDict, job_id: str) -> list[tuple[float, float, int]]:
    # Opacus merges consecutive identical (sigma, q) segments, so this is not one entry per round.
    record = _job_record(state, job_id)
    if record is None or "steps" not in record:
        return []
    return [
        (float(s), float(q), int(n))
        for s, q, n in zip(record["noise-multipliers"], record["sample-rates"], record["steps"])
    ]


def _save_history(state: RecordDict, job_id: str, history: list[tuple[float, float, int]], rounds: int) -> None:
    record = _job_record(state, job_id) or ConfigRecord({"job-id": job_id})
    record.update(
        {
            "rounds": rounds,
            "noise-multipliers": [float(h[0]) for h in history],
            "sample-rates": [float(h[1]) for h in history],
            "steps": [int(h[2]) for h in history],
        }
    )
    state[STATE_KEY] = record


def _spend_file(state_dir: str, job_id: str) -> Path:
    return job_file(state_dir, job_id, "privacy")


@contextmanager
def _spend_lock(state_dir: str | None, job_id: str):
    """Exclusive per (partner, job) while a round reads, spends and writes the budget (no-op without a state dir)."""
    if not state_dir:
        yield
        return
    path = _spend_file(state_dir, job_id).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes, also if training raises
        yield


def _restore(state: RecordDict, job_id: str, state_dir: str | None) -> None:
    if not state_dir:
        return
    path = _spend_file(state_dir, job_id)
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    if int(saved.get("rounds", 0)) > _rounds(state, job_id):  # the file is ahead: this process restarted
        state[STATE_KEY] = ConfigRecord(saved)


def _persist(state: RecordDict, job_id: str, state_dir: str | None) -> None:
    if not state_dir:
        return
    write_json(_spend_file(state_dir, job_id), dict(_job_record(state, job_id)))  # a crash keeps the old spend
