"""Preflight, before round 1: fix the ledger checkpoint, then ask every partner whether it can take part.

Each connected partner answers a ``query`` message (``client.app``) with its eligible count at the checkpoint (when
it is 0, also how many subjects consent before the lifetime budget is applied), its feature schema and the epsilon it has already
spent in this job. A partner that answers with no eligible subject refuses the whole job (``PreflightError`` naming
it and saying whether nobody consents or every consenting subject is over budget): the consortium asked for that
partner, and quietly training without it would change what the job is. A partner is ready when it has eligible
rows to train on, shares the feature schema of the majority, and has budget left in this job; one that does not
answer in time is a dropout, tolerated like in any round. The job starts only if at least ``min_partners`` are
ready; otherwise ``PreflightError`` says, partner by partner, why not.

The checkpoint comes from ``job.tree_size`` or, when that is 0, from the ``checkpoint`` hook (the ledger's latest
signed checkpoint); a job never runs against a moving ledger.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from client.protocol import CONFIG, READINESS
from server.job import Job, NotEnoughPartners, PreflightError
from server.partners import connected_partners, messages_to

log = logging.getLogger(__name__)

CheckpointHook = Callable[[Job], int]


@dataclass(frozen=True)
class PartnerReadiness:
    node_id: int
    partner_id: str
    eligible_count: int
    train_rows: int
    n_features: int
    feature_schema: str
    epsilon_spent: float
    consenting_count: int = 0  # consenting subjects before the lifetime budget cap; >= eligible_count
    masking_key: str = ""  # secure jobs: the partner's signed X25519 key for the secure sum (client.peer_keys)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PreflightReport:
    job: Job  # with its checkpoint fixed
    ready: list[PartnerReadiness] = field(default_factory=list)
    not_ready: dict[int, str] = field(default_factory=dict)  # node id -> why

    @property
    def n_features(self) -> int:
        return self.ready[0].n_features

    @property
    def partner_of_node(self) -> dict[int, str]:
        return {p.node_id: p.partner_id for p in self.ready}

    def to_dict(self) -> dict:
        return {
            "tree_size": self.job.tree_size,
            "ready": [p.to_dict() for p in self.ready],
            "not_ready": {str(k): v for k, v in self.not_ready.items()},
        }


def fix_checkpoint(job: Job, checkpoint: CheckpointHook | None) -> Job:
    if job.tree_size > 0:
        return job
    if checkpoint is None:
        raise PreflightError(
            f"job {job.job_id}: the ledger checkpoint is not fixed (tree-size = 0) and no checkpoint hook is wired"
        )
    tree_size = int(checkpoint(job))
    if tree_size <= 0:
        raise PreflightError(f"job {job.job_id}: the ledger is empty (checkpoint tree size {tree_size})")
    return job.fixed_at(tree_size)


def preflight(grid: Grid, job: Job, checkpoint: CheckpointHook | None = None) -> PreflightReport:
    """Fix the checkpoint and collect every partner's readiness; raise ``PreflightError`` if too few are ready."""
    job = fix_checkpoint(job, checkpoint)
    try:
        nodes = connected_partners(
            grid, job.min_partners, job.preflight_timeout_s, want=job.expected_partners, what="preflight"
        )
    except NotEnoughPartners as exc:
        raise PreflightError(f"job {job.job_id}: {exc}") from exc
    content = RecordDict({CONFIG: job.round_config(0).to_record()})
    replies = grid.send_and_receive(
        messages_to(nodes, content, MessageType.QUERY, ttl_s=job.preflight_timeout_s),
        timeout=job.preflight_timeout_s,
    )
    report = PreflightReport(job=job)
    answered = set()
    refusals: dict[str, str] = {}  # partner -> why the job cannot run at all
    for msg in replies:
        node = int(msg.metadata.src_node_id)
        answered.add(node)
        readiness = _readiness(msg)
        if isinstance(readiness, str):
            report.not_ready[node] = readiness
        elif readiness.eligible_count < 1:
            refusals[readiness.partner_id] = _why_no_eligible(readiness, job)
            report.not_ready[node] = f"{readiness.partner_id}: {refusals[readiness.partner_id]}"
        elif readiness.epsilon_spent >= job.target_epsilon:
            report.not_ready[node] = f"{readiness.partner_id}: budget spent ({readiness.epsilon_spent:.3f})"
        elif readiness.partner_id in {p.partner_id for p in report.ready}:
            report.not_ready[node] = f"{readiness.partner_id}: a second node claims this partner"
        elif readiness.train_rows < 1:
            report.not_ready[node] = f"{readiness.partner_id}: no eligible rows at tree size {job.tree_size}"
        elif job.aggregation == "secure" and not readiness.masking_key:
            report.not_ready[node] = f"{readiness.partner_id}: no masking key for the secure sum"
        else:
            report.ready.append(readiness)
    for node in nodes:
        if node not in answered:
            report.not_ready[node] = f"no answer within {job.preflight_timeout_s:g} s"
    _keep_majority_schema(report)
    for node, why in sorted(report.not_ready.items()):
        log.warning("preflight: node %d not ready: %s", node, why)
    if refusals:
        raise PreflightError(
            f"job {job.job_id} refused at tree size {job.tree_size}: "
            + "; ".join(f"{partner}: {why}" for partner, why in sorted(refusals.items()))
        )
    if len(report.ready) < job.min_partners:
        raise PreflightError(
            f"job {job.job_id}: {len(report.ready)} partner(s) ready at tree size {job.tree_size}, need at least "
            f"{job.min_partners}; not ready: {report.not_ready}"
        )
    log.info(
        "preflight: job %s fixed at tree size %d; ready: %s",
        job.job_id,
        job.tree_size,
        {p.partner_id: p.eligible_count for p in report.ready},
    )
    return report


def _readiness(msg: Message) -> PartnerReadiness | str:
    if msg.has_error():
        return f"error: {msg.error.reason}"
    try:
        r = msg.content.config_records[READINESS]
        return PartnerReadiness(
            node_id=int(msg.metadata.src_node_id),
            partner_id=str(r["partner-id"]),
            eligible_count=int(r["eligible-count"]),
            train_rows=int(r["train-rows"]),
            n_features=int(r["n-features"]),
            feature_schema=str(r["feature-schema"]),
            epsilon_spent=float(r["epsilon-spent"]),
            # A partner that does not report it applies no cap of its own: everyone consenting is eligible.
            consenting_count=int(r.get("consenting-count", r["eligible-count"])),
            masking_key=str(r.get("masking-key", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        return f"unreadable readiness reply: {exc!r}"


def _why_no_eligible(readiness: PartnerReadiness, job: Job) -> str:
    if readiness.consenting_count > 0:
        return (f"all {readiness.consenting_count} consenting subjects would exceed their lifetime ε budget with this "
                f"job's ε {job.target_epsilon:g}")  # fmt: skip
    return (f"no subject consents to {job.purpose} on {', '.join(sorted(job.categories))} at tree size "
            f"{job.tree_size}")  # fmt: skip


def _keep_majority_schema(report: PreflightReport) -> None:
    """Partners must agree on the features to train one model; the most common schema wins."""
    if not report.ready:
        return
    schema, _ = Counter((p.feature_schema, p.n_features) for p in report.ready).most_common(1)[0]
    for p in list(report.ready):
        if (p.feature_schema, p.n_features) != schema:
            report.ready.remove(p)
            report.not_ready[p.node_id] = f"{p.partner_id}: feature schema {p.feature_schema} differs from {schema[0]}"
