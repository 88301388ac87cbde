"""The coordinator's side of the ledger: the JobHooks that tie a Flower job to the consent ledger.

* checkpoint: a signed checkpoint is published and the job is fixed to its tree size (never a moving ledger);
* preflight: Flower's readiness round, then the ledger's own view: every partner must have eligible subjects with
  budget left (and in a secure job a masking key signed by its ledger key), and `job.started` records the
  checkpoint, purpose, categories, DP target, strategy, aggregation (plain or secure) and partners;
* on_round: every eligible subject of each partner in the round is charged that round's ε increment (the
  partner's cumulative ε after this round minus what this job already charged it), then the round manifest
  (commitments, DP parameters, ε, model hashes) is appended as `round.manifest`, signed by the coordinator, with
  the eligibility rule (day, lifetime cap) an auditor needs to re-derive it. Charged per round, a job that stops
  early still counts what it spent; charged before the append, a crash in between over-counts rather than under;
* on_finish: the model is published (`model.published`); on_stop: `job.stopped` records the rounds that closed.

Over a whole job the charges add up to each partner's final ε, what one charge at the end used to be. The subjects
charged are the partner's eligible set as preflight saw it, before this job's first charge: asking the ledger again
mid-job would count this job's own charges against its ε twice (``client.job_eligibility`` keeps the same set).

Works with the in-process `consent.ledger.Ledger` (demo, tests) and, for the same method names, `LedgerClient`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from flwr.serverapp import Grid

from client.peer_keys import partner_key_in, verified_public_key
from client.secure_sum import SecureSumError
from consent.eligibility import EligibleSet
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
    # (job_id, partner_id) -> the subjects charged for each round, and the ε already charged to them
    members: dict[tuple[str, str], EligibleSet] = field(default_factory=dict)
    charged: dict[tuple[str, str], float] = field(default_factory=dict)

    def hooks(self) -> JobHooks:
        return JobHooks(checkpoint=self.checkpoint, preflight=self.preflight, on_round=self.on_round,
                        on_finish=self.on_finish, on_stop=self.on_stop)  # fmt: skip

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
        problems, members = [], {}
        for partner in report.ready:  # each has eligible subjects: preflight refused the job otherwise, saying why
            eligible = members[partner.partner_id] = self.eligible(job, partner.partner_id)
            if eligible.count != partner.eligible_count:
                problems.append(f"{partner.partner_id}: reports {partner.eligible_count} eligible subjects, the "
                                f"ledger {eligible.count}")  # fmt: skip
            if job.aggregation == "secure":
                problems += self._masking_key_problems(job, partner.partner_id, partner.masking_key)
        if problems:
            raise PreflightError(f"job {job.job_id} refused at tree size {job.tree_size}: " + "; ".join(problems))
        for partner_id, eligible in members.items():
            self.members[(job.job_id, partner_id)] = eligible
            self.charged[(job.job_id, partner_id)] = 0.0
        self._append("job.started", {
            "job_id": job.job_id, "purpose": job.purpose, "data_categories": sorted(job.categories),
            "checkpoint": {"tree_size": job.tree_size, "root": self.checkpoint_root}, "rounds": job.rounds,
            "target_epsilon": job.target_epsilon, "delta": job.delta, "strategy": job.strategy,
            "aggregation": job.aggregation,
            "partners": sorted(p.partner_id for p in report.ready), "as_of": self.day,
            "lifetime_epsilon": self.lifetime_epsilon,
            # a secure job's signed masking keys, so the audit can re-check them after the job (consent.audit)
            **({"masking_keys": {p.partner_id: p.masking_key for p in report.ready}}
               if job.aggregation == "secure" else {}),
        })  # fmt: skip
        return report

    def on_round(self, manifest: RoundManifest) -> None:
        for part in sorted(manifest.partners, key=lambda p: p.partner_id):
            self._charge_round(manifest, part)
        body = manifest.to_dict()
        body.update(as_of=self.day, lifetime_epsilon=self.lifetime_epsilon, checkpoint_root=self.checkpoint_root)
        self._append("round.manifest", body)

    def on_finish(self, result: JobResult) -> None:
        job = result.job
        spent = result.epsilon_by_partner
        self._append("model.published", {
            "job_id": job.job_id, "model_hash": result.model_hash, "rounds": len(result.manifests),
            "epsilon_by_partner": dict(sorted(spent.items())),
        })  # fmt: skip

    def on_stop(self, job: Job, manifests: list[RoundManifest], error: Exception) -> None:
        charged = {p: eps for (j, p), eps in sorted(self.charged.items()) if j == job.job_id}
        log.warning("job %s stopped after %d round(s) (%s); ε charged by partner: %s", job.job_id, len(manifests),
                    type(error).__name__, charged)  # fmt: skip
        # Only the class of the error: its message holds free text (client errors) that must not reach the log.
        self._append("job.stopped", {
            "job_id": job.job_id, "rounds_completed": len(manifests), "cause": type(error).__name__,
            "epsilon_by_partner": charged,
        })  # fmt: skip

    # ---- budget -------------------------------------------------------------------------------------------

    def _charge_round(self, manifest: RoundManifest, part) -> None:
        key = (manifest.job_id, part.partner_id)
        eligible = self.members.get(key)
        if eligible is None:
            raise RuntimeError(f"job {manifest.job_id}: {part.partner_id} took part in round {manifest.server_round} "
                               "but was not admitted at preflight; nothing to charge")  # fmt: skip
        if part.eligible_root != eligible.root.hex() or part.eligible_count != eligible.count:
            log.warning("job %s round %d: %s committed to %d eligible subjects, preflight admitted %d; charging the "
                        "admitted set", manifest.job_id, manifest.server_round, part.partner_id, part.eligible_count,
                        eligible.count)  # fmt: skip
        # A partner's ε is cumulative over the rounds it trained in; a round it missed is in its next increment.
        increment = max(0.0, part.epsilon - self.charged[key])
        self.ledger.charge_budget(manifest.job_id, manifest.server_round, part.partner_id, eligible.subject_refs,
                                  increment)  # fmt: skip
        self.charged[key] = max(self.charged[key], part.epsilon)

    # ---- helpers ------------------------------------------------------------------------------------------

    def _masking_key_problems(self, job: Job, partner_id: str, signed: str) -> list[str]:
        """The partners check each other's masking keys before masking (``client.peer_keys``); checked here too, a
        forged one refuses the job at preflight with its name instead of failing every partner's round 1."""
        try:
            verified_public_key(signed, job.job_id, partner_id, partner_key_in(self.ledger, partner_id))
        except SecureSumError as exc:
            return [f"{partner_id}: {exc}"]
        return []

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
