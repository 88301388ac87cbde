"""The ledger store on SQLite and PostgreSQL: appends, proofs, refusals, tampering, erasure, eligibility."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import text

from consent import merkle, rules
from consent.canonical import canonical_bytes
from consent.checkpoints import sign_checkpoint
from consent.eligibility import prove_absent, verify_absent
from consent.entries import EntryError, check_body, make_entry, now_iso
from consent.keys import Identity
from consent.partner import DEFAULT_NOTICE, Notice, PartnerDesk
from consent.rules import AppendError
from consent.store.log import LedgerStore
from consent.store.vault import ErasedError
from consent.verify import verify_ledger
from tests.ledger_helpers import CHURN, consent, make_world


def test_appends_build_an_rfc9162_tree_with_valid_proofs(ledger_url):
    w = make_world(ledger_url)
    w.partners["partner-a"].record([consent(f"u{i}") for i in range(37)])
    first = w.ledger.checkpoint()
    w.partners["partner-b"].record([consent(f"v{i}") for i in range(20)])
    second = w.ledger.checkpoint()

    leaves = [data for _, data in w.ledger.entries(0, second.tree_size)]
    assert len(leaves) == second.tree_size == first.tree_size + 20
    assert merkle.root_hash(leaves) == second.root
    assert merkle.root_hash(leaves[: first.tree_size]) == first.root
    for index in (0, 5, first.tree_size - 1, second.tree_size - 1):
        proof = w.ledger.inclusion_proof(index, second.tree_size)
        assert merkle.verify_inclusion(merkle.leaf_hash(leaves[index]), index, second.tree_size, proof, second.root)
    proof = w.ledger.consistency_proof(first.tree_size, second.tree_size)
    assert merkle.verify_consistency(first.tree_size, second.tree_size, first.root, second.root, proof)
    assert verify_ledger(ledger_url, workers=0).ok


def test_appends_and_proofs_read_o_log_n_tree_nodes_not_the_whole_log(ledger_url, monkeypatch):
    """The store keeps every perfect subtree's hash: a root or a proof reads O(log n) nodes, an append never
    rereads the log (its left siblings are the frontier, in memory or read once)."""
    from consent.store.log import LedgerStore

    w = make_world(ledger_url)
    w.partners["partner-a"].record([consent(f"u{i}") for i in range(1500)], batch=500)
    size = w.ledger.tree_size()
    reads = []
    plain = LedgerStore._node

    def counted(conn, level, index):
        reads.append((level, index))
        return plain(conn, level, index)

    monkeypatch.setattr(LedgerStore, "_node", staticmethod(counted))
    budget = 2 * size.bit_length() + 2
    for index in (0, 777, size - 1):
        reads.clear()
        w.ledger.inclusion_proof(index, size)
        assert 0 < len(reads) <= budget, f"inclusion proof read {len(reads)} nodes of a {size}-entry log"
    reads.clear()
    w.ledger.consistency_proof(1000, size)
    assert 0 < len(reads) <= 2 * budget
    reads.clear()
    w.ledger.store.root(size)
    assert len(reads) == bin(size).count("1")  # one frontier node per set bit of the size
    reads.clear()
    w.partners["partner-a"].record([consent(f"z{i}") for i in range(300)])
    assert len(reads) <= budget, f"an append of 300 entries read {len(reads)} stored nodes"
    assert verify_ledger(ledger_url, workers=0).ok


def _refused(w, entries, code):
    before = w.ledger.tree_size()
    with pytest.raises(AppendError) as err:
        w.ledger.append(entries)
    assert err.value.code == code, str(err.value)
    assert w.ledger.tree_size() == before, "a refused batch must store nothing"
    return str(err.value)


def _resign(entry_fields: dict, signer: Identity) -> bytes:
    import base64

    unsigned = {k: v for k, v in entry_fields.items() if k != "sig"}
    return canonical_bytes(dict(unsigned, sig=base64.b64encode(signer.sign(canonical_bytes(unsigned))).decode()))


def test_bad_input_is_refused_with_a_precise_code_and_nothing_is_stored(ledger_url):
    w = make_world(ledger_url)
    a, b = w.partners["partner-a"], w.partners["partner-b"]
    good = a.consent_entries([consent("alice")])[0]
    w.ledger.append([good])

    # replay of an acknowledged entry
    _refused(w, [good], "ALREADY_EXISTS")
    # one good entry and one bad in a batch: the whole batch is refused
    ok_entry = a.consent_entries([consent("bob")])[0]
    tampered = dict(ok_entry.fields, body=dict(ok_entry.body, purposes=["analytics"]))
    assert "signature" in _refused(w, [ok_entry, canonical_bytes(tampered)], "UNAUTHENTICATED")
    # unknown key
    stranger = Identity.generate("partner-a", "partner")
    assert "unknown key" in _refused(w, [_resign(dict(ok_entry.fields, key_id=stranger.key_id), stranger)], "UNAUTHENTICATED")
    # unknown purpose / category / entry type: malformed before any key is consulted
    for field, value in (("purposes", ["selling_data"]), ("data_categories", ["biometric"])):
        bad = dict(ok_entry.fields, body=dict(ok_entry.body, **{field: value}))
        message = _refused(w, [_resign(bad, a.identity)], "INVALID_ARGUMENT")
        assert value[0] in message
    assert "unknown entry type" in _refused(w, [_resign(dict(ok_entry.fields, type="consent.sold"), a.identity)],
                                            "INVALID_ARGUMENT")  # fmt: skip
    # non-canonical bytes
    assert "canonical" in _refused(w, [json.dumps(ok_entry.fields, indent=1).encode()], "INVALID_ARGUMENT")
    # timestamp far in the future
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert "future" in _refused(w, [_resign(dict(ok_entry.fields, ts=future), a.identity)], "INVALID_ARGUMENT")
    # a partner writing for another partner, and for another partner's subject
    foreign = dict(ok_entry.fields, signer="partner-b", key_id=b.identity.key_id)
    assert "only write for itself" in _refused(w, [_resign(foreign, b.identity)], "PERMISSION_DENIED")
    stolen = dict(good.fields, signer="partner-b", key_id=b.identity.key_id,
                  body=dict(good.body, partner_id="partner-b", consent_id="ab" * 16))  # fmt: skip
    assert "another partner" in _refused(w, [_resign(stolen, b.identity)], "PERMISSION_DENIED")
    # withdrawal of a consent that does not exist
    ghost = make_entry("consent.withdrawn", {"consent_id": "cd" * 16, "partner_id": "partner-a",
                                             "subject_ref": good.subject_ref, "indicated_at": "2026-01-01"}, a.identity)  # fmt: skip
    assert "no consent" in _refused(w, [ghost], "NOT_FOUND")
    # the auditor and the coordinator may not write consents
    for who in (w.auditor, w.coordinator):
        as_them = dict(ok_entry.fields, signer=who.name, key_id=who.key_id)
        _refused(w, [_resign(as_them, who)], "PERMISSION_DENIED")
    assert verify_ledger(ledger_url, workers=0).ok


def _tamper(url: str, sql: str, params: dict) -> None:
    from consent.store.engine import open_engine

    engine = open_engine(url, migrate=False)
    with engine.begin() as conn:
        conn.execute(text(sql), params)
    engine.dispose()


@pytest.mark.parametrize("target", ["entry", "signature", "checkpoint"])
def test_ledger_verify_names_a_single_tampered_byte(ledger_url, target):
    w = make_world(ledger_url)
    w.partners["partner-a"].record([consent(f"u{i}") for i in range(30)])
    cp = w.ledger.checkpoint()
    assert verify_ledger(ledger_url, workers=0).ok
    victim = 20
    data = bytearray(w.ledger.store.entry(victim))
    if target == "entry":
        pos = data.index(b'"jurisdiction":"') + len(b'"jurisdiction":"')
        data[pos] ^= 0x01  # one bit of one byte
        _tamper(ledger_url, "UPDATE entries SET data = :d WHERE idx = :i", {"d": bytes(data), "i": victim})
    elif target == "signature":
        pos = data.index(b'"sig":"') + len(b'"sig":"') + 3
        data[pos] = ord("A") if data[pos] != ord("A") else ord("B")
        _tamper(ledger_url, "UPDATE entries SET data = :d WHERE idx = :i", {"d": bytes(data), "i": victim})
    else:
        body = bytearray(cp.body)
        pos = body.index(b'"root":"') + len(b'"root":"')
        body[pos] = ord("0") if body[pos] != ord("0") else ord("1")
        _tamper(ledger_url, "UPDATE checkpoints SET body = :b WHERE tree_size = :s", {"b": bytes(body), "s": cp.tree_size})
    report = verify_ledger(ledger_url, workers=0)
    assert not report.ok
    index, reason = report.first_bad
    if target == "checkpoint":
        assert f"checkpoint at size {cp.tree_size}" in reason
    else:
        assert index == victim, reason


@pytest.mark.parametrize("damage", ["first_byte", "missing_root", "not_canonical", "size_as_text", "root_not_hex"])
def test_ledger_verify_reports_a_corrupt_checkpoint_body_without_crashing(ledger_url, damage):
    w = make_world(ledger_url)
    w.partners["partner-a"].record([consent(f"u{i}") for i in range(3)])
    cp = w.ledger.checkpoint()
    fields = json.loads(cp.body)
    body = {
        "first_byte": bytes([cp.body[0] ^ 0xFF]) + cp.body[1:],
        "missing_root": canonical_bytes({k: v for k, v in fields.items() if k != "root"}),
        "not_canonical": json.dumps(fields, indent=1).encode(),
        "size_as_text": canonical_bytes(dict(fields, tree_size=str(cp.tree_size))),
        "root_not_hex": canonical_bytes(dict(fields, root="zz" * 32)),
    }[damage]
    _tamper(ledger_url, "UPDATE checkpoints SET body = :b WHERE tree_size = :s", {"b": body, "s": cp.tree_size})
    report = verify_ledger(ledger_url, workers=0)
    assert not report.ok
    index, reason = report.first_bad
    assert index is None and reason.startswith(f"checkpoint at size {cp.tree_size}: stored body is corrupt"), reason
    assert report.entries_checked == cp.tree_size  # the entries were still all judged


def test_tamper_that_also_rewrites_the_leaf_hash_is_caught_by_signature_and_checkpoint(ledger_url):
    url = ledger_url
    w = make_world(url)
    w.partners["partner-a"].record([consent(f"u{i}") for i in range(10)])
    w.ledger.checkpoint()
    victim = 8
    data = w.ledger.store.entry(victim).replace(b'"CN"', b'"US"')
    _tamper(url, "UPDATE entries SET data = :d, leaf_hash = :h WHERE idx = :i",
            {"d": data, "h": merkle.leaf_hash(data), "i": victim})  # fmt: skip
    report = verify_ledger(url, workers=0)
    assert report.first_bad[0] == victim and "signature" in report.first_bad[1]
    assert any("checkpoint" in p for _, p in report.problems)


def test_consent_index_tampering_is_detected(ledger_url):
    url = ledger_url
    w = make_world(url)
    a = w.partners["partner-a"]
    a.record([consent("u1"), consent("u2")])
    a.withdraw("u1")
    _tamper(url, "DELETE FROM consent_events WHERE kind = 'withdrawn'", {})
    report = verify_ledger(url, workers=0)
    assert any("consent index" in p for _, p in report.problems)


def test_erasure_shreds_mapping_and_evidence_and_the_log_still_verifies(ledger_url):
    w = make_world(ledger_url)
    a = w.partners["partner-a"]
    a.record([consent("erin"), consent("frank")])
    ref = a.subject_refs(["erin"])["erin"]
    consent_id = w.ledger.current_consent(ref)
    assert b"notice" in w.ledger.vault.read_evidence(consent_id)

    a.erase("erin")
    assert w.ledger.vault.is_shredded(ref)
    with pytest.raises(ErasedError):
        w.ledger.vault.read_evidence(consent_id)
    assert a.subject_refs(["erin"], create=False) == {}, "the user id must no longer resolve"
    types = [e["type"] for _, e in w.ledger.subject_history(ref)]
    assert types == ["consent.given", "subject.erasure_requested", "subject.erased"]
    eligible = w.ledger.eligible_set("partner-a", CHURN, ["behavioural"])
    assert ref not in eligible and eligible.count == 1
    # nothing more may be recorded for an erased subject
    with pytest.raises(AppendError) as err:
        w.ledger.append(a.consent_entries([consent("erin")])[:0] or [make_entry("consent.withdrawn", {
            "consent_id": consent_id, "partner_id": "partner-a", "subject_ref": ref, "indicated_at": "2026-01-01"},
            a.identity)])  # fmt: skip
    assert err.value.code == "FAILED_PRECONDITION"
    w.ledger.checkpoint()
    assert verify_ledger(ledger_url, workers=0).ok


def test_eligibility_is_purpose_and_category_scoped_and_checkpointed(ledger_url):
    w = make_world(ledger_url)
    a = w.partners["partner-a"]
    a.record([
        consent("full"),
        consent("behaviour_only", categories=("behavioural",)),
        consent("marketing_only", purposes=("third_party_marketing",)),
        consent("refuser", given=False),
        consent("leaver"),
        consent("expired", valid_until="2020-01-01"),
    ])  # fmt: skip
    refs = a.subject_refs(["full", "behaviour_only", "marketing_only", "refuser", "leaver", "expired"])
    before_withdrawal = w.ledger.tree_size()
    a.withdraw("leaver")

    both = w.ledger.eligible_set("partner-a", CHURN, ["behavioural", "transaction"])
    assert both.subject_refs == [refs["full"]]
    behavioural = w.ledger.eligible_set("partner-a", CHURN, ["behavioural"])
    assert sorted(behavioural.subject_refs) == sorted([refs["full"], refs["behaviour_only"]])
    assert w.ledger.eligible_set("partner-a", "third_party_marketing", ["behavioural"]).subject_refs == [refs["marketing_only"]]
    # at the earlier checkpoint the leaver was still in
    earlier = w.ledger.eligible_set("partner-a", CHURN, ["transaction"], tree_size=before_withdrawal)
    assert refs["leaver"] in earlier and refs["leaver"] not in both
    # a later consent supersedes: the refuser changes their mind
    a.record([consent("refuser")])
    assert refs["refuser"] in w.ledger.eligible_set("partner-a", CHURN, ["transaction"])
    # the other partner sees none of partner-a's subjects
    assert w.ledger.eligible_set("partner-b", CHURN, ["behavioural"]).count == 0


def test_non_membership_proof_for_a_withdrawn_subject(ledger_url):
    w = make_world(ledger_url)
    a = w.partners["partner-a"]
    a.record([consent(f"u{i}") for i in range(50)])
    gone = a.subject_refs(["u7"])["u7"]
    a.withdraw("u7")
    eligible = w.ledger.eligible_set("partner-a", CHURN, ["behavioural"])
    assert eligible.count == 49
    proof = prove_absent(eligible, gone)
    assert verify_absent(proof, eligible.root, eligible.count)
    # the same proof must not verify against a set that contains the subject
    before = w.ledger.eligible_set("partner-a", CHURN, ["behavioural"], tree_size=eligible.tree_size - 1)
    assert gone in before
    assert not verify_absent(proof, before.root, before.count)
    with pytest.raises(ValueError):
        prove_absent(before, gone)


def test_privacy_budget_caps_eligibility(ledger_url):
    w = make_world(ledger_url)
    a = w.partners["partner-a"]
    a.record([consent(f"u{i}") for i in range(10)])
    eligible = w.ledger.eligible_set("partner-a", CHURN, ["behavioural"])
    heavy = eligible.subject_refs[:4]
    w.ledger.charge_budget("job-1", 1, "partner-a", heavy, 3.0)
    w.ledger.charge_budget("job-2", 1, "partner-a", heavy[:2], 3.0)
    spent = w.ledger.budget_spent("partner-a")
    assert spent[heavy[0]] == pytest.approx(6.0) and spent[heavy[3]] == pytest.approx(3.0)
    capped = w.ledger.eligible_set("partner-a", CHURN, ["behavioural"], lifetime_epsilon=5.0)
    assert capped.count == 8 and heavy[0] not in capped and heavy[3] in capped
    assert [c["subject_count"] for c in w.ledger.budget.charges()] == [4, 2]


def test_a_charge_adds_to_known_subjects_inserts_new_ones_and_counts_a_repeated_ref_once(ledger_url):
    from consent.store.budget import BudgetBook
    from consent.store.engine import open_engine

    engine = open_engine(ledger_url)
    book = BudgetBook(engine)
    book.charge("job-1", 1, "partner-a", ["s1", "s2"], 0.5)
    book.charge("job-1", 1, "partner-b", ["s1"], 2.0)  # another partner's subject of the same ref is its own row
    book.charge("job-1", 2, "partner-a", ["s2", "s3", "s3"], 0.25)
    book.charge("job-1", 3, "partner-a", [], 0.25)
    assert book.spent("partner-a") == {"s1": 0.5, "s2": 0.75, "s3": 0.25}
    assert book.spent("partner-b") == {"s1": 2.0}
    assert [c["subject_count"] for c in book.charges("job-1")] == [2, 1, 2, 0]
    with pytest.raises(ValueError, match="non-negative"):
        book.charge("job-1", 4, "partner-a", ["s1"], float("nan"))
    assert book.spent("partner-a")["s1"] == 0.5 and len(book.charges()) == 4  # a refused charge stores nothing
    engine.dispose()



def test_lookups_of_many_subjects_find_exactly_theirs_in_one_statement_on_postgres(ledger_url):
    """More values than one IN list holds: every one found, nothing of another partner; PostgreSQL asks once."""
    from sqlalchemy import event

    from consent.store.budget import BudgetBook
    from consent.store.engine import open_engine
    from consent.store.sql import IN_CHUNK
    from consent.store.vault import SubjectVault, user_hmac

    engine = open_engine(ledger_url)
    vault, book = SubjectVault(engine), BudgetBook(engine)
    n = 2 * IN_CHUNK + 7
    hmacs = [user_hmac(b"secret", f"user-{i}") for i in range(n)]
    refs = vault.subject_refs("partner-a", hmacs, create=True)
    other = vault.subject_refs("partner-b", hmacs[:5], create=True)  # the same users at another partner
    book.charge("job", 1, "partner-a", list(refs.values()), 0.5)
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    asked = hmacs + ["not-a-user"]
    assert vault.subject_refs("partner-a", asked, create=False) == refs and len(refs) == n
    assert not set(refs.values()) & set(other.values())
    spent = book.spent("partner-a", list(refs.values()) + list(other.values()))
    assert spent == {r: 0.5 for r in refs.values()}
    lists = -(-len(asked) // IN_CHUNK) + -(-(n + len(other)) // IN_CHUNK)  # SQLite: one statement per IN list
    expected = 2 if engine.dialect.name == "postgresql" else lists
    assert len(statements) == expected, statements
    engine.dispose()

def test_migrations_create_exactly_the_declared_schema(ledger_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from consent.store.engine import open_engine
    from consent.store.tables import metadata

    engine = open_engine(ledger_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert diff == []


def _forge(entry_type: str, body: dict, signer: Identity) -> bytes:
    """Signed entry bytes built WITHOUT make_entry's body rules, to put bad bodies in front of the store."""
    import base64
    import os

    unsigned = {"v": 1, "type": entry_type, "signer": signer.name, "key_id": signer.key_id, "ts": now_iso(),
                "nonce": os.urandom(12).hex(), "body": body}  # fmt: skip
    return canonical_bytes(dict(unsigned, sig=base64.b64encode(signer.sign(canonical_bytes(unsigned))).decode()))


