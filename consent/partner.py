"""What a partner platform does with the ledger: record its users' consents, refusals, withdrawals, erasures.

The partner keeps its user ids to itself: it sends HMAC(partner secret, user id) and receives a subject_ref; the
evidence of each consent is sealed in the vault and only its hash enters the log. Works against the in-process
`Ledger` and the gRPC `LedgerClient` alike.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from consent.entries import make_entry
from consent.keys import Identity
from consent.store.vault import refs_by_user, user_hmac


@dataclass(frozen=True)
class Notice:
    """The privacy notice a user saw; the log carries its id, version and hash, never its text."""

    notice_id: str
    version: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def ref(self) -> dict:
        return {"id": self.notice_id, "version": self.version, "sha256": self.sha256}


DEFAULT_NOTICE = Notice(
    "cohort-modelling", "1",
    "We would like to use your browsing and purchase history to train a churn and lifetime-value model together "
    "with other platforms, without your data leaving us. You can withdraw at any time.",
)  # fmt: skip


class PartnerDesk:
    def __init__(self, identity: Identity, secret: bytes, ledger, jurisdiction: str = "CN"):
        if identity.role != "partner":
            raise ValueError(f"{identity.name} is a {identity.role}, not a partner")
        self.identity = identity
        self.secret = secret
        self.ledger = ledger
        self.jurisdiction = jurisdiction

    @property
    def partner_id(self) -> str:
        return self.identity.name

    def subject_refs(self, user_ids: Sequence[str], create: bool = True) -> dict[str, str]:
        by_hmac = {user_hmac(self.secret, u): u for u in user_ids}
        return refs_by_user(self.ledger.subject_refs, self.partner_id, by_hmac, create=create)

    def publish_notice(self, notice: Notice, purposes: Sequence[str]) -> int:
        body = {"partner_id": self.partner_id, "notice_id": notice.notice_id, "version": notice.version,
                "sha256": notice.sha256, "purposes": sorted(purposes)}  # fmt: skip
        return self.ledger.append([make_entry("notice.published", body, self.identity)])[0]

    def consent_entries(self, decisions: Sequence[dict], notice: Notice = DEFAULT_NOTICE, day: str | None = None):
        """Builds signed entries for many users at once: [{user_id, purposes, data_categories, given: bool}]."""
        day = day or dt.date.today().isoformat()
        refs = self.subject_refs([d["user_id"] for d in decisions])
        sealed = []  # (consent_id, subject_ref, evidence) for every consent given, sealed in one call
        bodies = []
        for d in decisions:
            ref = refs[d["user_id"]]
            consent_id = os.urandom(16).hex()
            if d.get("given", True):
                evidence = json.dumps({"salt": os.urandom(16).hex(), "channel": d.get("channel", "app"),
                                       "notice": notice.ref(), "shown_at": dt.datetime.now(dt.timezone.utc).isoformat()},
                                      sort_keys=True).encode()  # fmt: skip
                sealed.append((consent_id, ref, evidence))
                body = {
                    "consent_id": consent_id, "supersedes": d.get("supersedes"), "partner_id": self.partner_id,
                    "subject_ref": ref, "purposes": sorted(d["purposes"]), "data_categories": sorted(d["data_categories"]),
                    "legal_basis": "consent", "notice": notice.ref(), "collection_method": d.get("channel", "app"),
                    "jurisdiction": self.jurisdiction, "indicated_at": day, "valid_until": d.get("valid_until"),
                    "recipients": ["cohort-consortium"], "cross_border": False, "evidence_commitment": None,
                }  # fmt: skip
                bodies.append(("consent.given", body))
            else:
                body = {"consent_id": consent_id, "partner_id": self.partner_id, "subject_ref": ref,
                        "purposes": sorted(d["purposes"]), "data_categories": sorted(d["data_categories"]),
                        "notice": notice.ref(), "indicated_at": day}  # fmt: skip
                bodies.append(("consent.refused", body))
        commitments = iter(self._seal(sealed))
        entries = []
        for entry_type, body in bodies:
            if entry_type == "consent.given":
                body["evidence_commitment"] = next(commitments)
            entries.append(make_entry(entry_type, body, self.identity))
        return entries

    def _seal(self, items: list[tuple[str, str, bytes]]) -> list[str]:
        if not items:
            return []
        many = getattr(self.ledger, "store_evidence_many", None)
        if many is not None:
            return many(items)
        return [self.ledger.store_evidence(*item) for item in items]

    def record(self, decisions: Sequence[dict], notice: Notice = DEFAULT_NOTICE, batch: int = 1000) -> list[int]:
        out: list[int] = []
        for i in range(0, len(decisions), batch):
            out += self.ledger.append(self.consent_entries(decisions[i : i + batch], notice))
        return out

    def withdraw(self, user_id: str, consent_id: str | None = None) -> int:
        ref = self.subject_refs([user_id], create=False).get(user_id)
        if ref is None:
            raise LookupError(f"user {user_id!r} has no subject_ref at {self.partner_id}")
        consent_id = consent_id or self.ledger.current_consent(ref)
        if consent_id is None:
            raise LookupError(f"user {user_id!r} has no standing consent to withdraw")
        body = {"consent_id": consent_id, "partner_id": self.partner_id, "subject_ref": ref,
                "indicated_at": dt.date.today().isoformat()}  # fmt: skip
        return self.ledger.append([make_entry("consent.withdrawn", body, self.identity)])[0]

    def erase(self, user_id: str) -> str:
        """Records the erasure request, then has the ledger shred the subject; returns the (now orphan) ref."""
        ref = self.subject_refs([user_id], create=False).get(user_id)
        if ref is None:
            raise LookupError(f"user {user_id!r} has no subject_ref at {self.partner_id}")
        body = {"partner_id": self.partner_id, "subject_ref": ref, "indicated_at": dt.date.today().isoformat()}
        self.ledger.append([make_entry("subject.erasure_requested", body, self.identity)])
        self.ledger.complete_erasure(self.partner_id, ref)
        return ref
