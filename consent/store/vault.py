"""The subject vault: the mutable side tables that link a partner's user to a subject_ref and hold evidence.

The log never sees a user id: the partner sends HMAC(partner secret, user id) and gets a random subject_ref back.
Evidence (notice shown, exact time, channel) is AES-GCM-encrypted under a key of its own per subject. Erasure
deletes that key and the mapping (crypto-shredding): the ciphertext left behind is noise, the log still verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, delete, select
from sqlalchemy.exc import IntegrityError

from consent.entries import new_subject_ref
from consent.store import tables as t
from consent.store.members import member_clauses


def user_hmac(partner_secret: bytes, user_id: str) -> str:
    """What a partner sends instead of a user id: HMAC-SHA256 under a secret only the partner holds."""
    return hmac.new(partner_secret, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


def refs_by_user(lookup, partner_id: str, by_hmac: Mapping[str, str], create: bool = False) -> dict[str, str]:
    """{user id: subject_ref} of the users of ``by_hmac`` ({HMAC: user id}) that ``lookup`` (a ledger's or vault's
    ``subject_refs``) resolves: only the HMACs go to the ledger."""
    found = lookup(partner_id, list(by_hmac), create=create)
    return {by_hmac[h]: ref for h, ref in found.items()}


def evidence_commitment(evidence: bytes) -> str:
    """The hash a consent entry carries; the evidence itself includes a random salt, so the hash hides it."""
    return hashlib.sha256(evidence).hexdigest()


class ErasedError(LookupError):
    """The subject's key has been shredded: its evidence can never be read again."""


class SubjectVault:
    def __init__(self, engine: Engine):
        self.engine = engine

    def subject_refs(self, partner_id: str, hmacs: Sequence[str], create: bool = True) -> dict[str, str]:
        """Maps user HMACs to subject_refs, minting a random ref (and a data key) for each new user."""
        out: dict[str, str] = {}
        wanted = list(dict.fromkeys(hmacs))
        with self.engine.begin() as conn:
            for among in member_clauses(conn.dialect.name, t.subject_map.c.user_hmac, wanted):
                q = select(t.subject_map.c.user_hmac, t.subject_map.c.subject_ref).where(
                    t.subject_map.c.partner_id == partner_id, among
                )
                out.update({r[0]: r[1] for r in conn.execute(q)})
            if create:
                new = [h for h in wanted if h not in out]
                rows = [{"partner_id": partner_id, "user_hmac": h, "subject_ref": new_subject_ref()} for h in new]
                if rows:
                    conn.execute(t.subject_map.insert(), rows)
                    conn.execute(
                        t.subject_keys.insert(),
                        [{"subject_ref": r["subject_ref"], "aes_key": AESGCM.generate_key(256)} for r in rows],
                    )
                    out.update({r["user_hmac"]: r["subject_ref"] for r in rows})
        return out

    def store_evidence(self, consent_id: str, subject_ref: str, evidence: bytes) -> str:
        """Encrypts evidence under the subject's key; returns the commitment the consent entry must carry."""
        return self.store_evidence_many([(consent_id, subject_ref, evidence)])[0]

    def store_evidence_many(self, items: Sequence[tuple[str, str, bytes]]) -> list[str]:
        """Seals many consents' evidence in one transaction (one fsync), all or nothing."""
        rows = []
        with self.engine.begin() as conn:
            keys = self._keys(conn, {ref for _, ref, _ in items})
            for consent_id, subject_ref, evidence in items:
                key = keys.get(subject_ref)
                if key is None:
                    raise ErasedError(f"subject {subject_ref} has no data key (erased, or never registered)")
                nonce = os.urandom(12)
                ct = AESGCM(key).encrypt(nonce, evidence, consent_id.encode())
                rows.append({"consent_id": consent_id, "subject_ref": subject_ref, "nonce": nonce, "ciphertext": ct})
            try:
                if rows:
                    conn.execute(t.evidence.insert(), rows)
            except IntegrityError:
                raise ValueError("evidence for one of these consents is already stored") from None
        return [evidence_commitment(evidence) for _, _, evidence in items]

    def read_evidence(self, consent_id: str) -> bytes:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.evidence).where(t.evidence.c.consent_id == consent_id)).first()
            if row is None:
                raise KeyError(f"no evidence stored for consent {consent_id}")
            key = self._key(conn, row.subject_ref)
        return AESGCM(key).decrypt(bytes(row.nonce), bytes(row.ciphertext), consent_id.encode())

    def shred(self, partner_id: str, subject_ref: str) -> None:
        """Crypto-shredding: the subject's data key and user mapping are deleted; nothing links back to the person."""
        with self.engine.begin() as conn:
            conn.execute(delete(t.subject_keys).where(t.subject_keys.c.subject_ref == subject_ref))
            conn.execute(
                delete(t.subject_map).where(
                    t.subject_map.c.partner_id == partner_id, t.subject_map.c.subject_ref == subject_ref
                )
            )

    def is_shredded(self, subject_ref: str) -> bool:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.subject_keys.c.subject_ref).where(t.subject_keys.c.subject_ref == subject_ref))
            return row.first() is None

    @staticmethod
    def _keys(conn, subject_refs: set[str]) -> dict[str, bytes]:
        out = {}
        for among in member_clauses(conn.dialect.name, t.subject_keys.c.subject_ref, subject_refs):
            q = select(t.subject_keys.c.subject_ref, t.subject_keys.c.aes_key).where(among)
            out.update({r[0]: bytes(r[1]) for r in conn.execute(q)})
        return out

    @staticmethod
    def _key(conn, subject_ref: str) -> bytes:
        row = conn.execute(select(t.subject_keys.c.aes_key).where(t.subject_keys.c.subject_ref == subject_ref)).first()
        if row is None:
            raise ErasedError(f"subject {subject_ref} has no data key (erased, or never registered)")
        return bytes(row[0])
