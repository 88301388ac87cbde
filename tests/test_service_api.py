"""ConsentLedger over real gRPC (loopback) on a real SQLite file and a real PostgreSQL database.

Partners write through PartnerDesk + LedgerClient, the auditor reads and verifies, and every bad input is refused
with its status while the tree size stays where it was.
"""

from __future__ import annotations

import json

import pytest

from consent import merkle
from consent.checkpoints import verify_checkpoint_signature
from consent.client import LedgerClient, LedgerRPCError, RemoteAppendError
from consent.eligibility import EligibleSet, eligible_root, verify_absent
from consent.entries import make_entry
from consent.keys import Identity
from consent.partner import DEFAULT_NOTICE
from consent.rules import AppendError
from consent.service import servicer as servicer_module
from consent.service.convert import EligibleCommitment
from test_service_support import CATEGORIES, PURPOSE, consent_body, decisions, forge, future_ts, running_env


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request, tmp_path_factory):
    with running_env(request.param, tmp_path_factory.mktemp(f"svc-{request.param}")) as env:
        a, b = env.desk("partner-a"), env.desk("partner-b")
        a.publish_notice(DEFAULT_NOTICE, [PURPOSE])
        a.record(decisions("a", 30) + decisions("ar", 5, given=False))
        b.record(decisions("b", 10))
        a.withdraw("a1")
        env.erased_ref = ref_of(env, "partner-a", "a2")  # the mapping is shredded by the erasure
        a.erase("a2")
        yield env


def ref_of(env, partner: str, user: str) -> str:
    return env.desk(partner).subject_refs([user], create=False)[user]


def refused(env, caller: str, call, code: str) -> LedgerRPCError:
    """Runs `call(client)` as `caller`; asserts it fails with `code` and that the log did not move."""
    auditor = env.client("auditor")
    before = auditor.tree_size()
    with pytest.raises(LedgerRPCError) as err:
        call(env.client(caller))
    assert err.value.code == code, err.value
    assert auditor.tree_size() == before
    return err.value


# ---- the happy path ------------------------------------------------------------------------------------------


