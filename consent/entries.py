"""Ledger entries: their types, the fields each type must carry, and Ed25519 signing of the canonical bytes.

An entry is a JSON object {v, type, signer, key_id, ts, nonce, body, sig}. The signature covers the canonical
bytes of every field but `sig`; the Merkle leaf is the canonical bytes of the whole entry, signature included, so
tampering with either the content or the signature changes the root.

An entry without a `sig` field (or with an empty one) is malformed, not merely unauthenticated: `parse_entry`
refuses it (INVALID_ARGUMENT, "entry fields wrong: missing ['sig']") before any key is consulted, like any other
missing field. UNAUTHENTICATED is kept for entries that are well formed but whose key is unknown or rotated out,
or whose signature does not verify (consent.rules).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
from dataclasses import dataclass

from consent.canonical import CanonicalError, canonical_bytes, parse_canonical
from consent.keys import ROLES, Identity
from consent.masking_keys import SIGNED_KEY
from consent.vocabulary import UNMARKED_VERSION, VOCABULARIES, VocabularyError, check_categories, check_purposes

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
    "job.stopped",
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
    "job.stopped": {"coordinator", "operator"},
    "reward.issued": {"coordinator", "operator"},
    "key.registered": {"operator"},
    # The operator, or the holder of the key being replaced (its current key): consent.rules._key_entry.
    "key.rotated": {"operator", "partner", "coordinator", "auditor"},
}

# Used with fullmatch: `$` would also match before a trailing newline.
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # party ids, notice ids, recipients, strategies
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")  # a notice version
_TOKEN = re.compile(r"[a-z][a-z0-9_]{0,31}")  # legal_basis, collection_method, channel
_JURISDICTION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,3})?")  # ISO 3166-1 alpha-2, optionally with a subdivision
_PUBLIC_KEY = re.compile(r"[A-Za-z0-9+/]{43}=")  # base64 of a raw 32-byte Ed25519 key
MAX_LIST = 256  # items in any list of a body (partners, recipients, refusals...)
MAX_REASON = 500  # characters of a refusal reason in a round manifest


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
    try:
        check_body(fields["type"], fields["body"])
    except EntryError:
        raise
    except (TypeError, KeyError, AttributeError, ValueError) as exc:  # a rule met a shape it did not expect
        raise EntryError(f"{fields['type']} body is malformed: {exc!r}") from None
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
    except (ValueError, OverflowError):
        raise EntryError(f"{name} {value!r} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise EntryError(f"{name} {value!r} has no time zone; use UTC ('Z')")
    return parsed


# ---- per-type body rules -------------------------------------------------------------------------------------
#
# Every body type has a closed set of fields: unknown fields are refused, so that personal data cannot ride along
# in a free-form field, and every field is type-checked. Purposes and data categories are checked against the
# vocabulary version the entry names (`vocabulary`; an entry without it was written under version 1).
# The fields of job.started, round.manifest and model.published are what server/ledger_hooks.py and
# server/manifests.py write; reward.issued carries what the product brief says (total and subjects' Merkle root).


def _require(body: dict, names: tuple[str, ...], entry_type: str) -> None:
    missing = [n for n in names if n not in body]
    if missing:
        raise EntryError(f"{entry_type} body lacks required field(s) {missing}")


def _fields(t: str, body: dict, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    _require(body, required, t)
    _no_extra(t, body, required + optional)


def _match(value, pattern: re.Pattern) -> bool:
    return type(value) is str and pattern.fullmatch(value) is not None


def _hex(body: dict, name: str, pattern: re.Pattern, what: str) -> None:
    _str(body, name, pattern, what)


def _str(body: dict, name: str, pattern: re.Pattern, what: str, optional: bool = False) -> None:
    if optional and body.get(name) is None:
        return
    value = body.get(name)
    if not _match(value, pattern):
        raise EntryError(f"{name} must be {what}, got {_short(value)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _day(body: dict, name: str, optional: bool = False) -> None:
    value = body.get(name)
    if value is None and optional:
        return
    if not _match(value, _DAY):
        raise EntryError(f"{name} must be a day 'YYYY-MM-DD' (day precision keeps the log free of exact times)")
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise EntryError(f"{name} {value!r} is not a calendar day") from None


def _int(body: dict, name: str, minimum: int = 0, optional: bool = False) -> None:
    value = body.get(name)
    if value is None and optional:
        return
    if type(value) is not int or value < minimum:
        raise EntryError(f"{name} must be an integer >= {minimum}, got {_short(value)}")


def _number(body: dict, name: str, minimum: float = 0.0, maximum: float | None = None, optional: bool = False,
            strict_minimum: bool = False) -> None:  # fmt: skip
    value = body.get(name)
    if value is None and optional:
        return
    ok = type(value) in (int, float) and (value > minimum if strict_minimum else value >= minimum)
    if ok and maximum is not None:
        ok = value < maximum
    if not ok:
        bounds = f"{'>' if strict_minimum else '>='} {minimum:g}"
        if maximum is not None:
            bounds += f" and < {maximum:g}"
        raise EntryError(f"{name} must be a number {bounds}, got {_short(value)}")


def _list(body: dict, name: str, check, optional: bool = False) -> list:
    value = body.get(name)
    if value is None and optional:
        return []
    if type(value) is not list or len(value) > MAX_LIST:
        raise EntryError(f"{name} must be a list of at most {MAX_LIST} items, got {_short(value)}")
    for item in value:
        check(item)
    return value


def _names(body: dict, name: str, optional: bool = False) -> None:
    def check(item):
        if not _match(item, _NAME):
            raise EntryError(f"{name} must hold names of 1-64 characters [A-Za-z0-9._-], got {_short(item)}")

    _list(body, name, check, optional)


def _version_of(body: dict) -> int:
    version = body.get("vocabulary", UNMARKED_VERSION)
    if type(version) is not int or version not in VOCABULARIES:
        raise EntryError(f"unknown vocabulary version {version!r}; known: {sorted(VOCABULARIES)}")
    return version


def _vocab(body: dict, purposes: str = "purposes", categories: str = "data_categories", single: bool = False) -> None:
    """The body's purposes (or single `purpose`) and categories exist in the vocabulary version it names."""
    version = _version_of(body)
    try:
        if purposes in body:
            check_purposes([body[purposes]] if single else body[purposes], version)
        if categories in body:
            check_categories(body[categories], version)
    except VocabularyError as exc:
        raise EntryError(str(exc)) from None