def _key_body(ident: Identity, **changes) -> dict:
    return dict({"identity": ident.name, "role": ident.role, "key_id": ident.key_id, "public_key": ident.public_b64},
                **changes)  # fmt: skip


# ---- identities: one active key per identity, new keys only by rotation -------------------------------------


def test_an_identity_holds_one_key_and_gets_another_only_by_rotation(ledger_url):
    w = make_world(ledger_url)
    a, b = w.partners["partner-a"], w.partners["partner-b"]
    impostor = Identity.generate("partner-a", "partner")
    before = w.ledger.tree_size()
    with pytest.raises(AppendError) as err:
        w.ledger.register(impostor)
    assert err.value.code == "ALREADY_EXISTS"
    assert f"identity 'partner-a' already holds key {a.identity.key_id} (role partner)" in str(err.value)
    # the rule itself, for operator-signed entries that reach the store directly, under any role
    for role in ("partner", "auditor"):
        entry = make_entry("key.registered", _key_body(impostor, role=role), w.operator)
        assert "already holds key" in _refused(w, [entry], "ALREADY_EXISTS")
    assert w.ledger.tree_size() == before and w.ledger.store.key(impostor.key_id) is None
    # so the impostor's key signs nothing for partner-a
    forged = a.consent_entries([consent("victim")])[0]
    assert "unknown key" in _refused(w, [_resign(dict(forged.fields, key_id=impostor.key_id), impostor)],
                                     "UNAUTHENTICATED")  # fmt: skip

    fresh = Identity.generate("partner-a", "partner")
    rotation = _key_body(fresh, replaces=a.identity.key_id)
    # neither another partner nor the coordinator may rotate partner-a's key, nor may a rotation change the role
    assert "may not rotate the key of 'partner-a'" in _refused(w, [make_entry("key.rotated", rotation, b.identity)],
                                                                "PERMISSION_DENIED")  # fmt: skip
    _refused(w, [make_entry("key.rotated", rotation, w.coordinator)], "PERMISSION_DENIED")
    escalation = dict(rotation, role="operator")
    assert "keeps the role" in _refused(w, [make_entry("key.rotated", escalation, a.identity)], "PERMISSION_DENIED")
    # partner-a's current key rotates itself
    w.ledger.append([make_entry("key.rotated", rotation, a.identity)])
    assert "rotated out" in _refused(w, a.consent_entries([consent("late")]), "UNAUTHENTICATED")
    PartnerDesk(fresh, a.secret, w.ledger).record([consent("late")])
    # only the current key can be replaced
    stale = _key_body(Identity.generate("partner-a", "partner"), replaces=a.identity.key_id)
    assert "already rotated out" in _refused(w, [make_entry("key.rotated", stale, w.operator)], "FAILED_PRECONDITION")
    # the operator may rotate any identity's current key
    third = Identity.generate("partner-a", "partner")
    assert w.ledger.rotate("partner-a", third.public_b64) == third.key_id
    assert [(k.key_id, k.revoked) for k in w.ledger.store.keys_of("partner-a")] == [
        (a.identity.key_id, True), (fresh.key_id, True), (third.key_id, False)]  # fmt: skip
    w.ledger.checkpoint()
    assert verify_ledger(ledger_url, workers=0).ok


