"""The ledger as one object: the log, the subject vault and the budget book behind the operator's key.

This is the in-process API (used by `cohort demo`, the gRPC service and tests); `consent.client.LedgerClient`
offers the same method names over gRPC, so partner and coordinator code runs against either.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from consent.checkpoints import Checkpoint
from consent.eligibility import EligibleSet, NonMembershipProof, eligible_root, fold_eligible, prove_absent
from consent.entries import EntryError, SignedEntry, make_entry, parse_entry, parse_time
from consent.keys import Identity, key_id_of, public_from_b64, public_raw
from consent.rules import ALREADY_EXISTS, FAILED_PRECONDITION, NOT_FOUND, PERMISSION_DENIED, AppendError, KeyRecord
from consent.store.budget import BudgetBook
from consent.store.log import LedgerStore
from consent.store.vault import SubjectVault
from consent.vocabulary import check_categories, check_purposes


class LedgerReader:
    """Everything that needs no operator key: reads, proofs, eligibility, subject lookups (never minting refs)."""

    def __init__(self, store: LedgerStore):
        self.store = store
        self.vault = SubjectVault(store.engine)
        self.budget = BudgetBook(store.engine)

    @classmethod
    def open_readonly(cls, url: str) -> "LedgerReader":
        return cls(LedgerStore.open(url, migrate=False))

    def close(self) -> None:
        self.store.close()

    def tree_size(self) -> int:
        return self.store.tree_size()

    def latest_checkpoint(self) -> Checkpoint | None:
        return self.store.checkpoint()

    def entries(self, start: int, end: int) -> list[tuple[int, bytes]]:
        return self.store.entries(start, end)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        return self.store.inclusion_proof(index, tree_size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return self.store.consistency_proof(old_size, new_size)

    def subject_history(self, subject_ref: str) -> list[tuple[int, dict]]:
        return [(i, parse_entry(d, now=_far_future()).fields) for i, d in self.store.subject_history(subject_ref)]

    def current_consent(self, subject_ref: str) -> str | None:
        """The consent_id of the subject's standing `consent.given`, or None."""
        standing = None
        for _, e in self.subject_history(subject_ref):
            body = e["body"]
            if e["type"] == "consent.given":
                standing = body["consent_id"]
            elif e["type"] == "consent.refused":
                standing = None
            elif e["type"] in ("consent.withdrawn", "consent.expired") and body["consent_id"] == standing:
                standing = None
        return standing

    def eligible_set(
        self,
        partner_id: str,
        purpose: str,
        categories: Iterable[str],
        tree_size: int | None = None,
        day: str | None = None,
        lifetime_epsilon: float | None = None,
        job_epsilon: float = 0.0,
    ) -> EligibleSet:
        """Subjects of one partner allowed (purpose, categories) at tree size.

        With a lifetime cap, only subjects whose ε spent so far plus the job's ε stays within the cap: a job may
        never take anyone over. Budgets are charged when a job closes, so the set is stable for the whole job."""
        purpose = check_purposes([purpose])[0]
        cats = tuple(check_categories(list(categories)))
        size = self.tree_size() if tree_size is None else tree_size
        day = day or self.eligibility_day(size)
        refs = fold_eligible(self.store.consent_events(partner_id, size), purpose, cats, day)
        if lifetime_epsilon is not None:
            spent = self.budget.spent(partner_id)
            refs = [r for r in refs if spent.get(r, 0.0) + job_epsilon <= lifetime_epsilon + 1e-9]
        return EligibleSet(partner_id, purpose, cats, size, refs, eligible_root(refs))

    def eligibility_day(self, tree_size: int) -> str:
        """The day a consent's `valid_until` is judged against when the caller names none: the UTC date of the
        signed checkpoint at exactly that tree size, so one checkpoint gives one eligible set on any day; UTC today
        when no checkpoint was signed at that size. The gRPC service uses the same rule."""
        cp = self.store.checkpoint(tree_size)
        if cp is not None:
            try:
                return parse_time(cp.ts, "checkpoint ts").astimezone(dt.timezone.utc).date().isoformat()
            except EntryError:
                pass  # a damaged checkpoint (`cohort ledger verify` names it) does not fix a day
        return utc_today()

    def prove_absent(self, eligible: EligibleSet, subject_ref: str) -> NonMembershipProof:
        return prove_absent(eligible, subject_ref)

    def budget_spent(self, partner_id: str, subject_refs: Sequence[str] | None = None) -> dict[str, float]:
        return self.budget.spent(partner_id, subject_refs)


    def subject_refs(self, partner_id: str, hmacs: Sequence[str], create: bool = False) -> dict[str, str]:
        return self.vault.subject_refs(partner_id, hmacs, create=False)

    def active_key(self, identity: str) -> KeyRecord | None:
        """The identity's current key (registered or rotated, not revoked), or None if it has none."""
        return next((k for k in self.store.keys_of(identity) if not k.revoked), None)


