"""Masking keys a partner can trust: each X25519 key of the secure sum is signed with its owner's ledger key.

Why: the server relays the roster's masking keys. Unsigned, it could hand the other partners a key of its own in
place of one partner's, and read that partner's masked vector in the clear. Signed, a partner masks only with keys
its peers signed, checked against the Ed25519 key each peer holds in the consent ledger (its ``key.registered`` or
``key.rotated`` entry, role ``partner``); the server never holds a partner's signing key.

A signed masking key travels as one string, ``<X25519 public key, hex>.<Ed25519 signature, hex>``; the signature is
over ``STATEMENT | job_id | partner_id | X25519 public key`` (raw bytes, NUL-separated), so a key signed for one
job or one partner is refused for any other.

A partner's link to the ledger (``client.consent_link.ConsentLink``, or a test's stand-in) is a ``KeyBook``: it signs
as its partner with ``<partner>.key`` from its keys dir and looks up a peer's active key.
"""

from __future__ import annotations

import base64
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.secure_sum import SecureSumError

STATEMENT = b"cohort/secure-sum/masking-key/v1"


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


def statement(job_id: str, partner_id: str, public_hex: str) -> bytes:
    return b"\0".join((STATEMENT, job_id.encode(), partner_id.encode(), bytes.fromhex(public_hex)))


def key_book(ledger: object, partner_id: str) -> KeyBook:
    """``ledger`` as a KeyBook, or a clear error: a secure job cannot run on a link that cannot sign."""
    if not isinstance(ledger, KeyBook):
        raise SecureSumError(f"partner {partner_id!r}: its ledger link ({type(ledger).__name__}) cannot sign masking "
                             "keys or look up its peers' keys, so it cannot take part in a secure job")  # fmt: skip
    return ledger


def sign_masking_key(book: KeyBook, job_id: str, partner_id: str, public_hex: str) -> str:
    """The signed masking key ``partner_id`` announces for ``job_id``."""
    return f"{public_hex}.{book.sign_as(partner_id, statement(job_id, partner_id, public_hex)).hex()}"


def verified_public_key(signed: str, job_id: str, partner_id: str, ledger_key_b64: str | None) -> str:
    """The X25519 public key (hex) of ``signed`` if ``partner_id``'s ledger key signed it for ``job_id``; else
    ``SecureSumError`` naming the partner."""
    public_hex, _, signature_hex = str(signed).partition(".")
    if ledger_key_b64 is None:
        raise SecureSumError(f"masking key of {partner_id!r} refused: the ledger holds no active partner key for it")
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(ledger_key_b64, validate=True))
        key.verify(bytes.fromhex(signature_hex), statement(job_id, partner_id, public_hex))
    except (InvalidSignature, ValueError) as exc:
        raise SecureSumError(f"masking key of {partner_id!r} refused: not signed by its ledger key for job "
                             f"{job_id!r} ({type(exc).__name__})") from None  # fmt: skip
    return public_hex


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