def test_verify_applies_the_one_key_per_identity_rule(ledger_url, monkeypatch):
    """A second key for an identity forced past the store (the old rule) is named by `cohort ledger verify`."""
    w = make_world(ledger_url)
    impostor = Identity.generate("partner-a", "partner")

    def old_rule(entry, key, state, position):  # what the store used to do: only the key id had to be new
        record = rules._key_from_body(entry.body, position)
        state.keys[record.key_id] = record

    monkeypatch.setitem(rules._SEMANTICS, "key.registered", old_rule)
    [index] = w.ledger.append([make_entry("key.registered", _key_body(impostor), w.operator)])
    monkeypatch.undo()
    w.ledger.checkpoint()
    report = verify_ledger(ledger_url, workers=0)
    assert report.first_bad[0] == index and "already holds key" in report.first_bad[1], report.problems


def test_only_the_first_entry_of_a_log_is_a_self_signed_bootstrap(ledger_url):
    store = LedgerStore.open(ledger_url)
    first, second = Identity.generate("operator", "operator"), Identity.generate("operator-2", "operator")

    def bootstrap(op):
        return make_entry("key.registered", _key_body(op), op)

    try:
        with pytest.raises(AppendError) as err:
            store.append([bootstrap(first), bootstrap(second)])
        assert (err.value.code, err.value.index) == ("UNAUTHENTICATED", 1), str(err.value)
        assert f"unknown key id {second.key_id!r}" in str(err.value)
        assert store.tree_size() == 0
        # the bootstrap and the entries it signs may share the first batch
        coordinator = Identity.generate("coordinator", "coordinator")
        assert store.append([bootstrap(first), make_entry("key.registered", _key_body(coordinator), first)]) == [0, 1]
        with pytest.raises(AppendError) as err:
            store.append([bootstrap(second)])
        assert err.value.code == "UNAUTHENTICATED" and store.tree_size() == 2
    finally:
        store.close()
    assert verify_ledger(ledger_url, workers=0).ok


