"""Who may append what: signature, role, partner scoping and consent semantics, checked before anything is stored.

Pure of storage: the store hands in what it knows (keys, subjects, consents, notices) as a `LogState`; entries of
the same batch update the state as they pass, so a batch is judged exactly as if its entries arrived one by one.
`cohort ledger verify` (consent.verify) replays the whole log through these same functions, so what the store
accepts and what the verifier accepts are one rule.

Keys and identities. An identity (a party name: "operator", "coordinator", "partner-a", ...) holds exactly one
active key at a time, under one role for its whole life:

* The first entry of a log, and only the first, is the operator's `key.registered` for itself, signed by the key
  it registers (the bootstrap). Every other entry must be signed by a registered, active key of its signer.
* `key.registered` is signed by an operator key and introduces a NEW identity: refused (ALREADY_EXISTS) if the key
  id is registered already or if the identity already holds a key, active or rotated out. So only the operator
  can introduce identities, partners included; nobody can give an existing identity a second key this way.
* `key.rotated` replaces the identity's current key (`replaces`, which must be active) with a new one, same
  identity and same role. It must be signed by an operator key or by the key being replaced (the identity's
  current key); anyone else is refused (PERMISSION_DENIED), as is a change of role. The replaced key is revoked
  from that entry on: later entries signed with it are UNAUTHENTICATED.

The gRPC service (consent.service.servicer.RegisterKey) adds who may ASK the operator to register a key: the
operator itself for any role; a coordinator for new auditor identities only; nobody else.

Notices. A consent (`consent.given` / `consent.refused`) cites the notice the subject was shown by (id, version,
sha256); that very notice must have been published before by the same partner (`notice.published`), else the
consent is refused (NOT_FOUND). Re-publishing a notice id and version with a different text is refused
(ALREADY_EXISTS); the same text again is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from sys import intern as _sys_intern

from cryptography.exceptions import InvalidSignature

from consent.entries import WRITERS, EntryError, SignedEntry, signature_of, signed_message
from consent.keys import ROLES, key_id_of, public_from_b64, public_raw

# Status names follow gRPC so the service maps them one to one.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNAUTHENTICATED = "UNAUTHENTICATED"
PERMISSION_DENIED = "PERMISSION_DENIED"
ALREADY_EXISTS = "ALREADY_EXISTS"
NOT_FOUND = "NOT_FOUND"
FAILED_PRECONDITION = "FAILED_PRECONDITION"


class AppendError(ValueError):
    """An append refused as a whole; `code` is a gRPC status name, `index` the offending entry in the batch."""

    def __init__(self, code: str, message: str, index: int | None = None):
        super().__init__(message if index is None else f"entry {index} of the batch: {message}")
        self.code = code
        self.index = index


@dataclass
class KeyRecord:
    key_id: str
    identity: str
    role: str
    public_key: str  # base64 raw Ed25519
    revoked: bool = False

    def __post_init__(self):
        self._public = public_from_b64(self.public_key)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self._public.verify(signature, message)
            return True
        except InvalidSignature:
            return False


@dataclass(slots=True)  # slots: `cohort ledger verify` holds one per subject of the log
class SubjectRecord:
    partner_id: str
    erasure_requested: bool = False
    erased: bool = False


@dataclass(slots=True)
class ConsentRecord:
    partner_id: str
    subject_ref: str
    kind: str


@dataclass
class LogState:
    """What the rules need to know about the log so far; lookups the store prefetched for this batch."""

    keys: dict[str, KeyRecord] = field(default_factory=dict)
    subjects: dict[str, SubjectRecord] = field(default_factory=dict)
    consents: dict[str, ConsentRecord] = field(default_factory=dict)
    leaf_hashes: set[bytes] = field(default_factory=set)
    # (partner_id, notice_id, version) -> sha256 of the published notice text
    notices: dict[tuple[str, str, str], str] = field(default_factory=dict)
    # True only while the log has no entry at all: the next entry may be the operator's self-signed bootstrap.
    # apply_entry clears it once an entry is accepted, so the bootstrap exception covers exactly index 0.
    empty_log: bool = False


# Verdicts of a signature check done ahead of time (consent.store.sigcheck): (verdict, public key it was checked with).
SIGNATURE_OK, SIGNATURE_BAD, SIGNATURE_NOT_BASE64 = 0, 1, 2


def check_entry(
    entry: SignedEntry,
    leaf: bytes,
    state: LogState,
    position: int,
    verify_signature=True,
    checked: tuple[int, str] | None = None,
) -> KeyRecord:
    """Raises AppendError if `entry` may not be appended after the log described by `state`; else updates state.

    The checks run in this order, and the first that fails names the error: replay, signing key, signature, role,
    partner scope, consent semantics. `checked` is an optional verdict on the signature reached elsewhere (a
    worker process) under a public key; it is used only if the rules pick a key with that very public key, else
    the signature is verified here. Returns the key the entry was judged under."""
    key = signing_key(entry, leaf, state, position)
    if verify_signature:
        check_signature(entry, key, position, checked)
    apply_entry(entry, leaf, key, state, position)
    return key


def signing_key(entry: SignedEntry, leaf: bytes, state: LogState, position: int) -> KeyRecord:
    """The checks before the signature: not a replay, and signed by a known, current key of the named signer."""
    if leaf in state.leaf_hashes:
        raise AppendError(ALREADY_EXISTS, "entry already in the log (replay)", position)
    return _signing_key(entry, state, position)


def signature_verdict(entry: SignedEntry, key: KeyRecord) -> int:
    """SIGNATURE_OK, SIGNATURE_BAD or SIGNATURE_NOT_BASE64 for the entry's signature under `key`."""
    try:
        sig = signature_of(entry)
    except EntryError:
        return SIGNATURE_NOT_BASE64
    return SIGNATURE_OK if key.verify(sig, signed_message(entry)) else SIGNATURE_BAD


