"""`LedgerClient`: the ConsentLedger gRPC service behind the same methods as the in-process `consent.ledger.Ledger`.

    client = LedgerClient("127.0.0.1:50051", Identity.load("keys", "partner-a"), root_cert="ca.pem")
    desk = PartnerDesk(identity, secret, client)          # unchanged partner code

Every call is signed with the identity's ledger key (consent.service.auth) and has a deadline. Refusals raise
`LedgerRPCError` whose `.code` is the gRPC status name ("PERMISSION_DENIED", ...) — the same names
`consent.rules.AppendError.code` uses; a refused Append raises `RemoteAppendError`, which is both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import grpc

from consent.canonical import parse_canonical
from consent.checkpoints import Checkpoint
from consent.eligibility import EligibleSet, NonMembershipProof, eligible_root
from consent.entries import SignedEntry
from consent.keys import Identity
from consent.rules import KeyRecord
from consent.rules import AppendError
from consent.service.auth import SERVICE_PREFIX, sign_request
from consent.service.convert import (
    EligibleCommitment,
    RemoteEligibleSet,
    checkpoint_from_proto,
    proof_from_proto,
    unpack_refs,
)
from protos import ledger_pb2 as pb

DEFAULT_TIMEOUT = 30.0
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_ENTRY_INDEX_TRAILER = "x-cohort-entry-index"


class LedgerRPCError(Exception):
    """A call the ledger service refused or could not answer."""

    def __init__(self, method: str, status: grpc.StatusCode, details: str):
        Exception.__init__(self, f"{method}: {status.name}: {details}")
        self.method = method
        self.status = status
        self.code = status.name
        self.details = details


class RemoteAppendError(LedgerRPCError, AppendError):
    """An Append refused by the service; `.index` is the offending entry of the batch when the ledger named one."""

    def __init__(self, method: str, status: grpc.StatusCode, details: str, index: int | None):
        LedgerRPCError.__init__(self, method, status, details)
        self.index = index


class LedgerClient:
    def __init__(
        self,
        target: str,
        identity: Identity,
        root_cert: str | Path | bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        server_name: str | None = None,
    ):
        """`root_cert`: PEM (bytes or path) of the CA that signed the server's certificate; None = plaintext,
        which only a server started with --insecure accepts. `server_name` overrides the TLS host name check."""
        self.target = target
        self.identity = identity
        self.timeout = timeout
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        if root_cert is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            pem = root_cert if isinstance(root_cert, bytes) else Path(root_cert).read_bytes()
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(pem), options=options)
        self._calls: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "LedgerClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, name: str, request, response_type, timeout: float | None = None):
        method = SERVICE_PREFIX + name
        with self._lock:
            call = self._calls.get(name)
            if call is None:
                # No request serializer: we send the exact bytes we signed.
                call = self._calls[name] = self.channel.unary_unary(
                    method, request_serializer=None, response_deserializer=response_type.FromString
                )
        raw = request.SerializeToString(deterministic=True)
        try:
            return call(raw, timeout=timeout or self.timeout, metadata=sign_request(self.identity, method, raw))
        except grpc.RpcError as exc:
            status, details = exc.code(), exc.details() or ""
            if name == "Append":
                trailers = dict(exc.trailing_metadata() or ())
                index = trailers.get(_ENTRY_INDEX_TRAILER)
                raise RemoteAppendError(method, status, details, int(index) if index else None) from None
            raise LedgerRPCError(method, status, details) from None

    # ---- identities ---------------------------------------------------------------------------------------

    def register(self, identity: Identity | str, role: str | None = None, public_b64: str | None = None) -> str:
        if isinstance(identity, Identity):
            identity, role, public_b64 = identity.name, identity.role, identity.public_b64
        req = pb.RegisterKeyRequest(identity=identity, role=role or "", public_key=public_b64 or "")
        return self._call("RegisterKey", req, pb.RegisterKeyResponse).key_id

    def active_key(self, identity: str) -> KeyRecord | None:
        """The identity's current key as the log holds it, or None if it has none."""
        try:
            key = self._call("GetKey", pb.GetKeyRequest(identity=identity), pb.GetKeyResponse)
        except LedgerRPCError as exc:
            if exc.status == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return KeyRecord(key.key_id, key.identity, key.role, key.public_key)

    # ---- the log ------------------------------------------------------------------------------------------

    def append(self, entries: Sequence[SignedEntry | bytes], timeout: float | None = None) -> list[int]:
        data = [e.data if isinstance(e, SignedEntry) else bytes(e) for e in entries]
        return list(self._call("Append", pb.AppendRequest(entries=data), pb.AppendResponse, timeout).indices)

    def tree_size(self) -> int:
        return self._call("GetTreeSize", pb.GetTreeSizeRequest(), pb.GetTreeSizeResponse).tree_size

    def checkpoint(self) -> Checkpoint:
        """Has the operator sign a checkpoint at the current size (coordinator / operator only)."""
        resp = self._call("GetCheckpoint", pb.GetCheckpointRequest(publish=True), pb.GetCheckpointResponse)
        return checkpoint_from_proto(resp.checkpoint)

    def latest_checkpoint(self) -> Checkpoint | None:
        return self.checkpoint_at(None)

    def checkpoint_at(self, tree_size: int | None) -> Checkpoint | None:
        resp = self._call("GetCheckpoint", pb.GetCheckpointRequest(tree_size=tree_size), pb.GetCheckpointResponse)
        return checkpoint_from_proto(resp.checkpoint) if resp.HasField("checkpoint") else None

    def entries(self, start: int, end: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        while start < end:
            resp = self._call("GetEntries", pb.GetEntriesRequest(start=start, end=end), pb.GetEntriesResponse)
            out += [(e.index, bytes(e.data)) for e in resp.entries]
            if not resp.entries or resp.next_start <= start:
                break  # the log is shorter than `end`
            start = resp.next_start
        return out

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        req = pb.GetInclusionProofRequest(index=index, tree_size=tree_size)
        return [bytes(p) for p in self._call("GetInclusionProof", req, pb.InclusionProof).path]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        req = pb.GetConsistencyProofRequest(old_size=old_size, new_size=new_size)
        return [bytes(p) for p in self._call("GetConsistencyProof", req, pb.ConsistencyProof).path]

    def subject_history(self, subject_ref: str) -> list[tuple[int, dict]]:
        req = pb.GetSubjectHistoryRequest(subject_ref=subject_ref)
        resp = self._call("GetSubjectHistory", req, pb.GetSubjectHistoryResponse)
        return [(e.index, parse_canonical(bytes(e.data))) for e in resp.entries]

    def current_consent(self, subject_ref: str) -> str | None:
        req = pb.CurrentConsentRequest(subject_ref=subject_ref)
        resp = self._call("CurrentConsent", req, pb.CurrentConsentResponse)
        return resp.consent_id if resp.HasField("consent_id") else None

    # ---- eligibility --------------------------------------------------------------------------------------

    def eligible_set(
        self,
        partner_id: str,
        purpose: str,
        categories: Iterable[str],
        tree_size: int | None = None,
        day: str | None = None,
        lifetime_epsilon: float | None = None,
        job_epsilon: float | None = None,
    ) -> EligibleSet | EligibleCommitment:
        """The partner's eligible set; to callers who may not see the refs (auditor, other partners), only
        its count and root (`EligibleCommitment`). Refs arrive in pages and are checked against the root."""
        query = pb.EligibleSetQuery(partner_id=partner_id, purpose=purpose, categories=list(categories),
                                    tree_size=tree_size, day=day, lifetime_epsilon=lifetime_epsilon,
                                    job_epsilon=job_epsilon)  # fmt: skip
        first = self._call("GetEligibleSet", query, pb.EligibleSetResponse)
        if not first.refs_included:
            return EligibleCommitment(first.partner_id, first.purpose, tuple(first.categories), first.tree_size,
                                      first.count, bytes(first.root), first.day, lifetime_epsilon)  # fmt: skip
        refs = unpack_refs(bytes(first.subject_refs_packed))
        # Later pages pin the tree size and day of the first, so every page slices the same set.
        query.tree_size, query.day = first.tree_size, first.day
        while len(refs) < first.count:
            query.refs_offset = len(refs)
            page = self._call("GetEligibleSet", query, pb.EligibleSetResponse)
            more = unpack_refs(bytes(page.subject_refs_packed))
            if not more:
                break
            refs += more
        root = bytes(first.root)
        if len(refs) != first.count or eligible_root(refs) != root:
            raise LedgerRPCError(SERVICE_PREFIX + "GetEligibleSet", grpc.StatusCode.DATA_LOSS,
                                 "eligible refs do not match the set's count and root (did the budget change "
                                 "between pages?)")  # fmt: skip
        return RemoteEligibleSet(first.partner_id, first.purpose, tuple(first.categories), first.tree_size, refs, root,
                                 day=first.day, lifetime_epsilon=lifetime_epsilon)  # fmt: skip

    def prove_absent(
        self,
        eligible: EligibleSet | EligibleCommitment,
        subject_ref: str,
        day: str | None = None,
        lifetime_epsilon: float | None = None,
    ) -> NonMembershipProof:
        """Non-membership proof of subject_ref in the eligible set; the service recomputes the set and refuses
        (FAILED_PRECONDITION) if its root is not `eligible.root`. Pass day / lifetime_epsilon if the set was not
        obtained from this client."""
        day = day or getattr(eligible, "day", None)
        cap = lifetime_epsilon if lifetime_epsilon is not None else getattr(eligible, "lifetime_epsilon", None)
        query = pb.EligibleSetQuery(partner_id=eligible.partner_id, purpose=eligible.purpose,
                                    categories=list(eligible.categories), tree_size=eligible.tree_size, day=day,
                                    lifetime_epsilon=cap, refs_limit=1)  # fmt: skip
        req = pb.ProveAbsentRequest(query=query, subject_ref=subject_ref, expected_root=eligible.root)
        return proof_from_proto(self._call("ProveAbsent", req, pb.NonMembershipProof))

    # ---- subjects -----------------------------------------------------------------------------------------

    def subject_refs(self, partner_id: str, hmacs: Sequence[str], create: bool = True) -> dict[str, str]:
        req = pb.ResolveSubjectsRequest(partner_id=partner_id, user_hmacs=list(hmacs), create=create)
        return dict(self._call("ResolveSubjects", req, pb.ResolveSubjectsResponse).subject_refs)

    def store_evidence(self, consent_id: str, subject_ref: str, evidence: bytes) -> str:
        req = pb.StoreEvidenceRequest(consent_id=consent_id, subject_ref=subject_ref, evidence=evidence)
        return self._call("StoreEvidence", req, pb.StoreEvidenceResponse).commitment

    def complete_erasure(self, partner_id: str, subject_ref: str) -> int:
        req = pb.CompleteErasureRequest(partner_id=partner_id, subject_ref=subject_ref)
        return self._call("CompleteErasure", req, pb.CompleteErasureResponse).index

    # ---- privacy budget -----------------------------------------------------------------------------------

    def charge_budget(self, job_id: str, round_no: int, partner_id: str, subject_refs: Sequence[str], epsilon: float):
        req = pb.ChargeBudgetRequest(job_id=job_id, round=round_no, partner_id=partner_id,
                                     subject_refs=list(subject_refs), epsilon=epsilon)  # fmt: skip
        self._call("ChargeBudget", req, pb.ChargeBudgetResponse)

    def budget_spent(self, partner_id: str, subject_refs: Sequence[str] | None = None) -> dict[str, float]:
        if subject_refs is not None and not subject_refs:
            return {}  # the wire's empty list means "every subject"; an empty question has an empty answer
        req = pb.GetBudgetRequest(partner_id=partner_id, subject_refs=list(subject_refs or []))
        return {b.subject_ref: b.epsilon_spent for b in self._call("GetBudget", req, pb.GetBudgetResponse).spent}