# ---- bodies: closed field sets, typed fields, the vocabulary ---------------------------------------------


def _coordinator_bodies() -> dict[str, dict]:
    """Bodies exactly as server/ledger_hooks.py + server/manifests.py + client/manifest.py write them."""
    part = {"partner_id": "partner-a", "job_id": "demo-1700000000-job1", "server_round": 1, "tree_size": 40,
            "purpose": CHURN, "categories": ["behavioural", "transaction"], "eligible_root": "ab" * 32,
            "eligible_count": 28, "num_examples": 25, "noise_multiplier": 1.1, "max_grad_norm": 20.0,
            "sample_rate": 0.25, "steps": 8, "delta": 1e-5, "accountant": "rdp", "epsilon": 1.5,
            "epsilon_round": 1.5, "data_hash": "cd" * 32, "code_hash": "ef" * 32}  # fmt: skip
    manifest = {"job_id": "demo-1700000000-job1", "round": 1, "tree_size": 40, "purpose": CHURN,
                "categories": ["behavioural", "transaction"], "strategy": "fedavg",
                "dp": {"target_epsilon": 3.0, "delta": 1e-5, "epsilon_max": 1.5}, "partners": [part],
                "refused": [{"node_id": 7, "partner_id": "partner-b", "reason": "update holds NaN or Inf values"}],
                "failed": [], "missing_nodes": [9], "model_in_hash": "01" * 32, "model_out_hash": "02" * 32,
                "server_code_hash": "03" * 32, "closed_at": "2026-03-01T10:00:00+00:00", "as_of": "2026-03-01",
                "lifetime_epsilon": None, "checkpoint_root": "04" * 32}  # fmt: skip
    job = {"job_id": "demo-1700000000-job1", "purpose": CHURN, "data_categories": ["behavioural", "transaction"],
           "checkpoint": {"tree_size": 40, "root": "04" * 32}, "rounds": 3, "target_epsilon": 3.0, "delta": 1e-5,
           "strategy": "fedavg", "partners": ["partner-a", "partner-b"], "as_of": "2026-03-01",
           "lifetime_epsilon": 10.0}  # fmt: skip
    model = {"job_id": "demo-1700000000-job1", "model_hash": "05" * 32, "rounds": 3,
             "epsilon_by_partner": {"partner-a": 2.9, "partner-b": 3.0}}  # fmt: skip
    reward = {"job_id": "demo-1700000000-job1", "partner_id": "partner-a", "total_points": 1000.0,
              "subjects_root": "06" * 32, "subject_count": 28}  # fmt: skip
    return {"round.manifest": manifest, "job.started": job, "model.published": model, "reward.issued": reward}