def check_signature(entry: SignedEntry, key: KeyRecord, position: int, checked: tuple[int, str] | None = None) -> None:
    if checked is not None and checked[1] == key.public_key:
        verdict = checked[0]
    else:
        verdict = signature_verdict(entry, key)
    if verdict == SIGNATURE_NOT_BASE64:
        raise AppendError(UNAUTHENTICATED, "entry signature is not base64", position)
    if verdict != SIGNATURE_OK:
        raise AppendError(UNAUTHENTICATED, f"bad signature for key {entry.key_id}", position)


def apply_entry(entry: SignedEntry, leaf: bytes, key: KeyRecord, state: LogState, position: int) -> None:
    """The checks after the signature (role, partner scope, semantics); on success the entry joins `state`."""
    if key.role not in WRITERS[entry.type]:
        raise AppendError(
            PERMISSION_DENIED, f"role {key.role!r} may not append {entry.type} (allowed: {sorted(WRITERS[entry.type])})",
            position,
        )  # fmt: skip
    body = entry.body
    # A key.rotated body names an identity, not a partner_id: _key_entry checks who may rotate which key.
    if key.role == "partner" and entry.type != "key.rotated" and body.get("partner_id") != key.identity:
        raise AppendError(
            PERMISSION_DENIED, f"partner {key.identity!r} may only write for itself, not {body.get('partner_id')!r}",
            position,
        )  # fmt: skip
    _SEMANTICS.get(entry.type, _no_semantics)(entry, key, state, position)
    state.leaf_hashes.add(leaf)
    state.empty_log = False


