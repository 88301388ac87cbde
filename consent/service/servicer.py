"""The ConsentLedger servicer: role rules and input checks in front of `consent.ledger.Ledger`.

Authentication happened in the interceptor (consent.service.auth); here each RPC names the roles that may call it
and, for partners, checks that the partner_id / subject in the request is the caller's own. Entry-level rules
(signatures, who may write which type, consent semantics) stay in the store, which judges every append.
"""

from __future__ import annotations

import functools
import json
import logging

import grpc

from consent import canonical, entries
from consent.eligibility import EligibleSet, prove_absent
from consent.keys import ROLES, key_id_of, public_from_b64, public_raw
from consent.ledger import Ledger
from consent.rules import AppendError
from consent.service import convert, scope
from consent.service.appender import AppendQueue
from consent.service.auth import Caller, current_caller
from consent.service.scope import Refused
from consent.store.vault import ErasedError
from consent.vocabulary import VocabularyError
from protos import ledger_pb2 as pb
from protos import ledger_pb2_grpc

log = logging.getLogger("cohort.ledger.service")

PARTNER, COORDINATOR, AUDITOR, OPERATOR = "partner", "coordinator", "auditor", "operator"
EVERYONE = (PARTNER, COORDINATOR, AUDITOR, OPERATOR)
WRITERS = (PARTNER, COORDINATOR, OPERATOR)
MAX_ENTRIES_PER_APPEND = 10_000
MAX_ENTRIES_PAGE = 1000
MAX_PAGE_BYTES = 3 * 1024 * 1024  # leaves room under the 4 MiB message limit for framing
MAX_REFS_PAGE = 200_000  # 16 bytes each: 3.2 MB
MAX_EVIDENCE_BYTES = 64 * 1024
ENTRY_INDEX_TRAILER = "x-cohort-entry-index"


def rpc(*roles: str):
    """Checks the caller's role, runs the handler, and turns every refusal into a gRPC status with its reason."""

    def wrap(fn):
        @functools.wraps(fn)
        def handler(self, request, context):
            caller = current_caller.get()
            if caller is None:  # only if the server was built without the auth interceptor
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "unsigned request")
            if caller.role not in roles:
                what = "read-only" if caller.role == AUDITOR else f"a {caller.role}"
                _abort(context, caller, fn.__name__, "PERMISSION_DENIED",
                       f"{caller.identity} is {what}; {fn.__name__} needs role {' or '.join(roles)}")  # fmt: skip
            try:
                return fn(self, request, caller)
            except Refused as exc:
                code, message = exc.code, exc.message
            except AppendError as exc:
                code, message = exc.code, str(exc)
                if exc.index is not None:
                    context.set_trailing_metadata(((ENTRY_INDEX_TRAILER, str(exc.index)),))
            except (VocabularyError, entries.EntryError, canonical.CanonicalError) as exc:
                code, message = "INVALID_ARGUMENT", str(exc)
            except ErasedError as exc:
                code, message = "FAILED_PRECONDITION", str(exc)
            except IndexError as exc:
                code, message = "OUT_OF_RANGE", str(exc)
            except (KeyError, LookupError) as exc:
                code, message = "NOT_FOUND", str(exc)
            except ValueError as exc:
                code, message = "INVALID_ARGUMENT", str(exc)
            except Exception:
                # The traceback goes to the server log; the caller learns nothing about internals.
                log.exception("%s failed for key %s", fn.__name__, caller.key_id)
                code, message = "INTERNAL", f"{fn.__name__} failed inside the ledger; see the server log"
            _abort(context, caller, fn.__name__, code, message)

        return handler

    return wrap


def _abort(context, caller: Caller, method: str, code: str, message: str):
    # Refusals are logged by reason and key id only: never request bodies, evidence or signatures.
    log.info("refused %s for %s (%s): %s %s", method, caller.identity, caller.key_id, code, message)
    context.abort(grpc.StatusCode[code], message)


def _own_partner(caller: Caller, partner_id: str) -> None:
    if caller.role == PARTNER and partner_id != caller.identity:
        raise Refused("PERMISSION_DENIED", f"partner {caller.identity!r} may only act for itself, not {partner_id!r}")