def _changed(body: dict, path: tuple, value) -> dict:
    """A deep copy of body with body[path[0]][path[1]]... set to value (value None with a '-' path: deleted)."""
    out = json.loads(json.dumps(body))
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


BAD_COORDINATOR_BODIES = [
    ("round.manifest", ("purpose",), "selling_data", "unknown purpose(s) ['selling_data']"),
    ("round.manifest", ("categories",), ["genome"], "unknown data category ['genome']"),
    ("round.manifest", ("user_email",), "alice@example.com", "unexpected field(s) ['user_email']"),
    ("round.manifest", ("partners", 0, "user_email"), "alice@example.com", "part body has unexpected field(s)"),
    ("round.manifest", ("partners", 0, "purpose"), "selling_data", "unknown purpose(s) ['selling_data']"),
    ("round.manifest", ("partners", 0, "eligible_count"), "28", "eligible_count must be an integer"),
    ("round.manifest", ("refused", 0, "email"), "alice@example.com", "refused/failed items must be objects"),
    ("round.manifest", ("dp", "target_epsilon"), -1, "target_epsilon must be a number > 0"),
    ("round.manifest", ("round",), "1", "round must be an integer >= 1"),
    ("job.started", ("purpose",), "selling_data", "unknown purpose(s) ['selling_data']"),
    ("job.started", ("data_categories",), ["genome"], "unknown data category ['genome']"),
    ("job.started", ("user_email",), "alice@example.com", "unexpected field(s) ['user_email']"),
    ("job.started", ("checkpoint",), 40, "checkpoint must be an object {tree_size, root}"),
    ("job.started", ("delta",), 2.0, "delta must be a number >= 0 and < 1"),
    ("model.published", ("user_email",), "alice@example.com", "unexpected field(s) ['user_email']"),
    ("model.published", ("model_hash",), "abc", "model_hash must be a hex SHA-256"),
    ("model.published", ("epsilon_by_partner", "partner-a"), "lots", "epsilon must be a number"),
    ("reward.issued", ("user_email",), "alice@example.com", "unexpected field(s) ['user_email']"),
    ("reward.issued", ("subject_count",), -1, "subject_count must be an integer >= 0"),
]