def _notice(body: dict) -> None:
    notice = body.get("notice")
    if not isinstance(notice, dict) or set(notice) != {"id", "version", "sha256"}:
        raise EntryError("notice must be an object {id, version, sha256}")
    _str(notice, "id", _NAME, "a notice id of 1-64 characters [A-Za-z0-9._-]")
    _str(notice, "version", _VERSION, "a notice version of 1-32 characters [A-Za-z0-9._-]")
    _hex(notice, "sha256", _HEX64, "a hex SHA-256 of the notice text")


def _partner(body: dict, name: str = "partner_id") -> None:
    _str(body, name, _NAME, "a party id of 1-64 characters [A-Za-z0-9._-]")


def _no_extra(t: str, body: dict, allowed: tuple[str, ...]) -> None:
    # Unknown fields are refused so that personal data cannot ride along in a free-form field.
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise EntryError(f"{t} body has unexpected field(s) {extra}")


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
    _BODY_RULES[entry_type](entry_type, body)


def _consent_common(body: dict) -> None:
    _hex(body, "consent_id", _HEX32, "a 128-bit hex id")
    _partner(body)
    _hex(body, "subject_ref", _HEX32, "a random 128-bit hex subject reference")
    _vocab(body)
    _notice(body)
    _day(body, "indicated_at")
    _str(body, "collection_method", _TOKEN, "a channel token like 'app' or 'web' (lowercase letters, digits and '_')",
         optional=True)  # fmt: skip
    _str(body, "jurisdiction", _JURISDICTION, "an ISO 3166-1 alpha-2 code like 'CN' (optionally 'CN-31')",
         optional=True)  # fmt: skip