class Ledger(LedgerReader):
    """The operator's ledger: a LedgerReader that may also register keys, sign checkpoints and shred subjects."""

    def __init__(self, store: LedgerStore, operator: Identity):
        if operator.role != "operator":
            raise ValueError(f"the ledger must be run under an operator key, not a {operator.role!r} key")
        super().__init__(store)
        self.operator = operator
        if store.tree_size() == 0:
            self._register(operator.name, "operator", operator.public_b64, operator.key_id)

    @classmethod
    def open(cls, url: str, operator: Identity, origin: str = "cohort-ledger") -> "Ledger":
        return cls(LedgerStore.open(url, origin=origin), operator)

    # ---- identities ---------------------------------------------------------------------------------------

    def register(self, identity: Identity | str, role: str | None = None, public_b64: str | None = None) -> str:
        """Registers a NEW identity's public key under a role; returns its key id. Idempotent for the same key.

        An identity holds one active key: registering another key for an identity that has one is refused
        (AppendError ALREADY_EXISTS, nothing stored); use `rotate`. See consent.rules for the whole rule."""
        if isinstance(identity, Identity):
            name, role, public_b64, key_id = identity.name, identity.role, identity.public_b64, identity.key_id
        else:
            name, key_id = identity, key_id_of(public_raw(public_from_b64(public_b64)))
        existing = self.store.key(key_id)
        if existing is not None:
            if existing.identity != name or existing.role != role:
                raise AppendError(ALREADY_EXISTS, f"key {key_id} is already registered to {existing.identity} as "
                                                  f"{existing.role}")  # fmt: skip
            return key_id
        self._register(name, role, public_b64, key_id)  # the rules refuse a second key for `name` (ALREADY_EXISTS)
        return key_id

    def rotate(self, identity: str, public_b64: str) -> str:
        """Replaces the identity's current key with a new one (same role), signed by the operator; returns the new
        key id. The old key is revoked from this entry on."""
        new_id = key_id_of(public_raw(public_from_b64(public_b64)))
        current = [k for k in self.store.keys_of(identity) if not k.revoked]
        if not current:
            raise AppendError(NOT_FOUND, f"identity {identity!r} holds no key to rotate; register it instead")
        old = current[0]
        body = {"identity": identity, "role": old.role, "key_id": new_id, "public_key": public_b64,
                "replaces": old.key_id}  # fmt: skip
        self.store.append([make_entry("key.rotated", body, self.operator)])
        return new_id

    def _register(self, name: str, role: str, public_b64: str, key_id: str) -> None:
        body = {"identity": name, "role": role, "key_id": key_id, "public_key": public_b64}
        self.store.append([make_entry("key.registered", body, self.operator)])

    # ---- the log ------------------------------------------------------------------------------------------

    def append(self, entries: Sequence[SignedEntry | bytes]) -> list[int]:
        return self.store.append(entries)

    def append_as_operator(self, entry_type: str, body: dict) -> int:
        return self.store.append([make_entry(entry_type, body, self.operator)])[0]

    def checkpoint(self) -> Checkpoint:
        """Signs and publishes a checkpoint at the current size (or returns the one already there)."""
        return self.store.publish_checkpoint(self.operator)

    # ---- eligibility --------------------------------------------------------------------------------------

    # ---- subjects -----------------------------------------------------------------------------------------

    def subject_refs(self, partner_id: str, hmacs: Sequence[str], create: bool = True) -> dict[str, str]:
        return self.vault.subject_refs(partner_id, hmacs, create=create)

    def store_evidence(self, consent_id: str, subject_ref: str, evidence: bytes) -> str:
        return self.vault.store_evidence(consent_id, subject_ref, evidence)

    def store_evidence_many(self, items: Sequence[tuple[str, str, bytes]]) -> list[str]:
        return self.vault.store_evidence_many(items)

    def complete_erasure(self, partner_id: str, subject_ref: str) -> int:
        """Shreds the subject's key and mapping, then records `subject.erased` under the operator's key.

        A shred cannot be undone, so everything `subject.erased` needs is checked FIRST and a refusal shreds nothing
        (AppendError): the subject is in the log (NOT_FOUND), is this partner's (PERMISSION_DENIED), has a
        `subject.erasure_requested` (FAILED_PRECONDITION) and is not erased already (ALREADY_EXISTS)."""
        state = self.store.subject_state(subject_ref)
        if state is None:
            raise AppendError(NOT_FOUND, f"subject {subject_ref} has no entries in the log")
        if state.partner_id != partner_id:
            raise AppendError(PERMISSION_DENIED, f"subject {subject_ref} does not belong to {partner_id!r}")
        if state.erased:
            raise AppendError(ALREADY_EXISTS, f"subject {subject_ref} is already erased")
        if not state.erasure_requested:
            raise AppendError(FAILED_PRECONDITION, f"subject {subject_ref} has no subject.erasure_requested entry")
        self.vault.shred(partner_id, subject_ref)
        body = {"partner_id": partner_id, "subject_ref": subject_ref, "indicated_at": utc_today()}
        return self.append_as_operator("subject.erased", body)

    # ---- privacy budget -----------------------------------------------------------------------------------

    def charge_budget(self, job_id: str, round_no: int, partner_id: str, subject_refs: Sequence[str], epsilon: float):
        self.budget.charge(job_id, round_no, partner_id, subject_refs, epsilon)


def utc_today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def _far_future() -> dt.datetime:
    # Stored entries were judged at append time; re-reading them must not fail the clock-skew rule.
    return dt.datetime.max.replace(tzinfo=dt.timezone.utc) - dt.timedelta(days=1)
