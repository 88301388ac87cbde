"""Screening of train replies before aggregation: a malformed or unsafe update is refused and logged, never averaged.

A reply is refused when its arrays do not match the global model (names, shapes, a floating dtype; in a secure job
uint64 words of a masked update), contain NaN or Inf, when ``num-examples`` is not a positive finite number, when
the reported epsilon is above the job's target, when its manifest part is missing or does not describe this job,
this round and this checkpoint, or, in a secure job, when it lacks a sealed seed share for each other partner of the
round's roster (``client.masking``). With the preflight's ``partner_of_node``, a reply from a node preflight did not
find ready is refused too: that node's partner was never checked against the ledger. Replies that carry a Flower
error (the ClientApp raised, or the node was lost) are counted as failed, not refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from client.manifest import ManifestPart
from client.privacy import EPSILON_SLACK
from client.protocol import ARRAYS, EPSILON, MANIFEST, METRICS, NUM_EXAMPLES, SEALED
from client.secure_sum import SEALED_SHARE_BYTES
from consent.entries import MAX_REASON
from server.job import Job

log = logging.getLogger(__name__)

ArrayShapes = dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class Refusal:
    node_id: int
    partner_id: str | None
    reason: str

    def to_dict(self) -> dict:
        return {"node_id": self.node_id, "partner_id": self.partner_id, "reason": manifest_reason(self.reason)}


def manifest_reason(reason: str) -> str:
    """What of a refusal or failure goes into the signed manifest: a crashed ClientApp's reason is a whole remote
    traceback (kept in the log), of which the last line names the error; the ledger takes at most MAX_REASON."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else "no reason given"
    return summary if len(summary) <= MAX_REASON else summary[: MAX_REASON - 1] + "…"


@dataclass(frozen=True)
class AcceptedUpdate:
    node_id: int
    message: Message
    part: ManifestPart


@dataclass
class ScreenedReplies:
    accepted: list[AcceptedUpdate] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)  # answered, but the update is unusable
    failed: list[Refusal] = field(default_factory=list)  # answered with an error


class UpdateRefused(ValueError):
    pass


def shapes_of(arrays: ArrayRecord) -> ArrayShapes:
    return {name: tuple(array.shape) for name, array in arrays.items()}


def screen_train_replies(
    replies: Iterable[Message],
    reference: ArrayShapes,
    job: Job,
    server_round: int,
    partner_of_node: Mapping[int, str] | None = None,
    node_of_message: Mapping[str, int] | None = None,
    roster: Sequence[str] | None = None,
    spent: Mapping[str, float] | None = None,
) -> ScreenedReplies:
    """Split replies into accepted updates, refused updates and failures, logging every refusal and failure.

    ``node_of_message`` maps the ids of the messages sent to their destination node: an error reply about a lost
    node comes from the SuperLink itself, so its source is not the partner it is about. ``roster``: a secure
    round's partners, whose seed shares each reply must carry. ``spent``: the ε each partner reported in earlier
    rounds of the job; a partner reporting less has lost track of its spend, and its update is refused."""
    screened = ScreenedReplies()
    seen_partners: set[str] = set()
    for msg in replies:
        node_id = replying_node(msg, node_of_message or {})
        if msg.has_error():
            failure = Refusal(node_id, (partner_of_node or {}).get(node_id), msg.error.reason)
            log.warning("round %d: node %d failed: %s", server_round, node_id, failure.reason)
            screened.failed.append(failure)
            continue
        partner_id = None
        try:
            part = _manifest_part(msg)
            partner_id = part.partner_id
            _check_ready(msg, node_id, partner_of_node or {})
            _check_identity(part, node_id, job, server_round, partner_of_node or {}, seen_partners)
            _check_arrays(msg.content.array_records, reference, masked=job.aggregation == "secure")
            _check_metrics(msg.content.metric_records, part, job)
            _check_spend_kept(part, (spent or {}).get(part.partner_id, 0.0))
            if roster is not None:
                _check_sealed(msg, part.partner_id, roster)
        except (UpdateRefused, KeyError, TypeError, ValueError) as exc:
            refusal = Refusal(node_id, partner_id, str(exc) or type(exc).__name__)
            log.warning(
                "round %d: refused update from node %d (partner %s): %s",
                server_round,
                node_id,
                partner_id or "?",
                refusal.reason,
            )
            screened.refused.append(refusal)
            continue
        seen_partners.add(part.partner_id)
        screened.accepted.append(AcceptedUpdate(node_id, msg, part))
    return screened


def replying_node(msg: Message, node_of_message: Mapping[str, int]) -> int:
    return int(node_of_message.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id))


def _check_ready(msg: Message, node_id: int, partner_of_node: Mapping[int, str]) -> None:
    if not partner_of_node:
        return  # no preflight (unit tests): nothing to hold the node to
    for node in (node_id, int(msg.metadata.src_node_id)):
        if node not in partner_of_node:
            raise UpdateRefused(f"node {node} was not found ready at preflight; its update is not used")


def _manifest_part(msg: Message) -> ManifestPart:
    records = msg.content.config_records
    if MANIFEST not in records or not isinstance(records[MANIFEST], ConfigRecord):
        raise UpdateRefused("no manifest part in the reply")
    return ManifestPart.from_record(records[MANIFEST])