def _signing_key(entry: SignedEntry, state: LogState, position: int) -> KeyRecord:
    if state.empty_log and entry.type == "key.registered" and entry.body.get("role") == "operator":
        # The first entry of a log is the operator registering itself: the key it carries signs it.
        boot = _key_from_body(entry.body, position)
        if boot.key_id != entry.key_id:
            raise AppendError(UNAUTHENTICATED, "bootstrap entry must be signed by the key it registers", position)
        return boot
    key = state.keys.get(entry.key_id)
    if key is None:
        raise AppendError(UNAUTHENTICATED, f"unknown key id {entry.key_id!r}", position)
    if key.revoked:
        raise AppendError(UNAUTHENTICATED, f"key {entry.key_id!r} has been rotated out", position)
    if key.identity != entry.signer:
        raise AppendError(UNAUTHENTICATED, f"key {entry.key_id!r} belongs to {key.identity!r}, not {entry.signer!r}",
                          position)  # fmt: skip
    return key


def _key_from_body(body: dict, position: int) -> KeyRecord:
    if body.get("role") not in ROLES:
        raise AppendError(INVALID_ARGUMENT, f"unknown role {body.get('role')!r}; roles are {ROLES}", position)
    try:
        rec = KeyRecord(body["key_id"], body["identity"], body["role"], body["public_key"])
    except ValueError as exc:
        raise AppendError(INVALID_ARGUMENT, str(exc), position) from None
    if key_id_of(public_raw(rec._public)) != body["key_id"]:
        raise AppendError(INVALID_ARGUMENT, "key_id does not match the public key", position)
    return rec


def _intern(value):
    return _sys_intern(value) if type(value) is str else value


def _no_semantics(entry: SignedEntry, key: KeyRecord, state: LogState, position: int) -> None:
    return None


def _subject_of(entry: SignedEntry, state: LogState, position: int, create: bool) -> SubjectRecord | None:
    ref, partner = entry.body["subject_ref"], entry.body["partner_id"]
    subject = state.subjects.get(ref)
    if subject is None:
        if not create:
            raise AppendError(NOT_FOUND, f"subject {ref} is not known to the ledger", position)
        subject = state.subjects[ref] = SubjectRecord(partner_id=_intern(partner))
    elif subject.partner_id != partner:
        raise AppendError(PERMISSION_DENIED, f"subject {ref} belongs to another partner", position)
    if subject.erasure_requested and entry.type != "subject.erased":
        raise AppendError(FAILED_PRECONDITION, f"subject {ref} has asked for erasure; nothing more may be recorded",
                          position)  # fmt: skip
    return subject


def _consent_recorded(entry: SignedEntry, key: KeyRecord, state: LogState, position: int) -> None:
    body = entry.body
    if body["consent_id"] in state.consents:
        raise AppendError(ALREADY_EXISTS, f"consent_id {body['consent_id']} is already used", position)
    notice = body["notice"]
    published = state.notices.get((body["partner_id"], notice["id"], notice["version"]))
    if published != notice["sha256"]:
        what = "was never published" if published is None else f"was published with another text (sha256 {published})"
        cited = f"notice {notice['id']!r} version {notice['version']!r} (sha256 {notice['sha256']})"
        raise AppendError(NOT_FOUND, f"{cited} {what} by {body['partner_id']!r}; append its notice.published first",
                          position)  # fmt: skip
    _subject_of(entry, state, position, create=True)
    sup = body.get("supersedes")
    if sup is not None:
        prior = state.consents.get(sup)
        if prior is None or prior.subject_ref != body["subject_ref"]:
            raise AppendError(NOT_FOUND, f"superseded consent {sup} does not exist for this subject", position)
    # Interned: a log holds millions of these records and only a handful of distinct partner ids and types.
    record = ConsentRecord(_intern(body["partner_id"]), body["subject_ref"], _intern(entry.type))
    state.consents[body["consent_id"]] = record


def _consent_ended(entry: SignedEntry, key: KeyRecord, state: LogState, position: int) -> None:
    body = entry.body
    _subject_of(entry, state, position, create=False)
    prior = state.consents.get(body["consent_id"])
    verb = "withdraw" if entry.type == "consent.withdrawn" else "expire"
    if prior is None or prior.subject_ref != body["subject_ref"] or prior.kind != "consent.given":
        raise AppendError(NOT_FOUND, f"no consent {body['consent_id']} of subject {body['subject_ref']} to {verb}",
                          position)  # fmt: skip
    prior.kind = entry.type