def _consent_given(t: str, body: dict) -> None:
    _fields(t, body, CONSENT_FIELDS, ("vocabulary",))
    _consent_common(body)
    if body["supersedes"] is not None:
        _hex(body, "supersedes", _HEX32, "null or the consent_id it replaces")
    _str(body, "legal_basis", _TOKEN, "a legal-basis token like 'consent' (lowercase letters, digits and '_')")
    for name in ("collection_method", "jurisdiction"):
        if body[name] is None:
            raise EntryError(f"{name} must be given")
    _day(body, "valid_until", optional=True)
    _hex(body, "evidence_commitment", _HEX64, "a hex SHA-256 commitment to the encrypted evidence")
    if not isinstance(body["cross_border"], bool):
        raise EntryError("cross_border must be true or false")
    _names(body, "recipients")


_GIVEN_REQUIRED = frozenset(CONSENT_FIELDS)
_GIVEN_ALLOWED = frozenset(CONSENT_FIELDS + ("vocabulary",))
_NOTICE_FIELDS = frozenset({"id", "version", "sha256"})


def _consent_given_surely_valid(body: dict) -> bool:
    """The common case of `_consent_given` in one pass: True only for bodies that rule accepts. Anything else
    (including every body it refuses) returns False and goes through `_consent_given`, which names the problem."""
    keys = body.keys()
    if not (keys >= _GIVEN_REQUIRED and keys <= _GIVEN_ALLOWED):
        return False
    hex32 = _HEX32.fullmatch
    for name in ("consent_id", "subject_ref"):
        value = body[name]
        if type(value) is not str or not hex32(value):
            return False
    sup = body["supersedes"]
    if sup is not None and (type(sup) is not str or not hex32(sup)):
        return False
    for name, pattern in (("partner_id", _NAME), ("legal_basis", _TOKEN), ("collection_method", _TOKEN),
                          ("jurisdiction", _JURISDICTION)):  # fmt: skip
        value = body[name]
        if type(value) is not str or not pattern.fullmatch(value):
            return False
    version = body.get("vocabulary", UNMARKED_VERSION)
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
    for name, pattern in (("id", _NAME), ("version", _VERSION), ("sha256", _HEX64)):
        value = notice[name]
        if type(value) is not str or not pattern.fullmatch(value):
            return False
    evidence = body["evidence_commitment"]
    if type(evidence) is not str or not _HEX64.fullmatch(evidence):
        return False
    for name in ("indicated_at", "valid_until"):
        day = body[name]
        if day is None and name == "valid_until":
            continue
        if type(day) is not str or not _DAY.fullmatch(day):
            return False
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            return False
    recipients = body["recipients"]
    if type(recipients) is not list or len(recipients) > MAX_LIST:
        return False
    for item in recipients:
        if type(item) is not str or not _NAME.fullmatch(item):
            return False
    return type(body["cross_border"]) is bool


_REFUSED_REQUIRED = ("consent_id", "partner_id", "subject_ref", "purposes", "data_categories", "notice", "indicated_at")


def _consent_refused(t: str, body: dict) -> None:
    _fields(t, body, _REFUSED_REQUIRED, ("vocabulary", "collection_method", "jurisdiction"))
    _consent_common(body)


def _consent_ended(t: str, body: dict) -> None:
    _fields(t, body, ("consent_id", "partner_id", "subject_ref", "indicated_at"), ("channel",))
    _hex(body, "consent_id", _HEX32, "the consent_id being ended")
    _partner(body)
    _hex(body, "subject_ref", _HEX32, "a random 128-bit hex subject reference")
    _day(body, "indicated_at")
    _str(body, "channel", _TOKEN, "a channel token like 'app' (lowercase letters, digits and '_')", optional=True)


