"""Signed masking keys of secure jobs: the statement a partner signs over its X25519 masking key, and its check.

Here, not in ``client/``, because the ledger records them: ``job.started`` of a secure job lists every partner's
signed key (``masking_keys``), so an auditor can re-check after the job that each key the secure sum used was signed
by its partner's ledger key (``consent.audit``). Partners check the same signatures before they mask
(``client.peer_keys``).

A signed key is one string, ``<X25519 public key, 64 hex>.<Ed25519 signature, 128 hex>``, over
``STATEMENT | job_id | partner_id | X25519 public key`` (raw bytes, NUL-separated): a key signed for one job or one
partner does not check for any other.
"""

from __future__ import annotations

import re

from cryptography.exceptions import InvalidSignature

from consent.keys import public_from_b64

STATEMENT = b"cohort/secure-sum/masking-key/v1"
SIGNED_KEY = re.compile(r"[0-9a-f]{64}\.[0-9a-f]{128}")


class MaskingKeyError(ValueError):
    """A signed masking key that does not check against its partner's ledger key."""


def share_threshold(noise_partners: int) -> int:
    """How many shares rebuild a partner's self-mask seed (``client.secure_sum``): one fewer than the partners every
    applied round holds (``noise_partners``), so each survivor's seed can be rebuilt from the other survivors' shares,
    and fewer colluding partners learn nothing. Round manifests state it as ``colluders_to_unmask``, and the round
    audit checks it (``consent.audit``), so it lives with the ledger."""
    return max(1, int(noise_partners) - 1)


def statement(job_id: str, partner_id: str, public_hex: str) -> bytes:
    return b"\0".join((STATEMENT, job_id.encode(), partner_id.encode(), bytes.fromhex(public_hex)))


def sign(signer, job_id: str, partner_id: str, public_hex: str) -> str:
    """``public_hex`` signed by ``signer`` (anything with ``sign(message) -> bytes`` for ``partner_id``)."""
    return f"{public_hex}.{signer(statement(job_id, partner_id, public_hex)).hex()}"


def check(signed: str, job_id: str, partner_id: str, ledger_key_b64: str | None) -> str:
    """The X25519 public key (hex) of ``signed`` if ``partner_id``'s ledger key signed it for ``job_id``; else
    ``MaskingKeyError`` naming the partner."""
    if ledger_key_b64 is None:
        raise MaskingKeyError(f"masking key of {partner_id!r} refused: the ledger holds no active partner key for it")
    if not SIGNED_KEY.fullmatch(str(signed)):
        raise MaskingKeyError(f"masking key of {partner_id!r} refused: not signed by its ledger key for job {job_id!r} "
                              "(not '<64 hex>.<128 hex>')")  # fmt: skip
    public_hex, _, signature_hex = str(signed).partition(".")
    try:
        public_from_b64(ledger_key_b64).verify(bytes.fromhex(signature_hex), statement(job_id, partner_id, public_hex))
    except (InvalidSignature, ValueError) as exc:
        raise MaskingKeyError(f"masking key of {partner_id!r} refused: not signed by its ledger key for job "
                              f"{job_id!r} ({type(exc).__name__})") from None  # fmt: skip
    return public_hex