BAD_PARTNER_BODIES = [
    ("notice.published", ("purposes",), ["selling_data"], "unknown purpose(s) ['selling_data']"),
    ("notice.published", ("text",), "the full notice, with the user's name", "unexpected field(s) ['text']"),
    ("notice.published", ("version",), 2, "version must be a notice version"),
    ("consent.given", ("legal_basis",), 1, "legal_basis must be a legal-basis token"),
    ("consent.given", ("legal_basis",), "because alice@example.com said so", "legal_basis must be"),
    ("consent.given", ("collection_method",), "alice@example.com", "collection_method must be a channel token"),
    ("consent.given", ("jurisdiction",), "People's Republic of China", "jurisdiction must be an ISO 3166-1"),
    ("consent.given", ("jurisdiction",), None, "jurisdiction must be given"),
    ("consent.given", ("recipients",), "cohort-consortium", "recipients must be a list"),
    ("consent.given", ("recipients",), ["alice@example.com"], "recipients must hold names"),
    ("consent.given", ("notice", "id"), 7, "id must be a notice id"),
    ("consent.given", ("notice", "version"), ["1"], "version must be a notice version"),
    ("consent.given", ("user_email",), "alice@example.com", "unexpected field(s) ['user_email']"),
    ("consent.refused", ("jurisdiction",), 86, "jurisdiction must be an ISO 3166-1"),
    ("consent.refused", ("collection_method",), "Alice's phone", "collection_method must be a channel token"),
]


