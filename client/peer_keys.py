"""Masking keys a partner can trust: each X25519 key of the secure sum is signed with its owner's ledger key.

Why: the server relays the roster's masking keys. Unsigned, it could hand the other partners a key of its own in
place of one partner's, and read that partner's masked vector in the clear. Signed, a partner masks only with keys
its peers signed, checked against the Ed25519 key each peer holds in the consent ledger (its ``key.registered`` or
``key.rotated`` entry, role ``partner``); the server never holds a partner's signing key. The statement signed and
its check are ``consent.masking_keys`` (the ledger records the keys in ``job.started``, and the audit re-checks them).

A partner's link to the ledger (``client.consent_link.ConsentLink``, or a test's stand-in) is a ``KeyBook``: it signs
as its partner with ``<partner>.key`` from its keys dir and looks up a peer's active key.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from client.secure_sum import SecureSumError
from consent import masking_keys


@runtime_checkable
class KeyBook(Protocol):
    def sign_as(self, partner_id: str, message: bytes) -> bytes:
        """``message`` signed with ``partner_id``'s own ledger key (Ed25519)."""

    def partner_key(self, partner_id: str) -> str | None:
        """The base64 raw Ed25519 key the ledger holds active for partner ``partner_id`` (None: no such partner)."""


def partner_key_in(ledger, partner_id: str) -> str | None:
    """``partner_id``'s active key in a ledger with ``active_key`` (``consent.ledger.LedgerReader``, ``LedgerClient``),
    if it is a partner's: a coordinator or operator key never signs as a partner."""
    key = ledger.active_key(partner_id)
    return key.public_key if key is not None and key.role == "partner" else None


def key_book(ledger: object, partner_id: str) -> KeyBook:
    """``ledger`` as a KeyBook, or a clear error: a secure job cannot run on a link that cannot sign."""
    if not isinstance(ledger, KeyBook):
        raise SecureSumError(f"partner {partner_id!r}: its ledger link ({type(ledger).__name__}) cannot sign masking "
                             "keys or look up its peers' keys, so it cannot take part in a secure job")  # fmt: skip
    return ledger


def sign_masking_key(book: KeyBook, job_id: str, partner_id: str, public_hex: str) -> str:
    """The signed masking key ``partner_id`` announces for ``job_id``."""
    return masking_keys.sign(lambda message: book.sign_as(partner_id, message), job_id, partner_id, public_hex)


def verified_public_key(signed: str, job_id: str, partner_id: str, ledger_key_b64: str | None) -> str:
    """The X25519 public key (hex) of ``signed`` if ``partner_id``'s ledger key signed it for ``job_id``; else
    ``SecureSumError`` naming the partner."""
    try:
        return masking_keys.check(signed, job_id, partner_id, ledger_key_b64)
    except masking_keys.MaskingKeyError as exc:
        raise SecureSumError(str(exc)) from None


def verified_roster(book: KeyBook, job_id: str, roster: dict[str, str], verified: set[str]) -> dict[str, str]:
    """``roster`` (partner -> signed key) as partner -> X25519 public key (hex), every signature checked against
    the ledger. ``verified`` holds the ``"<partner> <signed key>"`` pairs already checked in this job, and gains the
    new ones: a peer's key is fixed for the job, so the ledger is asked once per peer, not once per round."""
    out = {}
    for partner, signed in roster.items():
        if f"{partner} {signed}" not in verified:
            verified_public_key(signed, job_id, partner, book.partner_key(partner))
            verified.add(f"{partner} {signed}")
        out[partner] = str(signed).partition(".")[0]
    return out
