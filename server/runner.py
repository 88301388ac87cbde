"""Running one job end to end on a Flower grid: preflight, rounds under the guarded strategy, result.

The ledger is reached only through ``JobHooks``, so the same runner serves the demo (in-process simulation), ``flwr
run`` and a deployment:

* ``checkpoint(job) -> tree_size``: the ledger's latest signed checkpoint, used when ``job.tree_size`` is 0;
* ``preflight(grid, job, checkpoint) -> PreflightReport``: defaults to ``server.preflight.preflight``;
* ``on_round(manifest)``: after each round, e.g. append ``manifest.to_dict()`` as a ``round.manifest`` entry and
  charge the round's epsilon (charging per round, not at the end, is what keeps a stopped job's spend counted);
* ``on_finish(result)``: after the last round (publish the model, value contributions, issue rewards);
* ``on_stop(job, manifests, error)``: the job ended early (after preflight) with ``error``; ``manifests`` are the
  rounds that closed. The error is re-raised afterwards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from client.protocol import arrays_to_record
from models.nets import ChurnLTVNet, get_weights, weight_names
from server.job import Job
from server.manifests import RoundManifest, model_hash
from server.preflight import CheckpointHook, PreflightReport, preflight
from server.secure_aggregation import SecureSum
from server.strategy import GuardedStrategy, PartnerMetrics, build_strategy

log = logging.getLogger(__name__)


@dataclass
class JobHooks:
    checkpoint: CheckpointHook | None = None
    preflight: Callable[[Grid, Job, CheckpointHook | None], PreflightReport] = preflight
    on_round: Callable[[RoundManifest], None] | None = None
    on_finish: Callable[[JobResult], None] | None = None
    on_stop: Callable[[Job, list[RoundManifest], Exception], None] | None = None


@dataclass
class JobResult:
    job: Job
    preflight: PreflightReport
    arrays: ArrayRecord
    manifests: list[RoundManifest]
    train_metrics: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics: dict[int, MetricRecord] = field(default_factory=dict)
    initial_model_hash: str = ""
    # Each partner's own metrics (round -> partner_id -> name -> value); the two above are weighted means.
    partner_train_metrics: PartnerMetrics = field(default_factory=dict)
    partner_evaluate_metrics: PartnerMetrics = field(default_factory=dict)

    @property
    def epsilon_by_partner(self) -> dict[str, float]:
        """Each partner's cumulative epsilon in this job (the largest it reported)."""
        spent: dict[str, float] = {}
        for manifest in self.manifests:
            for part in manifest.partners:
                spent[part.partner_id] = max(spent.get(part.partner_id, 0.0), part.epsilon)
        return spent

    @property
    def epsilon_max(self) -> float:
        return max(self.epsilon_by_partner.values(), default=0.0)

    @property
    def model_hash(self) -> str:
        return model_hash(self.arrays)

    def to_dict(self) -> dict:
        return {
            "job": self.job.describe(),
            "preflight": self.preflight.to_dict(),
            "rounds_completed": len(self.manifests),
            "initial_model_hash": self.initial_model_hash,
            "model_hash": self.model_hash,
            "epsilon_by_partner": self.epsilon_by_partner,
            "epsilon_max": self.epsilon_max,
            "manifests": [m.to_dict() for m in self.manifests],
            "train_metrics": {str(r): dict(m) for r, m in self.train_metrics.items()},
            "evaluate_metrics": {str(r): dict(m) for r, m in self.evaluate_metrics.items()},
            "partner_train_metrics": {str(r): m for r, m in self.partner_train_metrics.items()},
            "partner_evaluate_metrics": {str(r): m for r, m in self.partner_evaluate_metrics.items()},
        }

    def save(self, directory: str | Path) -> Path:
        """``result.json`` (job, manifests, epsilon, metrics) and ``model.npz`` (the global model) in ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        np.savez(out / "model.npz", **{name: a.numpy() for name, a in self.arrays.items()})
        return out


def initial_net(job: Job, n_features: int) -> ChurnLTVNet:
    """The job's round-1 ``ChurnLTVNet``: its architecture, with weights drawn from the job's (public) seed; the global
    torch RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.seed)
        return ChurnLTVNet(n_features, hidden=job.hidden, ltv_loc_init=job.ltv_loc_init)


def initial_model(job: Job, n_features: int) -> ArrayRecord:
    """The round-1 global model (``initial_net``) as the record the strategy sends."""
    model = initial_net(job, n_features)
    return arrays_to_record(weight_names(model), get_weights(model))


def run_job(grid: Grid, job: Job, hooks: JobHooks | None = None) -> JobResult:
    """Preflight, then ``job.rounds`` rounds; raises ``JobStopped`` (with the reason) if the job cannot finish."""
    hooks = hooks or JobHooks()
    report = hooks.preflight(grid, job, hooks.checkpoint)
    job = report.job
    start = initial_model(job, report.n_features)
    secure = None
    if job.aggregation == "secure":
        secure = SecureSum(job, {p.partner_id: p.masking_key for p in report.ready},
                           {p.partner_id: p.train_rows for p in report.ready}, start, report.n_features)  # fmt: skip
    strategy = GuardedStrategy(build_strategy(job), job, report.partner_of_node, on_round=hooks.on_round,
                               secure=secure)  # fmt: skip
    initial_hash = model_hash(start)
    config = job.round_config().to_record()
    try:
        flower_result = strategy.start(
            grid=grid,
            initial_arrays=start,
            num_rounds=job.rounds,
            timeout=job.round_timeout_s,
            train_config=config,
            evaluate_config=job.round_config().to_record(),
        )
    except Exception as exc:
        log.error("job %s stopped after %d round(s): %s", job.job_id, len(strategy.manifests), exc)
        if hooks.on_stop is not None:
            try:
                hooks.on_stop(job, list(strategy.manifests), exc)
            except Exception:  # the caller must see why the job stopped, not why recording it failed
                log.exception("job %s: the on_stop hook failed", job.job_id)
        raise
    result = JobResult(
        job=job,
        preflight=report,
        arrays=flower_result.arrays,
        manifests=strategy.manifests,
        train_metrics=dict(flower_result.train_metrics_clientapp),
        evaluate_metrics=dict(flower_result.evaluate_metrics_clientapp),
        initial_model_hash=initial_hash,
        partner_train_metrics=strategy.partner_train_metrics,
        partner_evaluate_metrics=strategy.partner_evaluate_metrics,
    )
    log.info("job %s finished: %d round(s), epsilon by partner %s", job.job_id, len(result.manifests),
             result.epsilon_by_partner)
    if hooks.on_finish is not None:
        hooks.on_finish(result)
    return result