def _notice_published(t: str, body: dict) -> None:
    _fields(t, body, ("partner_id", "notice_id", "version", "sha256", "purposes"), ("vocabulary",))
    _partner(body)
    _str(body, "notice_id", _NAME, "a notice id of 1-64 characters [A-Za-z0-9._-]")
    _str(body, "version", _VERSION, "a notice version of 1-32 characters [A-Za-z0-9._-]")
    _hex(body, "sha256", _HEX64, "a hex SHA-256 of the notice text")
    _vocab(body)


def _subject(t: str, body: dict) -> None:
    _fields(t, body, ("partner_id", "subject_ref", "indicated_at"))
    _partner(body)
    _hex(body, "subject_ref", _HEX32, "a random 128-bit hex subject reference")
    _day(body, "indicated_at")


def _job_id(body: dict) -> None:
    _str(body, "job_id", _JOB_ID, "a job id of 1-128 characters [A-Za-z0-9._:-]")


def _dp_target(body: dict) -> None:
    _number(body, "target_epsilon", strict_minimum=True)
    _number(body, "delta", maximum=1.0)


def _checkpoint_ref(body: dict) -> None:
    cp = body.get("checkpoint")
    if not isinstance(cp, dict) or set(cp) != {"tree_size", "root"}:
        raise EntryError("checkpoint must be an object {tree_size, root}")
    _int(cp, "tree_size")
    if cp["root"] != "":  # empty when the job was fixed by tree size rather than by a signed checkpoint
        _hex(cp, "root", _HEX64, "the hex root of the checkpoint (or empty)")


def _job_started(t: str, body: dict) -> None:
    required = ("job_id", "purpose", "data_categories", "checkpoint", "rounds", "target_epsilon", "delta")
    _fields(t, body, required, ("strategy", "aggregation", "partners", "as_of", "lifetime_epsilon", "vocabulary",
                                "masking_keys"))  # fmt: skip
    _job_id(body)
    _vocab(body, "purpose", "data_categories", single=True)
    _checkpoint_ref(body)
    _int(body, "rounds", minimum=1)
    _dp_target(body)
    _str(body, "strategy", _NAME, "a strategy name", optional=True)
    if body.get("aggregation", "plain") not in ("plain", "secure"):
        raise EntryError(f"aggregation must be 'plain' or 'secure', got {_short(body['aggregation'])}")
    _names(body, "partners", optional=True)
    _day(body, "as_of", optional=True)
    _number(body, "lifetime_epsilon", strict_minimum=True, optional=True)
    if "masking_keys" in body:
        _masking_keys(body)


def _masking_keys(body: dict) -> None:
    """A secure job's signed masking key per partner (``consent.masking_keys``); the signatures are the audit's."""
    keys = body["masking_keys"]
    if body.get("aggregation") != "secure":
        raise EntryError("masking_keys belong to a secure job only (aggregation 'secure')")
    if not isinstance(keys, dict) or sorted(keys) != sorted(body.get("partners", [])):
        raise EntryError("masking_keys must name exactly the job's partners")
    for partner, signed in keys.items():
        if not isinstance(signed, str) or not SIGNED_KEY.fullmatch(signed):
            raise EntryError(f"masking key of {_short(partner)} must be '<64 hex>.<128 hex>' (a signed X25519 key)")


_PART_FIELDS = (
    "partner_id", "job_id", "server_round", "tree_size", "purpose", "categories", "eligible_root", "eligible_count",
    "num_examples", "noise_multiplier", "max_grad_norm", "sample_rate", "steps", "delta", "accountant", "epsilon",
    "epsilon_round", "data_hash", "code_hash",
)  # fmt: skip
_PART_REQUIRED = ("partner_id", "eligible_root", "eligible_count")