class ConsentLedgerServicer(ledger_pb2_grpc.ConsentLedgerServicer):
    def __init__(self, ledger: Ledger, appender: AppendQueue):
        self.ledger = ledger
        self.appender = appender
        self.engine = ledger.store.engine

    # ---- writes -------------------------------------------------------------------------------------------

    @rpc(*WRITERS)
    def Append(self, request: pb.AppendRequest, caller: Caller) -> pb.AppendResponse:
        batch = list(request.entries)
        if not batch:
            raise Refused("INVALID_ARGUMENT", "Append needs at least one entry")
        if len(batch) > MAX_ENTRIES_PER_APPEND:
            raise Refused("INVALID_ARGUMENT",
                          f"{len(batch)} entries in one Append; the limit is {MAX_ENTRIES_PER_APPEND}")  # fmt: skip
        if caller.role != OPERATOR:
            _check_signers(batch, caller)
        return pb.AppendResponse(indices=self.appender.append(batch))

    @rpc(PARTNER, OPERATOR)
    def ResolveSubjects(self, request: pb.ResolveSubjectsRequest, caller: Caller) -> pb.ResolveSubjectsResponse:
        _own_partner(caller, scope.name(request.partner_id, "partner_id"))
        hmacs = [scope.user_hmac(h) for h in request.user_hmacs]
        refs = self.ledger.subject_refs(request.partner_id, hmacs, create=request.create)
        return pb.ResolveSubjectsResponse(subject_refs=refs)

    @rpc(PARTNER, OPERATOR)
    def StoreEvidence(self, request: pb.StoreEvidenceRequest, caller: Caller) -> pb.StoreEvidenceResponse:
        consent_id = scope.subject_ref(request.consent_id, "consent_id")
        ref = scope.subject_ref(request.subject_ref)
        if len(request.evidence) > MAX_EVIDENCE_BYTES:
            raise Refused("INVALID_ARGUMENT", f"evidence is {len(request.evidence)} bytes; limit {MAX_EVIDENCE_BYTES}")
        state = scope.subject_state(self.engine, ref)
        if state is None:
            raise Refused("NOT_FOUND", f"subject {ref} is unknown; resolve it with ResolveSubjects first")
        if caller.role == PARTNER and state.partner_id != caller.identity:
            raise Refused("PERMISSION_DENIED", f"subject {ref} belongs to another partner")
        try:
            commitment = self.ledger.store_evidence(consent_id, ref, bytes(request.evidence))
        except ErasedError:
            raise Refused("FAILED_PRECONDITION", f"subject {ref} has been erased") from None
        except ValueError as exc:  # the vault's only ValueError: evidence for this consent_id exists already
            raise Refused("ALREADY_EXISTS", str(exc)) from None
        return pb.StoreEvidenceResponse(commitment=commitment)

    @rpc(PARTNER, OPERATOR)
    def CompleteErasure(self, request: pb.CompleteErasureRequest, caller: Caller) -> pb.CompleteErasureResponse:
        _own_partner(caller, scope.name(request.partner_id, "partner_id"))
        ref = scope.subject_ref(request.subject_ref)
        # Ledger.complete_erasure checks everything before it shreds (a shred cannot be undone) and refuses with
        # NOT_FOUND / PERMISSION_DENIED / ALREADY_EXISTS / FAILED_PRECONDITION, nothing shredded.
        return pb.CompleteErasureResponse(index=self.ledger.complete_erasure(request.partner_id, ref))

    @rpc(COORDINATOR, OPERATOR)
    def ChargeBudget(self, request: pb.ChargeBudgetRequest, caller: Caller) -> pb.ChargeBudgetResponse:
        scope.name(request.job_id, "job_id")
        scope.name(request.partner_id, "partner_id")
        refs = [scope.subject_ref(r) for r in request.subject_refs]
        eps = scope.epsilon(request.epsilon)
        self.ledger.charge_budget(request.job_id, request.round, request.partner_id, refs, eps)
        return pb.ChargeBudgetResponse(subject_count=len(set(refs)))

    @rpc(COORDINATOR, OPERATOR)
    def RegisterKey(self, request: pb.RegisterKeyRequest, caller: Caller) -> pb.RegisterKeyResponse:
        """Has the operator register a NEW identity's key (consent.rules: one active key per identity).

        The operator may register any role. A coordinator may register auditor identities only: partner (and
        coordinator, operator) identities are the operator's alone, so a coordinator can never mint a key that
        speaks for a partner. A key for an identity that already holds one is refused (ALREADY_EXISTS): a new key
        for an existing identity comes only by `key.rotated`, signed by the operator or by the current key."""
        scope.name(request.identity, "identity")
        if request.role not in ROLES:
            raise Refused("INVALID_ARGUMENT", f"unknown role {request.role!r}; roles are {ROLES}")
        if caller.role == COORDINATOR and request.role != AUDITOR:
            raise Refused("PERMISSION_DENIED", f"a coordinator registers auditor keys only; {request.role} "
                                               f"identities such as {request.identity!r} are registered by the "
                                               "operator")  # fmt: skip
        key_id = key_id_of(public_raw(public_from_b64(request.public_key)))  # ValueError -> INVALID_ARGUMENT
        self.ledger.register(request.identity, request.role, request.public_key)  # AppendError: ALREADY_EXISTS
        log.info("%s registered key %s for %s as %s", caller.identity, key_id, request.identity, request.role)
        return pb.RegisterKeyResponse(key_id=key_id)

    @rpc(*EVERYONE)
    def GetKey(self, request: pb.GetKeyRequest, caller: Caller) -> pb.GetKeyResponse:
        """The identity's active key: public, as it is in the log; a partner checks its peers' signatures with it."""
        key = self.ledger.active_key(scope.name(request.identity, "identity"))
        if key is None:
            raise Refused("NOT_FOUND", f"no active key for identity {request.identity!r}")
        return pb.GetKeyResponse(identity=key.identity, role=key.role, key_id=key.key_id, public_key=key.public_key)

    # ---- the log ------------------------------------------------------------------------------------------

    @rpc(*EVERYONE)
    def GetCheckpoint(self, request: pb.GetCheckpointRequest, caller: Caller) -> pb.GetCheckpointResponse:
        if request.publish:
            if caller.role not in (COORDINATOR, OPERATOR):
                raise Refused("PERMISSION_DENIED", f"{caller.identity} may read checkpoints but not publish them")
            cp = self.ledger.checkpoint()
        else:
            cp = self.ledger.store.checkpoint(request.tree_size if request.HasField("tree_size") else None)
        return pb.GetCheckpointResponse(checkpoint=convert.checkpoint_to_proto(cp) if cp else None)

    @rpc(*EVERYONE)
    def GetTreeSize(self, request: pb.GetTreeSizeRequest, caller: Caller) -> pb.GetTreeSizeResponse:
        return pb.GetTreeSizeResponse(tree_size=self.ledger.tree_size())

    @rpc(*EVERYONE)
    def GetInclusionProof(self, request: pb.GetInclusionProofRequest, caller: Caller) -> pb.InclusionProof:
        size = request.tree_size if request.HasField("tree_size") else self.ledger.tree_size()
        path = self.ledger.inclusion_proof(request.index, size)
        return pb.InclusionProof(index=request.index, tree_size=size, path=path)

    @rpc(*EVERYONE)
    def GetConsistencyProof(self, request: pb.GetConsistencyProofRequest, caller: Caller) -> pb.ConsistencyProof:
        size = request.new_size if request.HasField("new_size") else self.ledger.tree_size()
        path = self.ledger.consistency_proof(request.old_size, size)
        return pb.ConsistencyProof(old_size=request.old_size, new_size=size, path=path)

    @rpc(*EVERYONE)
    def GetEntries(self, request: pb.GetEntriesRequest, caller: Caller) -> pb.GetEntriesResponse:
        size = self.ledger.tree_size()
        end = min(request.end if request.HasField("end") else size, size)
        if request.start > end:
            raise Refused("OUT_OF_RANGE", f"start {request.start} is beyond end {end} (tree size {size})")
        page = min(request.page_size or MAX_ENTRIES_PAGE, MAX_ENTRIES_PAGE)
        out, total = [], 0
        for index, data in self.ledger.entries(request.start, min(end, request.start + page)):
            if out and total + len(data) > MAX_PAGE_BYTES:
                break
            out.append(pb.Entry(index=index, data=data))
            total += len(data)
        next_start = out[-1].index + 1 if out else end
        return pb.GetEntriesResponse(entries=out, next_start=next_start)

    # ---- consent state ------------------------------------------------------------------------------------

    @rpc(*EVERYONE)
    def GetSubjectHistory(self, request: pb.GetSubjectHistoryRequest, caller: Caller) -> pb.GetSubjectHistoryResponse:
        ref = scope.subject_ref(request.subject_ref)
        if caller.role == PARTNER:
            scope.own_subject(self.engine, caller.identity, ref)
        rows = self.ledger.store.subject_history(ref)
        return pb.GetSubjectHistoryResponse(entries=[pb.Entry(index=i, data=d) for i, d in rows])

    @rpc(*EVERYONE)
    def CurrentConsent(self, request: pb.CurrentConsentRequest, caller: Caller) -> pb.CurrentConsentResponse:
        ref = scope.subject_ref(request.subject_ref)
        if caller.role == PARTNER:
            scope.own_subject(self.engine, caller.identity, ref)
        return pb.CurrentConsentResponse(consent_id=self.ledger.current_consent(ref))

    @rpc(*EVERYONE)
    def GetEligibleSet(self, request: pb.EligibleSetQuery, caller: Caller) -> pb.EligibleSetResponse:
        eligible, day = self._eligible(request)
        # Refs only to whoever trains or schedules on them; everyone else (auditor, other partners) gets the
        # commitment, which is what round manifests publish anyway.
        own = caller.role == PARTNER and caller.identity == eligible.partner_id
        show = own or caller.role in (COORDINATOR, OPERATOR)
        resp = pb.EligibleSetResponse(
            partner_id=eligible.partner_id, purpose=eligible.purpose, categories=eligible.categories,
            tree_size=eligible.tree_size, day=day, count=eligible.count, root=eligible.root, refs_included=show,
        )  # fmt: skip
        if show:
            limit = min(request.refs_limit or MAX_REFS_PAGE, MAX_REFS_PAGE)
            start = min(request.refs_offset, eligible.count)
            resp.refs_offset = start
            resp.subject_refs_packed = convert.pack_refs(eligible.subject_refs[start : start + limit])
        return resp

    @rpc(*EVERYONE)
    def ProveAbsent(self, request: pb.ProveAbsentRequest, caller: Caller) -> pb.NonMembershipProof:
        ref = scope.subject_ref(request.subject_ref)
        _own_partner(caller, request.query.partner_id)
        eligible, _ = self._eligible(request.query)
        if request.expected_root and bytes(request.expected_root) != eligible.root:
            raise Refused("FAILED_PRECONDITION",
                          f"the eligible set for these parameters has root {eligible.root.hex()}, not "
                          f"{bytes(request.expected_root).hex()} (same tree_size, day and lifetime_epsilon?)")
        if ref in eligible:
            raise Refused("FAILED_PRECONDITION", f"subject {ref} IS in the eligible set; it has no absence proof")
        return convert.proof_to_proto(prove_absent(eligible, ref), eligible.root, eligible.tree_size)

    @rpc(PARTNER, COORDINATOR, AUDITOR, OPERATOR)
    def GetBudget(self, request: pb.GetBudgetRequest, caller: Caller) -> pb.GetBudgetResponse:
        _own_partner(caller, scope.name(request.partner_id, "partner_id"))
        refs = [scope.subject_ref(r) for r in request.subject_refs] or None
        spent = self.ledger.budget_spent(request.partner_id, refs)
        rows = [pb.SubjectBudget(subject_ref=r, epsilon_spent=e) for r, e in sorted(spent.items())]
        return pb.GetBudgetResponse(spent=rows)

    def _eligible(self, q: pb.EligibleSetQuery) -> tuple[EligibleSet, str]:
        scope.name(q.partner_id, "partner_id")
        size = self.ledger.tree_size()
        if q.HasField("tree_size"):
            if q.tree_size > size:
                raise Refused("OUT_OF_RANGE", f"tree size {q.tree_size} is beyond the log's {size}")
            size = q.tree_size
        day = scope.day(q.day) if q.HasField("day") else self.ledger.eligibility_day(size)
        cap = scope.epsilon(q.lifetime_epsilon, "lifetime_epsilon") if q.HasField("lifetime_epsilon") else None
        job_eps = scope.epsilon(q.job_epsilon, "job_epsilon") if q.HasField("job_epsilon") else 0.0
        return self.ledger.eligible_set(q.partner_id, q.purpose, list(q.categories), size, day, cap, job_eps), day


def _check_signers(batch: list[bytes], caller: Caller) -> None:
    """Callers submit their own signed entries; relaying someone else's is the operator's job alone."""
    for i, data in enumerate(batch):
        try:
            signer = json.loads(data).get("signer")
        except (ValueError, AttributeError):
            continue  # malformed: the store refuses it with the precise reason
        if signer != caller.identity:
            raise AppendError("PERMISSION_DENIED", f"entry is signed by {signer!r}; {caller.identity!r} may only "
                                                   "submit its own entries", i)  # fmt: skip