def test_coordinator_and_partner_bodies_are_closed_and_typed(ledger_url):
    w = make_world(ledger_url)
    a = w.partners["partner-a"]
    bodies = _coordinator_bodies()
    # what the coordinator's code writes is accepted ...
    for entry_type, body in bodies.items():
        w.ledger.append([make_entry(entry_type, body, w.coordinator)])
    given, refused = a.consent_entries([consent("typed"), consent("refuser", given=False)])
    partner_bodies = {"consent.given": given.body, "consent.refused": refused.body,
                      "notice.published": {"partner_id": "partner-a", "notice_id": "terms", "version": "2",
                                           "sha256": "07" * 32, "purposes": [CHURN]}}  # fmt: skip
    # ... and each of these one-field changes is refused, with its reason, before any key is consulted
    for signer, cases, source in ((w.coordinator, BAD_COORDINATOR_BODIES, bodies),
                                  (a.identity, BAD_PARTNER_BODIES, partner_bodies)):  # fmt: skip
        for entry_type, path, value, words in cases:
            body = _changed(source[entry_type], path, value)
            with pytest.raises(EntryError) as err:
                make_entry(entry_type, body, signer)
            assert words in str(err.value), (entry_type, path, str(err.value))
            message = _refused(w, [_forge(entry_type, body, signer)], "INVALID_ARGUMENT")
            assert words in message, (entry_type, path, message)
    w.ledger.append([given, refused])
    w.ledger.checkpoint()
    assert verify_ledger(ledger_url, workers=0).ok


def test_an_entry_without_a_vocabulary_field_is_judged_under_version_1(monkeypatch):
    """The field is optional: its absence means the version the entry was written under, 1, never 'current'."""
    from consent import entries, vocabulary
    from test_service_support import consent_body

    v1 = vocabulary.VOCABULARIES[1]
    v2 = vocabulary.Vocabulary(2, (v1.purposes - {"analytics"}) | {"fraud_detection"}, v1.data_categories)
    monkeypatch.setitem(vocabulary.VOCABULARIES, 2, v2)
    monkeypatch.setattr(vocabulary, "CURRENT_VERSION", 2)
    monkeypatch.setattr(entries, "CURRENT_VERSION", 2, raising=False)  # wherever a default might be read from
    ref = "ab" * 16
    # unmarked: version 1, where "analytics" exists and "fraud_detection" does not
    check_body("consent.given", consent_body("partner-a", ref, purposes=["analytics"]))
    with pytest.raises(EntryError, match=r"unknown purpose\(s\) \['fraud_detection'\]; vocabulary v1"):
        check_body("consent.given", consent_body("partner-a", ref, purposes=["fraud_detection"]))
    # marked: judged under the version named
    check_body("consent.given", consent_body("partner-a", ref, purposes=["fraud_detection"], vocabulary=2))
    with pytest.raises(EntryError, match="vocabulary v2"):
        check_body("consent.given", consent_body("partner-a", ref, purposes=["analytics"], vocabulary=2))
    for bad in ("2", True, 3):
        with pytest.raises(EntryError, match="vocabulary"):
            check_body("consent.given", consent_body("partner-a", ref, vocabulary=bad))
    # the same for the other bodies that name purposes
    notice = {"partner_id": "partner-a", "notice_id": "n", "version": "1", "sha256": "00" * 32}
    check_body("notice.published", dict(notice, purposes=["analytics"]))
    with pytest.raises(EntryError, match="vocabulary v1"):
        check_body("notice.published", dict(notice, purposes=["fraud_detection"]))
    job = dict(_coordinator_bodies()["job.started"], purpose="analytics")
    check_body("job.started", job)
    with pytest.raises(EntryError, match="vocabulary v1"):
        check_body("job.started", dict(job, purpose="fraud_detection"))


def test_job_started_says_whether_the_job_sums_securely():
    job = _coordinator_bodies()["job.started"]
    check_body("job.started", dict(job, aggregation="secure"))
    with pytest.raises(EntryError, match="aggregation must be 'plain' or 'secure'"):
        check_body("job.started", dict(job, aggregation="homomorphic"))
    partners = {p: f"{'ab' * 32}.{'cd' * 64}" for p in ("partner-a", "partner-b")}  # signed masking keys' shape
    secure = dict(job, aggregation="secure", partners=sorted(partners), masking_keys=partners)
    check_body("job.started", secure)
    for bad, words in (({"aggregation": "plain"}, "secure job only"),
                       ({"masking_keys": {"partner-a": partners["partner-a"]}}, "exactly the job's partners"),
                       ({"masking_keys": dict(partners, **{"partner-b": "ab" * 32})}, "'<64 hex>.<128 hex>'")):
        with pytest.raises(EntryError, match=words):
            check_body("job.started", dict(secure, **bad))


# ---- notices ---------------------------------------------------------------------------------------------