def _erasure_requested(entry: SignedEntry, key: KeyRecord, state: LogState, position: int) -> None:
    subject = _subject_of(entry, state, position, create=False)
    subject.erasure_requested = True


def _erased(entry: SignedEntry, key: KeyRecord, state: LogState, position: int) -> None:
    subject = _subject_of(entry, state, position, create=False)
    if not subject.erasure_requested:
        raise AppendError(FAILED_PRECONDITION, "subject.erased needs a prior subject.erasure_requested", position)
    if subject.erased:
        raise AppendError(ALREADY_EXISTS, f"subject {entry.body['subject_ref']} is already erased", position)
    subject.erased = True


def _notice_published(entry: SignedEntry, key: KeyRecord, state: LogState, position: int) -> None:
    body = entry.body
    ident = (body["partner_id"], body["notice_id"], body["version"])
    published = state.notices.get(ident)
    if published is not None and published != body["sha256"]:
        raise AppendError(ALREADY_EXISTS, f"notice {ident[1]!r} version {ident[2]!r} is already published with another "
                                          f"text (sha256 {published}); publish a new version", position)  # fmt: skip
    state.notices[ident] = body["sha256"]


def keys_of(state: LogState, identity: str) -> list[KeyRecord]:
    """Every key the state knows for an identity (the store prefetches all of them for a batch's key entries)."""
    return [k for k in state.keys.values() if k.identity == identity]


def _key_entry(entry: SignedEntry, key: KeyRecord, state: LogState, position: int) -> None:
    """key.registered / key.rotated: one active key per identity, one role per identity (module docstring)."""
    body = entry.body
    rec = _key_from_body(body, position)
    if rec.key_id in state.keys:
        raise AppendError(ALREADY_EXISTS, f"key {rec.key_id} is already registered", position)
    held = keys_of(state, rec.identity)
    if entry.type == "key.registered":
        if held:
            current = next((k for k in held if not k.revoked), held[-1])
            raise AppendError(ALREADY_EXISTS, f"identity {rec.identity!r} already holds key {current.key_id} (role "
                                              f"{current.role}); a new key for it needs key.rotated, signed by the "
                                              "operator or by that key", position)  # fmt: skip
        state.keys[rec.key_id] = rec
        return
    old = state.keys.get(body["replaces"])
    if old is None or old.identity != rec.identity:
        raise AppendError(NOT_FOUND, f"key {body['replaces']} of {rec.identity} does not exist", position)
    if old.revoked:
        raise AppendError(FAILED_PRECONDITION, f"key {old.key_id} of {rec.identity} was already rotated out; only "
                                               "the current key can be replaced", position)  # fmt: skip
    if key.role != "operator" and key.key_id != old.key_id:
        raise AppendError(PERMISSION_DENIED, f"{key.identity!r} may not rotate the key of {rec.identity!r}: only the "
                                             "operator or the key being replaced may sign key.rotated",
                          position)  # fmt: skip
    if rec.role != old.role:
        raise AppendError(PERMISSION_DENIED, f"a rotation keeps the role: {rec.identity!r} is a {old.role}, not a "
                                             f"{rec.role}", position)  # fmt: skip
    old.revoked = True
    state.keys[rec.key_id] = rec


_SEMANTICS = {
    "consent.given": _consent_recorded,
    "consent.refused": _consent_recorded,
    "consent.withdrawn": _consent_ended,
    "consent.expired": _consent_ended,
    "subject.erasure_requested": _erasure_requested,
    "subject.erased": _erased,
    "notice.published": _notice_published,
    "key.registered": _key_entry,
    "key.rotated": _key_entry,
}