def _manifest_part(part, version: int) -> None:
    t = "round.manifest partner part"
    if not isinstance(part, dict):
        raise EntryError(f"{t} must be an object, got {_short(part)}")
    _fields(t, part, _PART_REQUIRED, tuple(f for f in _PART_FIELDS if f not in _PART_REQUIRED))
    _partner(part)
    _hex(part, "eligible_root", _HEX64, "the hex Merkle root of the eligible set")
    _int(part, "eligible_count")
    if "job_id" in part:
        _job_id(part)
    for name in ("server_round", "tree_size", "num_examples", "steps"):
        _int(part, name, optional=True)
    for name in ("noise_multiplier", "max_grad_norm", "sample_rate", "delta", "epsilon", "epsilon_round"):
        _number(part, name, optional=True)
    _str(part, "accountant", _NAME, "an accountant name", optional=True)
    for name in ("data_hash", "code_hash"):
        if name in part:
            _hex(part, name, _HEX64, "a hex SHA-256")
    _vocab(dict(part, vocabulary=version), "purpose", "categories", single=True)


def _refusal(item) -> None:
    if not isinstance(item, dict) or set(item) != {"node_id", "partner_id", "reason"}:
        raise EntryError(f"refused/failed items must be objects {{node_id, partner_id, reason}}, got {_short(item)}")
    _int(item, "node_id")
    if item["partner_id"] is not None:  # None: a node that never passed preflight, so it has no partner name
        _partner(item)
    if type(item["reason"]) is not str or len(item["reason"]) > MAX_REASON:
        raise EntryError(f"a refusal reason must be a string of at most {MAX_REASON} characters")


def _round_manifest(t: str, body: dict) -> None:
    required = ("job_id", "round", "tree_size", "purpose", "categories", "partners", "model_out_hash")
    optional = ("strategy", "dp", "refused", "failed", "missing_nodes", "model_in_hash", "server_code_hash",
                "closed_at", "as_of", "lifetime_epsilon", "checkpoint_root", "vocabulary", "aggregation")  # fmt: skip
    _fields(t, body, required, optional)
    _job_id(body)
    _int(body, "round", minimum=1)
    _int(body, "tree_size")
    _vocab(body, "purpose", "categories", single=True)
    version = _version_of(body)
    _list(body, "partners", lambda part: _manifest_part(part, version))
    _str(body, "strategy", _NAME, "a strategy name", optional=True)
    if "dp" in body:
        dp = body["dp"]
        if not isinstance(dp, dict):
            raise EntryError("dp must be an object {target_epsilon, delta, epsilon_max}")
        _fields("round.manifest dp", dp, ("target_epsilon", "delta"), ("epsilon_max",))
        _dp_target(dp)
        _number(dp, "epsilon_max", optional=True)
    _list(body, "refused", _refusal, optional=True)
    _list(body, "failed", _refusal, optional=True)
    if "aggregation" in body:
        _aggregation(body["aggregation"])

    def node(item):
        if type(item) is not int or item < 0:
            raise EntryError(f"missing_nodes must hold node ids (integers >= 0), got {_short(item)}")

    _list(body, "missing_nodes", node, optional=True)
    for name in ("model_in_hash", "model_out_hash", "server_code_hash"):
        if name in body:
            _hex(body, name, _HEX64, "a hex SHA-256")
    if "closed_at" in body:
        parse_time(body["closed_at"], "closed_at")
    _day(body, "as_of", optional=True)
    _number(body, "lifetime_epsilon", strict_minimum=True, optional=True)
    if body.get("checkpoint_root", ""):
        _hex(body, "checkpoint_root", _HEX64, "the hex root of the job's checkpoint (or empty)")


