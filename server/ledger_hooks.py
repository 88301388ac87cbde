"""The coordinator's side of the ledger: the JobHooks that tie a Flower job to the consent ledger.

* checkpoint: a signed checkpoint is published and the job is fixed to its tree size (never a moving ledger);
* preflight: Flower's readiness round, then the ledger's own view: every partner must have eligible subjects with
  budget left, and `job.started` records the checkpoint, purpose, categories, DP target and partners;
* on_round: the round manifest (commitments, DP parameters, ε, model hashes) is appended as `round.manifest`,
  signed by the coordinator, with the eligibility rule (day, lifetime cap) an auditor needs to re-derive it;
* on_finish: the model is published and every subject of every partner is charged that partner's ε for the job.

Works with the in-process `consent.ledger.Ledger` (demo, tests) and, for the same method names, `LedgerClient`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from flwr.serverapp import Grid

from consent.entries import make_entry
from consent.keys import Identity
from server.job import Job, PreflightError
from server.manifests import RoundManifest
from server.preflight import CheckpointHook, PreflightReport, preflight
from server.runner import JobHooks, JobResult

log = logging.getLogger(__name__)


@dataclass
class LedgerBinding:
    ledger: object  # consent.ledger.Ledger or consent.client.LedgerClient
    coordinator: Identity
    lifetime_epsilon: float | None = None
    day: str = field(default_factory=lambda: dt.date.today().isoformat())
    checkpoint_root: str = ""
    appended: list[int] = field(default_factory=list)

    def hooks(self) -> JobHooks:
        return JobHooks(checkpoint=self.checkpoint, preflight=self.preflight, on_round=self.on_round,
                        on_finish=self.on_finish)  # fmt: skip

    # ---- hooks --------------------------------------------------------------------------------------------

    def checkpoint(self, job: Job) -> int:
        cp = self.ledger.checkpoint()
        self.checkpoint_root = cp.root.hex()
        return cp.tree_size

    def preflight(self, grid: Grid, job: Job, checkpoint: CheckpointHook | None) -> PreflightReport:
        if self.lifetime_epsilon is not None and job.target_epsilon > self.lifetime_epsilon:
            raise PreflightError(
                f"job {job.job_id}: target ε {job.target_epsilon:g} exceeds every subject's lifetime budget "
                f"{self.lifetime_epsilon:g}"
            )
        report = preflight(grid, job, checkpoint)
        job = report.job
        problems = []
        for partner in report.ready:
            eligible = self.eligible(job, partner.partner_id)
            consenting = self.eligible(job, partner.partner_id, capped=False).count
            if eligible.count == 0:
                why = "no subject consents to this purpose and these categories"
                if consenting:
                    why = f"all {consenting} consenting subjects would exceed their lifetime ε {self.lifetime_epsilon:g}"
                problems.append(f"{partner.partner_id}: {why}")
            elif eligible.count != partner.eligible_count:
                problems.append(f"{partner.partner_id}: reports {partner.eligible_count} eligible subjects, the "
                                f"ledger {eligible.count}")  # fmt: skip
        if problems:
            raise PreflightError(f"job {job.job_id} refused at tree size {job.tree_size}: " + "; ".join(problems))
        self._append("job.started", {
            "job_id": job.job_id, "purpose": job.purpose, "data_categories": sorted(job.categories),
            "checkpoint": {"tree_size": job.tree_size, "root": self.checkpoint_root}, "rounds": job.rounds,
            "target_epsilon": job.target_epsilon, "delta": job.delta, "strategy": job.strategy,
            "partners": sorted(p.partner_id for p in report.ready), "as_of": self.day,
            "lifetime_epsilon": self.lifetime_epsilon,
        })  # fmt: skip
        return report

    def on_round(self, manifest: RoundManifest) -> None:
        body = manifest.to_dict()
        body.update(as_of=self.day, lifetime_epsilon=self.lifetime_epsilon, checkpoint_root=self.checkpoint_root)
        self._append("round.manifest", body)

    def on_finish(self, result: JobResult) -> None:
        job = result.job
        spent = result.epsilon_by_partner
        for partner_id, epsilon in sorted(spent.items()):
            refs = self.eligible(job, partner_id).subject_refs
            self.ledger.charge_budget(job.job_id, len(result.manifests), partner_id, refs, epsilon)
        self._append("model.published", {
            "job_id": job.job_id, "model_hash": result.model_hash, "rounds": len(result.manifests),
            "epsilon_by_partner": dict(sorted(spent.items())),
        })  # fmt: skip

    # ---- helpers ------------------------------------------------------------------------------------------

    def eligible(self, job: Job, partner_id: str, capped: bool = True):
        return self.ledger.eligible_set(
            partner_id, job.purpose, sorted(job.categories), tree_size=job.tree_size, day=self.day,
            lifetime_epsilon=self.lifetime_epsilon if capped else None,
            job_epsilon=job.target_epsilon if capped else 0.0,
        )  # fmt: skip

    def _append(self, entry_type: str, body: dict) -> int:
        index = self.ledger.append([make_entry(entry_type, body, self.coordinator)])[0]
        self.appended.append(index)
        log.info("ledger: %s appended at index %d", entry_type, index)
        return index