def test_a_consent_must_cite_a_notice_its_partner_published(ledger_url, monkeypatch):
    w = make_world(ledger_url)
    a, b = w.partners["partner-a"], w.partners["partner-b"]
    unpublished = Notice("cohort-modelling", "2", "A newer text that was never published.")
    message = _refused(w, a.consent_entries([consent("u1")], notice=unpublished), "NOT_FOUND")
    assert "notice 'cohort-modelling' version '2'" in message and "was never published by 'partner-a'" in message
    _refused(w, a.consent_entries([consent("u2", given=False)], notice=unpublished), "NOT_FOUND")  # refusals too
    # another partner's notice is not this partner's
    theirs = Notice("b-terms", "1", "partner-b's own notice")
    b.publish_notice(theirs, [CHURN])
    assert "never published by 'partner-a'" in _refused(w, a.consent_entries([consent("u3")], notice=theirs),
                                                         "NOT_FOUND")  # fmt: skip
    # the published id and version but another text: not the notice that was published
    other_text = Notice(DEFAULT_NOTICE.notice_id, DEFAULT_NOTICE.version, DEFAULT_NOTICE.text + " And we sell it.")
    assert "published with another text" in _refused(w, a.consent_entries([consent("u4")], notice=other_text),
                                                      "NOT_FOUND")  # fmt: skip
    with pytest.raises(AppendError) as err:
        a.publish_notice(other_text, [CHURN])
    assert err.value.code == "ALREADY_EXISTS" and "publish a new version" in str(err.value)
    a.publish_notice(DEFAULT_NOTICE, [CHURN])  # the same text again is harmless
    # publishing first, then recording, works, in one batch too
    body = {"partner_id": "partner-a", "notice_id": unpublished.notice_id, "version": unpublished.version,
            "sha256": unpublished.sha256, "purposes": [CHURN]}  # fmt: skip
    w.ledger.append([make_entry("notice.published", body, a.identity)] + a.consent_entries([consent("u1")],
                                                                                          notice=unpublished))
    # `cohort ledger verify` applies the same rule to a consent forced past the store
    ghost = Notice("ghost", "1", "never shown to anyone")
    real = rules._SEMANTICS["consent.given"]

    def old_rule(entry, key, state, position):
        n = entry.body["notice"]
        state.notices[(entry.body["partner_id"], n["id"], n["version"])] = n["sha256"]
        return real(entry, key, state, position)

    monkeypatch.setitem(rules._SEMANTICS, "consent.given", old_rule)
    [index] = w.ledger.append(a.consent_entries([consent("u5")], notice=ghost))
    monkeypatch.undo()
    w.ledger.checkpoint()
    report = verify_ledger(ledger_url, workers=0)
    assert report.first_bad[0] == index and "never published" in report.first_bad[1], report.problems


# ---- eligibility day, erasure ----------------------------------------------------------------------------


def test_eligibility_defaults_to_the_day_of_the_checkpoint_at_that_size(ledger_url):
    w = make_world(ledger_url)
    a = w.partners["partner-a"]
    a.record([consent("lapsing", valid_until="2021-01-01"), consent("lasting")])
    refs = a.subject_refs(["lapsing", "lasting"])
    size = w.ledger.tree_size()
    cp = sign_checkpoint(w.operator, w.ledger.store.origin, size, w.ledger.store.root(size),
                         ts="2020-06-01T23:59:59.000000Z")  # a checkpoint signed on 2020-06-01 (UTC)  # fmt: skip
    _tamper(ledger_url, "INSERT INTO checkpoints (tree_size, body, key_id, signature) VALUES (:s, :b, :k, :g)",
            {"s": size, "b": cp.body, "k": cp.key_id, "g": cp.signature})  # fmt: skip
    assert w.ledger.eligibility_day(size) == "2020-06-01"
    at_checkpoint = w.ledger.eligible_set("partner-a", CHURN, ["behavioural"], tree_size=size)
    assert refs["lapsing"] in at_checkpoint and refs["lasting"] in at_checkpoint, "judged on the checkpoint's day"
    assert w.ledger.eligible_set("partner-a", CHURN, ["behavioural"], tree_size=size, day="2020-06-01") == at_checkpoint
    explicit = w.ledger.eligible_set("partner-a", CHURN, ["behavioural"], tree_size=size, day="2022-01-01")
    assert refs["lapsing"] not in explicit and refs["lasting"] in explicit
    # at a size with no checkpoint: UTC today
    a.record([consent("newcomer")])
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert w.ledger.eligibility_day(w.ledger.tree_size()) == today
    latest = w.ledger.eligible_set("partner-a", CHURN, ["behavioural"])
    assert refs["lapsing"] not in latest and refs["lasting"] in latest
    assert verify_ledger(ledger_url, workers=0).ok


def test_complete_erasure_checks_everything_before_it_shreds(ledger_url):
    w = make_world(ledger_url)
    a = w.partners["partner-a"]
    a.record([consent("kept"), consent("other")])
    ref = a.subject_refs(["kept"])["kept"]
    before = w.ledger.tree_size()
    for partner, subject, code, words in (
        ("partner-a", ref, "FAILED_PRECONDITION", "no subject.erasure_requested"),
        ("partner-b", ref, "PERMISSION_DENIED", "does not belong to 'partner-b'"),
        ("partner-a", "ab" * 16, "NOT_FOUND", "has no entries in the log"),
    ):
        with pytest.raises(AppendError) as err:
            w.ledger.complete_erasure(partner, subject)
        assert err.value.code == code and words in str(err.value)
    assert not w.ledger.vault.is_shredded(ref), "a refused erasure must shred nothing"
    assert a.subject_refs(["kept"], create=False) == {"kept": ref}
    assert w.ledger.vault.read_evidence(w.ledger.current_consent(ref))
    assert w.ledger.tree_size() == before
    a.erase("kept")
    assert w.ledger.vault.is_shredded(ref)
    with pytest.raises(AppendError) as err:
        w.ledger.complete_erasure("partner-a", ref)
    assert err.value.code == "ALREADY_EXISTS"
    assert verify_ledger(ledger_url, workers=0).ok
