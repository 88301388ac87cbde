"""Ledger entries: their types, the fields each type must carry, and Ed25519 signing of the canonical bytes.

An entry is a JSON object {v, type, signer, key_id, ts, nonce, body, sig}. The signature covers the canonical
bytes of every field but `sig`; the Merkle leaf is the canonical bytes of the whole entry, signature included, so
tampering with either the content or the signature changes the root.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
from dataclasses import dataclass

from consent.canonical import CanonicalError, canonical_bytes, parse_canonical
from consent.keys import Identity
from consent.vocabulary import CURRENT_VERSION, VOCABULARIES, VocabularyError, check_categories, check_purposes

FORMAT_VERSION = 1
MAX_ENTRY_BYTES = 64 * 1024
# A client clock may run a little ahead; anything further is a mistake or a back-dating attack.
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)

ENTRY_TYPES = (
    "consent.given",
    "consent.refused",
    "consent.withdrawn",
    "consent.expired",
    "notice.published",
    "subject.erasure_requested",
    "subject.erased",
    "job.started",
    "round.manifest",
    "model.published",
    "reward.issued",
    "key.registered",
    "key.rotated",
)

# Which role may submit which entry type. Partners speak for their own subjects only (checked by the store).
WRITERS = {
    "consent.given": {"partner"},
    "consent.refused": {"partner"},
    "consent.withdrawn": {"partner"},
    "consent.expired": {"partner", "operator"},
    "notice.published": {"partner"},
    "subject.erasure_requested": {"partner"},
    "subject.erased": {"partner", "operator"},
    "job.started": {"coordinator", "operator"},
    "round.manifest": {"coordinator", "operator"},
    "model.published": {"coordinator", "operator"},
    "reward.issued": {"coordinator", "operator"},
    "key.registered": {"operator"},
    "key.rotated": {"operator"},
}

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class EntryError(ValueError):
    """An entry that is malformed, unsigned, badly signed or names something the ledger does not know."""


@dataclass(frozen=True)
class SignedEntry:
    """A parsed, structurally valid entry and its exact canonical bytes (the Merkle leaf)."""

    data: bytes
    fields: dict

    @property
    def type(self) -> str:
        return self.fields["type"]

    @property
    def body(self) -> dict:
        return self.fields["body"]

    @property
    def key_id(self) -> str:
        return self.fields["key_id"]

    @property
    def signer(self) -> str:
        return self.fields["signer"]

    @property
    def subject_ref(self) -> str | None:
        return self.fields["body"].get("subject_ref")

    @property
    def partner_id(self) -> str | None:
        return self.fields["body"].get("partner_id")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_subject_ref() -> str:
    """A random 128-bit subject reference: carries nothing about the person."""
    return os.urandom(16).hex()


def make_entry(entry_type: str, body: dict, signer: Identity, ts: str | None = None) -> SignedEntry:
    """Builds, validates and signs an entry; raises EntryError naming the first problem."""
    unsigned = {
        "v": FORMAT_VERSION,
        "type": entry_type,
        "signer": signer.name,
        "key_id": signer.key_id,
        "ts": ts or now_iso(),
        "nonce": os.urandom(12).hex(),
        "body": body,
    }
    check_body(entry_type, body)
    sig = signer.sign(canonical_bytes(unsigned))
    fields = dict(unsigned, sig=base64.b64encode(sig).decode())
    data = canonical_bytes(fields)
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryError(f"entry is {len(data)} bytes; the limit is {MAX_ENTRY_BYTES}")
    return SignedEntry(data=data, fields=fields)


_ENTRY_FIELDS = frozenset({"v", "type", "signer", "key_id", "ts", "nonce", "body", "sig"})


def parse_entry(data: bytes, now: dt.datetime | None = None) -> SignedEntry:
    """Checks everything that can be checked without the key registry: size, canonical form, fields, clock."""
    if len(data) > MAX_ENTRY_BYTES:
        raise EntryError(f"entry is {len(data)} bytes; the limit is {MAX_ENTRY_BYTES}")
    try:
        fields = parse_canonical(data)
    except CanonicalError as exc:
        raise EntryError(str(exc)) from None
    if fields.keys() != _ENTRY_FIELDS:
        expected = set(_ENTRY_FIELDS)
        missing, extra = sorted(expected - set(fields)), sorted(set(fields) - expected)
        raise EntryError(f"entry fields wrong: missing {missing}, unexpected {extra}")
    if fields["v"] != FORMAT_VERSION:
        raise EntryError(f"unknown entry format version {fields['v']!r}")
    if fields["type"] not in ENTRY_TYPES:
        raise EntryError(f"unknown entry type {fields['type']!r}")
    for name in ("signer", "key_id", "ts", "nonce", "sig"):
        if not isinstance(fields[name], str) or not fields[name]:
            raise EntryError(f"entry field {name!r} must be a non-empty string")
    if not isinstance(fields["body"], dict):
        raise EntryError("entry body must be an object")
    ts = parse_time(fields["ts"], "ts")
    if ts > (now or dt.datetime.now(dt.timezone.utc)) + MAX_CLOCK_SKEW:
        raise EntryError(f"entry timestamp {fields['ts']} is in the future (more than {MAX_CLOCK_SKEW} ahead)")
    check_body(fields["type"], fields["body"])
    return SignedEntry(data=data, fields=fields)


def signed_message(entry: SignedEntry) -> bytes:
    return canonical_bytes({k: v for k, v in entry.fields.items() if k != "sig"})


def signature_of(entry: SignedEntry) -> bytes:
    try:
        return base64.b64decode(entry.fields["sig"], validate=True)
    except Exception:
        raise EntryError("entry signature is not base64") from None


def parse_time(value, name: str) -> dt.datetime:
    if not isinstance(value, str):
        raise EntryError(f"{name} must be an ISO-8601 UTC time string")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise EntryError(f"{name} {value!r} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise EntryError(f"{name} {value!r} has no time zone; use UTC ('Z')")
    return parsed


# ---- per-type body rules -------------------------------------------------------------------------------------


def _require(body: dict, names: tuple[str, ...], entry_type: str) -> None:
    missing = [n for n in names if n not in body]
    if missing:
        raise EntryError(f"{entry_type} body lacks required field(s) {missing}")


def _hex(body: dict, name: str, pattern: re.Pattern, what: str) -> None:
    value = body.get(name)
    if not isinstance(value, str) or not pattern.match(value):
        raise EntryError(f"{name} must be {what}, got {value!r}")


def _day(body: dict, name: str, optional: bool = False) -> None:
    value = body.get(name)
    if value is None and optional:
        return
    if not isinstance(value, str) or not _DAY.match(value):
        raise EntryError(f"{name} must be a day 'YYYY-MM-DD' (day precision keeps the log free of exact times)")
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise EntryError(f"{name} {value!r} is not a calendar day") from None


def _vocab(body: dict) -> None:
    version = body.get("vocabulary", CURRENT_VERSION)
    try:
        body_purposes = body.get("purposes")
        if body_purposes is not None:
            check_purposes(body_purposes, version)
        body_categories = body.get("data_categories")
        if body_categories is not None:
            check_categories(body_categories, version)
    except VocabularyError as exc:
        raise EntryError(str(exc)) from None


def _notice(body: dict) -> None:
    notice = body.get("notice")
    if not isinstance(notice, dict) or set(notice) != {"id", "version", "sha256"}:
        raise EntryError("notice must be an object {id, version, sha256}")
    _hex(notice, "sha256", _HEX64, "a hex SHA-256 of the notice text")


CONSENT_FIELDS = (
    "consent_id", "partner_id", "subject_ref", "purposes", "data_categories", "legal_basis", "notice",
    "collection_method", "jurisdiction", "indicated_at", "valid_until", "recipients", "cross_border",
    "evidence_commitment", "supersedes",
)  # fmt: skip


def check_body(entry_type: str, body: dict) -> None:
    if entry_type not in ENTRY_TYPES:
        raise EntryError(f"unknown entry type {entry_type!r}")
    if not isinstance(body, dict):
        raise EntryError("entry body must be an object")
    if entry_type == "consent.given" and _consent_given_surely_valid(body):
        return
    rule = _BODY_RULES.get(entry_type)
    if rule:
        rule(entry_type, body)


def _consent_given(t: str, body: dict) -> None:
    _require(body, CONSENT_FIELDS, t)
    _hex(body, "consent_id", _HEX32, "a 128-bit hex id")
    _hex(body, "subject_ref", _HEX32, "a random 128-bit hex subject reference")
    if body["supersedes"] is not None:
        _hex(body, "supersedes", _HEX32, "null or the consent_id it replaces")
    _vocab(body)
    _notice(body)
    _day(body, "indicated_at")
    _day(body, "valid_until", optional=True)
    _hex(body, "evidence_commitment", _HEX64, "a hex SHA-256 commitment to the encrypted evidence")
    if not isinstance(body["cross_border"], bool):
        raise EntryError("cross_border must be true or false")
    if not isinstance(body["recipients"], list):
        raise EntryError("recipients must be a list")
    _no_extra(t, body, CONSENT_FIELDS + ("vocabulary",))


_GIVEN_REQUIRED = frozenset(CONSENT_FIELDS)
_GIVEN_ALLOWED = frozenset(CONSENT_FIELDS + ("vocabulary",))
_NOTICE_FIELDS = frozenset({"id", "version", "sha256"})


def _consent_given_surely_valid(body: dict) -> bool:
    """The common case of `_consent_given` in one pass: True only for bodies that rule accepts. Anything else
    (including every body it refuses) returns False and goes through `_consent_given`, which names the problem."""
    keys = body.keys()
    if not (keys >= _GIVEN_REQUIRED and keys <= _GIVEN_ALLOWED):
        return False
    hex32 = _HEX32.match
    for name in ("consent_id", "subject_ref"):
        value = body[name]
        if type(value) is not str or not hex32(value):
            return False
    sup = body["supersedes"]
    if sup is not None and (type(sup) is not str or not hex32(sup)):
        return False
    version = body.get("vocabulary", CURRENT_VERSION)
    if type(version) is not int:
        return False
    vocab = VOCABULARIES.get(version)
    if vocab is None:
        return False
    for name, known in (("purposes", vocab.purposes), ("data_categories", vocab.data_categories)):
        items = body[name]
        if type(items) is not list or not items:
            return False
        for item in items:
            if type(item) is not str or item not in known:
                return False
    notice = body["notice"]
    if type(notice) is not dict or notice.keys() != _NOTICE_FIELDS:
        return False
    sha = notice["sha256"]
    if type(sha) is not str or not _HEX64.match(sha):
        return False
    evidence = body["evidence_commitment"]
    if type(evidence) is not str or not _HEX64.match(evidence):
        return False
    for name in ("indicated_at", "valid_until"):
        day = body[name]
        if day is None and name == "valid_until":
            continue
        if type(day) is not str or not _DAY.match(day):
            return False
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            return False
    return type(body["cross_border"]) is bool and isinstance(body["recipients"], list)


def _consent_refused(t: str, body: dict) -> None:
    names = ("consent_id", "partner_id", "subject_ref", "purposes", "data_categories", "notice", "indicated_at")
    _require(body, names, t)
    _hex(body, "consent_id", _HEX32, "a 128-bit hex id")
    _hex(body, "subject_ref", _HEX32, "a random 128-bit hex subject reference")
    _vocab(body)
    _notice(body)
    _day(body, "indicated_at")
    _no_extra(t, body, names + ("vocabulary", "collection_method", "jurisdiction"))


def _consent_ended(t: str, body: dict) -> None:
    names = ("consent_id", "partner_id", "subject_ref", "indicated_at")
    _require(body, names, t)
    _hex(body, "consent_id", _HEX32, "the consent_id being ended")
    _hex(body, "subject_ref", _HEX32, "a random 128-bit hex subject reference")
    _day(body, "indicated_at")
    _no_extra(t, body, names + ("channel",))


def _notice_published(t: str, body: dict) -> None:
    names = ("partner_id", "notice_id", "version", "sha256", "purposes")
    _require(body, names, t)
    _hex(body, "sha256", _HEX64, "a hex SHA-256 of the notice text")
    _vocab(body)


def _subject(t: str, body: dict) -> None:
    names = ("partner_id", "subject_ref", "indicated_at")
    _require(body, names, t)
    _hex(body, "subject_ref", _HEX32, "a random 128-bit hex subject reference")
    _day(body, "indicated_at")
    _no_extra(t, body, names)


def _needs(*names: str):
    def rule(t: str, body: dict) -> None:
        _require(body, names, t)
        _vocab(body)

    return rule


def _no_extra(t: str, body: dict, allowed: tuple[str, ...]) -> None:
    # Unknown fields are refused so that personal data cannot ride along in a free-form field.
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise EntryError(f"{t} body has unexpected field(s) {extra}")


_BODY_RULES = {
    "consent.given": _consent_given,
    "consent.refused": _consent_refused,
    "consent.withdrawn": _consent_ended,
    "consent.expired": _consent_ended,
    "notice.published": _notice_published,
    "subject.erasure_requested": _subject,
    "subject.erased": _subject,
    "job.started": _needs("job_id", "purpose", "data_categories", "checkpoint", "rounds", "target_epsilon", "delta"),
    "round.manifest": _needs("job_id", "round", "tree_size", "purpose", "categories", "partners", "model_out_hash"),
    "model.published": _needs("job_id", "model_hash"),
    "reward.issued": _needs("job_id", "partner_id", "total_points", "subjects_root", "subject_count"),
    "key.registered": _needs("identity", "role", "key_id", "public_key"),
    "key.rotated": _needs("identity", "role", "key_id", "public_key", "replaces"),
}