def test_auditor_verifies_log_checkpoint_and_proofs(env):
    auditor, coordinator = env.client("auditor"), env.client("coordinator")
    cp = coordinator.checkpoint()
    assert verify_checkpoint_signature(cp, env.keys["operator"].public_key)
    assert auditor.latest_checkpoint().root == cp.root
    rows = auditor.entries(0, cp.tree_size)
    assert [i for i, _ in rows] == list(range(cp.tree_size))
    data = [d for _, d in rows]
    assert merkle.root_hash(data) == cp.root
    for i in (0, 1, cp.tree_size // 2, cp.tree_size - 1):
        proof = auditor.inclusion_proof(i, cp.tree_size)
        assert merkle.verify_inclusion(merkle.leaf_hash(data[i]), i, cp.tree_size, proof, cp.root)
    old = cp.tree_size // 3
    proof = auditor.consistency_proof(old, cp.tree_size)
    assert merkle.verify_consistency(old, cp.tree_size, merkle.root_hash(data[:old]), cp.root, proof)
    types = [json.loads(d)["type"] for d in data]
    assert types[0] == "key.registered" and types.count("consent.given") == 40 and types.count("consent.refused") == 5


def test_entries_are_paged(env, monkeypatch):
    monkeypatch.setattr(servicer_module, "MAX_ENTRIES_PAGE", 7)
    auditor = env.client("auditor")
    size = auditor.tree_size()
    assert [i for i, _ in auditor.entries(3, size)] == list(range(3, size))
    assert auditor.entries(size, size + 10) == []


def test_subject_history_and_current_consent(env):
    a, auditor = env.client("partner-a"), env.client("auditor")
    withdrawn = ref_of(env, "partner-a", "a1")
    assert [e["type"] for _, e in a.subject_history(withdrawn)] == ["consent.given", "consent.withdrawn"]
    assert a.current_consent(withdrawn) is None
    standing = ref_of(env, "partner-a", "a3")
    history = auditor.subject_history(standing)
    assert auditor.current_consent(standing) == history[0][1]["body"]["consent_id"]
    refused(env, "partner-b", lambda c: c.subject_history(standing), "PERMISSION_DENIED")
    refused(env, "partner-b", lambda c: c.current_consent(standing), "PERMISSION_DENIED")
    refused(env, "auditor", lambda c: c.current_consent("not-a-ref"), "INVALID_ARGUMENT")


def test_eligible_set_refs_only_for_the_partner_and_coordinator(env):
    mine = env.client("partner-a").eligible_set("partner-a", PURPOSE, CATEGORIES)
    assert isinstance(mine, EligibleSet) and mine.count == 28  # 30 given - a1 withdrawn - a2 erased
    assert mine.root == eligible_root(mine.subject_refs)
    assert ref_of(env, "partner-a", "a1") not in mine and ref_of(env, "partner-a", "a0") in mine
    coord = env.client("coordinator").eligible_set("partner-a", PURPOSE, CATEGORIES, tree_size=mine.tree_size)
    assert coord.subject_refs == mine.subject_refs
    for viewer in ("auditor", "partner-b"):
        seen = env.client(viewer).eligible_set("partner-a", PURPOSE, CATEGORIES, tree_size=mine.tree_size)
        assert isinstance(seen, EligibleCommitment)
        assert (seen.count, seen.root) == (mine.count, mine.root)


def test_eligible_refs_are_paged_and_checked(env, monkeypatch):
    monkeypatch.setattr(servicer_module, "MAX_REFS_PAGE", 4)
    whole = env.client("partner-a").eligible_set("partner-a", PURPOSE, ["behavioural"])
    assert whole.count == 28 and whole.root == eligible_root(whole.subject_refs)


def test_auditor_gets_a_non_membership_proof_for_a_withdrawn_subject(env):
    auditor = env.client("auditor")
    summary = auditor.eligible_set("partner-a", PURPOSE, CATEGORIES)
    for ref in (ref_of(env, "partner-a", "a1"), env.erased_ref, ref_of(env, "partner-a", "ar0")):
        proof = auditor.prove_absent(summary, ref)
        assert verify_absent(proof, summary.root, summary.count)
    member = ref_of(env, "partner-a", "a0")
    refused(env, "auditor", lambda c: c.prove_absent(summary, member), "FAILED_PRECONDITION")
    refused(env, "partner-b", lambda c: c.prove_absent(summary, member), "PERMISSION_DENIED")
    wrong = EligibleCommitment("partner-a", PURPOSE, tuple(CATEGORIES), summary.tree_size, 1, b"\x00" * 32)
    refused(env, "auditor", lambda c: c.prove_absent(wrong, ref_of(env, "partner-a", "a1")), "FAILED_PRECONDITION")


def test_budget_charged_by_coordinator_and_capping_eligibility(env):
    coordinator, a = env.client("coordinator"), env.client("partner-a")
    refs = [ref_of(env, "partner-a", u) for u in ("a3", "a4")]
    coordinator.charge_budget("job-1", 1, "partner-a", refs, 0.75)
    coordinator.charge_budget("job-1", 2, "partner-a", refs[:1], 0.5)
    assert a.budget_spent("partner-a", refs) == {refs[0]: 1.25, refs[1]: 0.75}
    assert env.client("auditor").budget_spent("partner-a")[refs[0]] == 1.25
    capped = a.eligible_set("partner-a", PURPOSE, CATEGORIES, lifetime_epsilon=1.0)
    assert refs[0] not in capped and refs[1] in capped and capped.count == 27
    refused(env, "partner-b", lambda c: c.budget_spent("partner-a"), "PERMISSION_DENIED")
    refused(env, "partner-a", lambda c: c.charge_budget("job-1", 3, "partner-a", refs, 0.1), "PERMISSION_DENIED")
    refused(env, "coordinator", lambda c: c.charge_budget("job-1", 3, "partner-a", refs, float("nan")),
            "INVALID_ARGUMENT")  # fmt: skip


def test_coordinator_writes_jobs_and_registers_partners(env):
    coordinator, op = env.client("coordinator"), env.keys["coordinator"]
    body = {"job_id": "job-9", "purpose": PURPOSE, "data_categories": CATEGORIES, "checkpoint": 1, "rounds": 3,
            "target_epsilon": 3.0, "delta": 1e-5}  # fmt: skip
    [index] = coordinator.append([make_entry("job.started", body, op)])
    assert index == env.client("auditor").tree_size() - 1
    newcomer = Identity.generate("partner-c", "partner")
    assert coordinator.register(newcomer) == newcomer.key_id
    with LedgerClient(env.server.address, newcomer) as c:
        assert c.tree_size() == index + 2
    refused(env, "coordinator", lambda c: c.register(Identity.generate("op2", "operator")), "PERMISSION_DENIED")
    refused(env, "coordinator", lambda c: c.register("partner-a", "partner", newcomer.public_b64), "ALREADY_EXISTS")


# ---- refusals: nothing is stored -----------------------------------------------------------------------------


def _canonical_consent(env) -> bytes:
    ref = ref_of(env, "partner-a", "a0")
    return forge("consent.given", consent_body("partner-a", ref), env.keys["partner-a"])


@pytest.mark.parametrize(
    "case, code, words",
    [
        ("malformed", "INVALID_ARGUMENT", "not UTF-8 JSON"),
        ("non_canonical", "INVALID_ARGUMENT", "not canonical"),
        ("unknown_purpose", "INVALID_ARGUMENT", "unknown purpose"),
        ("unknown_category", "INVALID_ARGUMENT", "unknown data categor"),
        ("unknown_type", "INVALID_ARGUMENT", "unknown entry type"),
        ("future_timestamp", "INVALID_ARGUMENT", "in the future"),
        ("bad_signature", "UNAUTHENTICATED", "bad signature"),
        ("other_partners_subject", "PERMISSION_DENIED", "belongs to another partner"),
        ("writing_as_other_partner", "PERMISSION_DENIED", "may only write for itself"),
        ("relaying_anothers_entry", "PERMISSION_DENIED", "may only submit its own entries"),
        ("withdraw_nonexistent", "NOT_FOUND", "to withdraw"),
        ("coordinator_writes_consent", "PERMISSION_DENIED", "may not append consent.given"),
        ("empty", "INVALID_ARGUMENT", "at least one entry"),
    ],
)
def test_bad_appends_are_refused_and_nothing_is_stored(env, case, code, words):
    keys = env.keys
    a_ref, b_ref = ref_of(env, "partner-a", "a5"), ref_of(env, "partner-b", "b0")
    caller, batch = "partner-a", None
    if case == "malformed":
        batch = [b"not json at all"]
    elif case == "non_canonical":
        batch = [json.dumps(json.loads(_canonical_consent(env)), indent=1).encode()]
    elif case == "unknown_purpose":
        batch = [forge("consent.given", consent_body("partner-a", a_ref, purposes=["resale"]), keys["partner-a"])]
    elif case == "unknown_category":
        body = consent_body("partner-a", a_ref, data_categories=["genome"])
        batch = [forge("consent.given", body, keys["partner-a"])]
    elif case == "unknown_type":
        batch = [forge("consent.sold", {"partner_id": "partner-a"}, keys["partner-a"])]
    elif case == "future_timestamp":
        batch = [forge("consent.given", consent_body("partner-a", a_ref), keys["partner-a"], ts=future_ts(10))]
    elif case == "bad_signature":
        body = consent_body("partner-a", a_ref)
        batch = [forge("consent.given", body, keys["partner-a"], sign_with=keys["partner-b"])]
    elif case == "other_partners_subject":
        caller, batch = "partner-b", [forge("consent.given", consent_body("partner-b", a_ref), keys["partner-b"])]
    elif case == "writing_as_other_partner":
        caller, batch = "partner-b", [forge("consent.given", consent_body("partner-a", b_ref), keys["partner-b"])]
    elif case == "relaying_anothers_entry":
        caller, batch = "partner-b", [_canonical_consent(env)]
    elif case == "withdraw_nonexistent":
        body = {"consent_id": "f" * 32, "partner_id": "partner-a", "subject_ref": a_ref, "indicated_at": "2026-01-01"}
        batch = [forge("consent.withdrawn", body, keys["partner-a"])]
    elif case == "coordinator_writes_consent":
        caller = "coordinator"
        batch = [forge("consent.given", consent_body("coordinator", a_ref), keys["coordinator"])]
    elif case == "empty":
        batch = []
    err = refused(env, caller, lambda c: c.append(batch), code)
    assert words in err.details, err.details
    assert isinstance(err, AppendError)


def test_replay_of_an_entry_is_refused(env):
    desk = env.desk("partner-a")
    entries = desk.consent_entries(decisions("replay", 2))
    env.client("partner-a").append(entries)
    err = refused(env, "partner-a", lambda c: c.append(entries[1:]), "ALREADY_EXISTS")
    assert "replay" in err.details


def test_one_bad_entry_fails_the_whole_batch(env):
    good = env.desk("partner-a").consent_entries(decisions("batch", 2))
    bad = forge("consent.given", consent_body("partner-a", ref_of(env, "partner-a", "a6"), purposes=["resale"]),
                env.keys["partner-a"])  # fmt: skip
    err = refused(env, "partner-a", lambda c: c.append(good + [bad]), "INVALID_ARGUMENT")
    assert isinstance(err, RemoteAppendError) and err.index == 2
    assert env.client("partner-a").append(good) == list(range(env.client("auditor").tree_size() - 2,
                                                              env.client("auditor").tree_size()))  # fmt: skip


def test_oversize_message_is_refused(env):
    blob = b"x" * (60 * 1024)
    err = refused(env, "partner-a", lambda c: c.append([blob] * 80), "RESOURCE_EXHAUSTED")  # ~4.7 MiB
    assert isinstance(err, LedgerRPCError)


def test_auditor_is_read_only(env):
    ref = ref_of(env, "partner-a", "a7")
    auditor_entry = forge("notice.published", {"partner_id": "auditor"}, env.keys["auditor"])
    refused(env, "auditor", lambda c: c.append([auditor_entry]), "PERMISSION_DENIED")
    refused(env, "auditor", lambda c: c.subject_refs("partner-a", ["0" * 64]), "PERMISSION_DENIED")
    refused(env, "auditor", lambda c: c.store_evidence("1" * 32, ref, b"e"), "PERMISSION_DENIED")
    refused(env, "auditor", lambda c: c.complete_erasure("partner-a", ref), "PERMISSION_DENIED")
    refused(env, "auditor", lambda c: c.charge_budget("j", 1, "partner-a", [ref], 0.1), "PERMISSION_DENIED")
    refused(env, "auditor", lambda c: c.checkpoint(), "PERMISSION_DENIED")
    refused(env, "auditor", lambda c: c.register(Identity.generate("x", "partner")), "PERMISSION_DENIED")


def test_partner_scoping_of_subject_calls(env):
    a_ref = ref_of(env, "partner-a", "a8")
    refused(env, "partner-b", lambda c: c.subject_refs("partner-a", ["0" * 64]), "PERMISSION_DENIED")
    refused(env, "partner-b", lambda c: c.store_evidence("2" * 32, a_ref, b"e"), "PERMISSION_DENIED")
    refused(env, "partner-b", lambda c: c.complete_erasure("partner-a", a_ref), "PERMISSION_DENIED")
    refused(env, "partner-a", lambda c: c.subject_refs("partner-a", ["user-42@example.com"]), "INVALID_ARGUMENT")
    refused(env, "partner-a", lambda c: c.checkpoint(), "PERMISSION_DENIED")


def test_erasure_needs_a_request_first_and_shreds_nothing_otherwise(env):
    ref = ref_of(env, "partner-a", "a9")
    refused(env, "partner-a", lambda c: c.complete_erasure("partner-a", ref), "FAILED_PRECONDITION")
    assert ref_of(env, "partner-a", "a9") == ref  # the mapping survived
    erased = ref_of(env, "partner-a", "a4")
    env.desk("partner-a").erase("a4")
    assert env.desk("partner-a").subject_refs(["a4"], create=False) == {}
    refused(env, "partner-a", lambda c: c.complete_erasure("partner-a", erased), "ALREADY_EXISTS")
    refused(env, "partner-a", lambda c: c.store_evidence("3" * 32, erased, b"e"), "FAILED_PRECONDITION")