def _aggregation(agg) -> None:
    """A secure round's trust statement (server/secure_aggregation.py): noise in total and per partner, the union's
    rate and size, ε if the server sees one partner's vector alone, how many partners must collude with it for that
    (absent from manifests of jobs run before self masks), whose masks were removed after a dropout, and, for a
    round whose sum stayed masked, why (``voided``: the model kept its weights)."""
    t = "round.manifest aggregation"
    if not isinstance(agg, dict):
        raise EntryError(f"{t} must be an object, got {_short(agg)}")
    numbers = ("noise_multiplier", "partner_noise_multiplier", "sample_rate", "epsilon_if_colluding")
    _fields(t, agg, ("mode",) + numbers + ("noise_partners", "union_rows", "recovered"),
            ("colluders_to_unmask", "voided"))  # fmt: skip
    if agg["mode"] != "secure":
        raise EntryError(f"{t} mode must be 'secure', got {_short(agg['mode'])}")
    for name in numbers:
        _number(agg, name)
    for name in ("noise_partners", "union_rows"):
        _int(agg, name, minimum=1)
    _int(agg, "colluders_to_unmask", minimum=1, optional=True)
    _names(agg, "recovered")
    if "voided" in agg and (type(agg["voided"]) is not str or not 0 < len(agg["voided"]) <= MAX_REASON):
        raise EntryError(f"{t} voided must be the reason the sum stayed masked, 1 to {MAX_REASON} characters")


def _model_published(t: str, body: dict) -> None:
    _fields(t, body, ("job_id", "model_hash"), ("rounds", "epsilon_by_partner"))
    _job_id(body)
    _hex(body, "model_hash", _HEX64, "a hex SHA-256 of the model")
    _int(body, "rounds", optional=True)
    _epsilon_by_partner(body)


def _epsilon_by_partner(body: dict) -> None:
    spent = body.get("epsilon_by_partner", {})
    if not isinstance(spent, dict) or len(spent) > MAX_LIST:
        raise EntryError("epsilon_by_partner must be an object {partner_id: epsilon}")
    for partner, eps in spent.items():
        _partner({"partner_id": partner})
        _number({"epsilon": eps}, "epsilon")


def _job_stopped(t: str, body: dict) -> None:
    """A job that ended before its last round: how many rounds closed, the class of the error that stopped it (never
    its message: free text), and the ε charged to each partner's subjects by the rounds that closed."""
    _fields(t, body, ("job_id", "rounds_completed", "cause"), ("epsilon_by_partner",))
    _job_id(body)
    _int(body, "rounds_completed")
    _str(body, "cause", _NAME, "the name of the error class that stopped the job")
    _epsilon_by_partner(body)


def _reward_issued(t: str, body: dict) -> None:
    _fields(t, body, ("job_id", "partner_id", "total_points", "subjects_root", "subject_count"))
    _job_id(body)
    _partner(body)
    _number(body, "total_points")
    _hex(body, "subjects_root", _HEX64, "the hex Merkle root of the per-subject rewards")
    _int(body, "subject_count")


def _key_entry(t: str, body: dict) -> None:
    names = ("identity", "role", "key_id", "public_key") + (("replaces",) if t == "key.rotated" else ())
    _fields(t, body, names)
    _str(body, "identity", _NAME, "a party id of 1-64 characters [A-Za-z0-9._-]")
    if body["role"] not in ROLES:
        raise EntryError(f"unknown role {_short(body['role'])}; roles are {ROLES}")
    _hex(body, "key_id", _HEX32, "a key id (32 hex characters)")
    _str(body, "public_key", _PUBLIC_KEY, "a base64 raw Ed25519 public key")
    if t == "key.rotated":
        _hex(body, "replaces", _HEX32, "the key id being replaced")


_BODY_RULES = {
    "consent.given": _consent_given,
    "consent.refused": _consent_refused,
    "consent.withdrawn": _consent_ended,
    "consent.expired": _consent_ended,
    "notice.published": _notice_published,
    "subject.erasure_requested": _subject,
    "subject.erased": _subject,
    "job.started": _job_started,
    "round.manifest": _round_manifest,
    "model.published": _model_published,
    "job.stopped": _job_stopped,
    "reward.issued": _reward_issued,
    "key.registered": _key_entry,
    "key.rotated": _key_entry,
}
