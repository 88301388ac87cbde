"""Which partner a subject belongs to, and input checks the service makes before touching the ledger.

A subject is known to the vault (subject_map) from the moment its partner resolves it, and to the log (subjects)
from its first entry; erasure removes the vault row but never the log row. Either says who owns the subject.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

from sqlalchemy import Engine, select

from consent.store import tables as t

HEX32 = re.compile(r"[0-9a-f]{32}")  # all used with fullmatch: `$` also matches before a "\n"
HEX64 = re.compile(r"[0-9a-f]{64}")
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Refused(Exception):
    """A call the service turns down before (or instead of) the ledger; `code` is a gRPC status name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SubjectState:
    partner_id: str
    in_log: bool
    erasure_requested: bool
    erased: bool


def subject_state(engine: Engine, subject_ref: str) -> SubjectState | None:
    with engine.connect() as conn:
        row = conn.execute(select(t.subjects).where(t.subjects.c.subject_ref == subject_ref)).first()
        if row is not None:
            return SubjectState(row.partner_id, True, row.erasure_requested_idx is not None, row.erased_idx is not None)
        q = select(t.subject_map.c.partner_id).where(t.subject_map.c.subject_ref == subject_ref)
        partner = conn.execute(q).scalar()
    return None if partner is None else SubjectState(partner, False, False, False)


def own_subject(engine: Engine, caller_partner: str, subject_ref: str) -> SubjectState | None:
    """The subject's state; PERMISSION_DENIED if it is another partner's."""
    state = subject_state(engine, subject_ref)
    if state is not None and state.partner_id != caller_partner:
        raise Refused("PERMISSION_DENIED", f"subject {subject_ref} belongs to another partner")
    return state


def subject_ref(value: str, name: str = "subject_ref") -> str:
    if not HEX32.fullmatch(value):
        raise Refused("INVALID_ARGUMENT", f"{name} must be 32 lowercase hex characters, got {value[:40]!r}")
    return value


def user_hmac(value: str) -> str:
    if not HEX64.fullmatch(value):
        # Refusing anything but a hex HMAC keeps a raw user id (personal data) from ever reaching the ledger.
        raise Refused("INVALID_ARGUMENT", "user_hmacs must be hex HMAC-SHA256 values (64 hex characters), "
                                          "never raw user ids")  # fmt: skip
    return value


def name(value: str, what: str) -> str:
    if not NAME.fullmatch(value):
        raise Refused("INVALID_ARGUMENT", f"{what} must be 1-64 characters of [A-Za-z0-9._-], got {value[:70]!r}")
    return value


def day(value: str) -> str:
    if not DAY.fullmatch(value):
        raise Refused("INVALID_ARGUMENT", f"day must be 'YYYY-MM-DD', got {value[:20]!r}")
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise Refused("INVALID_ARGUMENT", f"day {value!r} is not a calendar day") from None
    return value


def epsilon(value: float, what: str = "epsilon") -> float:
    if not math.isfinite(value) or value < 0:
        raise Refused("INVALID_ARGUMENT", f"{what} must be a finite non-negative number, got {value!r}")
    return value


def utc_today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()