def _check_identity(
    part: ManifestPart,
    node_id: int,
    job: Job,
    server_round: int,
    partner_of_node: Mapping[int, str],
    seen_partners: set[str],
) -> None:
    expected = {
        "job_id": job.job_id,
        "server_round": server_round,
        "tree_size": job.tree_size,
        "purpose": job.purpose,
        "categories": tuple(sorted(job.categories)),
    }
    for name, value in expected.items():
        if getattr(part, name) != value:
            raise UpdateRefused(f"manifest {name} is {getattr(part, name)!r}, expected {value!r}")
    known = partner_of_node.get(node_id)
    if known is not None and known != part.partner_id:
        raise UpdateRefused(f"node {node_id} was {known!r} at preflight but now claims {part.partner_id!r}")
    if part.partner_id in seen_partners:
        raise UpdateRefused(f"a second update for partner {part.partner_id!r} in the same round")


def _check_arrays(array_records: Mapping[str, ArrayRecord], reference: ArrayShapes, masked: bool = False) -> None:
    """Names and shapes of the global model; float and finite, or, masked for a secure sum, uint64 words (whose
    values say nothing: the unmasked total is checked in ``server.secure_aggregation``)."""
    if set(array_records) != {ARRAYS}:
        raise UpdateRefused(f"expected one ArrayRecord {ARRAYS!r}, got {sorted(array_records)}")
    record = array_records[ARRAYS]
    if list(record.keys()) != list(reference):
        missing = sorted(set(reference) - set(record.keys()))
        extra = sorted(set(record.keys()) - set(reference))
        raise UpdateRefused(f"arrays do not match the global model (missing {missing}, unexpected {extra})")
    for name, array in record.items():
        if tuple(array.shape) != reference[name]:
            raise UpdateRefused(f"{name}: shape {tuple(array.shape)}, expected {reference[name]}")
        values = array.numpy()
        if masked:
            if values.dtype != np.uint64:
                raise UpdateRefused(f"{name}: dtype {values.dtype}, expected uint64 words of a masked update")
            continue
        if not np.issubdtype(values.dtype, np.floating):
            raise UpdateRefused(f"{name}: dtype {values.dtype} is not floating point")
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise UpdateRefused(f"{name}: {bad} NaN/Inf value(s)")


def _check_spend_kept(part: ManifestPart, before: float) -> None:
    """ε is cumulative over the job: a partner reporting less than before has lost its spend (a SuperNode restarted
    without its state dir) and would go on as if its users had spent nothing."""
    if part.epsilon < before - 1e-9:
        raise UpdateRefused(f"epsilon {part.epsilon:.4f} is below the {before:.4f} this partner reported in an earlier "
                            "round: it lost track of its privacy spend, and its updates are not used in this "
                            "job")  # fmt: skip


def _check_sealed(msg: Message, partner_id: str, roster: Sequence[str]) -> None:
    """A secure reply's self-mask seed shares: one sealed share per other roster partner, of the sealed size. Without
    them the server could not remove the reply's self mask, and the whole round would be lost."""
    sealed = msg.content.config_records.get(SEALED)
    if sealed is None:
        raise UpdateRefused(f"no {SEALED!r} record: a secure reply carries its seed shares sealed for its peers")
    peers = set(roster) - {partner_id}
    if set(sealed.keys()) != peers:
        raise UpdateRefused(f"sealed seed shares for {sorted(sealed.keys())}, expected one for each of {sorted(peers)}")
    for peer, box in sealed.items():
        if not isinstance(box, str) or len(box) != 2 * SEALED_SHARE_BYTES:
            raise UpdateRefused(f"the seed share sealed for {peer!r} is not {SEALED_SHARE_BYTES} bytes in hex")
        try:
            bytes.fromhex(box)
        except ValueError as exc:
            raise UpdateRefused(f"the seed share sealed for {peer!r} is not hex") from exc


def _check_metrics(metric_records: Mapping[str, MetricRecord], part: ManifestPart, job: Job) -> None:
    if set(metric_records) != {METRICS}:
        raise UpdateRefused(f"expected one MetricRecord {METRICS!r}, got {sorted(metric_records)}")
    metrics = metric_records[METRICS]
    n = metrics.get(NUM_EXAMPLES)
    if not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
        raise UpdateRefused(f"{NUM_EXAMPLES} must be a positive finite number, got {n!r}")
    if int(n) != part.num_examples:
        raise UpdateRefused(f"{NUM_EXAMPLES} {n} differs from the manifest's {part.num_examples}")
    if part.num_examples > part.eligible_count:
        raise UpdateRefused(f"trained on {part.num_examples} rows but only {part.eligible_count} subjects are eligible")
    epsilon = metrics.get(EPSILON)
    if not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon < 0:
        raise UpdateRefused(f"{EPSILON} must be a finite number >= 0, got {epsilon!r}")
    if epsilon > job.target_epsilon + EPSILON_SLACK:
        raise UpdateRefused(f"epsilon {epsilon:.4f} exceeds the job's target {job.target_epsilon}")
    if not math.isclose(epsilon, part.epsilon, rel_tol=1e-9, abs_tol=1e-12):
        raise UpdateRefused(f"{EPSILON} {epsilon} differs from the manifest's {part.epsilon}")
