"""The ledger store on SQLite and PostgreSQL: appends, proofs, refusals, tampering, erasure, eligibility."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import text

from consent import merkle
from consent.canonical import canonical_bytes
from consent.eligibility import prove_absent, verify_absent
from consent.entries import make_entry
from consent.keys import Identity
from consent.rules import AppendError
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


def test_tamper_that_also_rewrites_the_leaf_hash_is_caught_by_signature_and_checkpoint(tmp_path):
    url = str(tmp_path / "l.db")
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


def test_consent_index_tampering_is_detected(tmp_path):
    url = str(tmp_path / "l.db")
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


def test_eligibility_is_purpose_and_category_scoped_and_checkpointed(tmp_path):
    w = make_world(str(tmp_path / "l.db"))
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


def test_non_membership_proof_for_a_withdrawn_subject(tmp_path):
    w = make_world(str(tmp_path / "l.db"))
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


def test_privacy_budget_caps_eligibility(tmp_path):
    w = make_world(str(tmp_path / "l.db"))
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


def test_cli_verify_exit_codes(tmp_path):
    from typer.testing import CliRunner

    from cohort.cli import app

    url = str(tmp_path / "l.db")
    w = make_world(url)
    w.partners["partner-a"].record([consent("u1"), consent("u2")])
    w.ledger.checkpoint()
    runner = CliRunner()
    ok = runner.invoke(app, ["ledger", "verify", "--db", url, "--workers", "0"])
    assert ok.exit_code == 0 and "OK" in ok.output
    data = w.ledger.store.entry(5).replace(b'"CN"', b'"DE"')
    _tamper(url, "UPDATE entries SET data = :d WHERE idx = 5", {"d": data})
    bad = runner.invoke(app, ["ledger", "verify", "--db", url, "--workers", "2"])
    assert bad.exit_code == 1 and "entry 5" in bad.output
