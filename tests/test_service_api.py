"""ConsentLedger over real gRPC (loopback) on a real SQLite file and a real PostgreSQL database.

Partners write through PartnerDesk + LedgerClient, the auditor reads and verifies, and every bad input is refused
with its status while the tree size stays where it was.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

import grpc

from consent import merkle
from consent.canonical import canonical_bytes
from consent.checkpoints import sign_checkpoint, verify_checkpoint_signature
from consent.client import LedgerClient, LedgerRPCError, RemoteAppendError
from consent.eligibility import EligibleSet, eligible_root, verify_absent
from consent.entries import make_entry
from consent.keys import Identity
from consent.rules import AppendError
from consent.service import servicer as servicer_module
from consent.service.auth import SERVICE_PREFIX, sign_request
from consent.store import tables as store_tables
from consent.service.convert import EligibleCommitment
from protos import ledger_pb2 as pb
from protos import ledger_pb2_grpc
from test_service_support import CATEGORIES, PURPOSE, consent_body, decisions, forge, future_ts, running_env


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request, tmp_path_factory):
    with running_env(request.param, tmp_path_factory.mktemp(f"svc-{request.param}")) as env:
        a, b = env.desk("partner-a"), env.desk("partner-b")  # running_env has published both partners' notices
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


def test_coordinator_writes_jobs_and_registers_auditors_only(env):
    coordinator, op = env.client("coordinator"), env.keys["coordinator"]
    body = {"job_id": "job-9", "purpose": PURPOSE, "data_categories": CATEGORIES,
            "checkpoint": {"tree_size": 1, "root": ""}, "rounds": 3, "target_epsilon": 3.0, "delta": 1e-5}  # fmt: skip
    [index] = coordinator.append([make_entry("job.started", body, op)])
    assert index == env.client("auditor").tree_size() - 1
    reader = Identity.generate("auditor-2", "auditor")
    assert coordinator.register(reader) == reader.key_id
    with LedgerClient(env.server.address, reader) as c:
        assert c.tree_size() == index + 2
    newcomer = Identity.generate("partner-c", "partner")
    err = refused(env, "coordinator", lambda c: c.register(newcomer), "PERMISSION_DENIED")
    assert "a coordinator registers auditor keys only; partner identities such as 'partner-c' are registered by " \
           "the operator" in err.details  # fmt: skip
    refused(env, "coordinator", lambda c: c.register(Identity.generate("op2", "operator")), "PERMISSION_DENIED")
    assert env.server.ledger.store.key(newcomer.key_id) is None
    assert env.client("operator").register(newcomer) == newcomer.key_id  # the operator registers partners


def test_coordinator_appends_manifests_and_rewards_that_the_auditor_can_prove(env):
    """The entries later issues write over gRPC: a round manifest and a reward, exactly as the coordinator builds
    them; a partner may write neither, and the auditor gets an inclusion proof for each."""
    from test_ledger_store import _coordinator_bodies

    coordinator, op = env.client("coordinator"), env.keys["coordinator"]
    bodies = _coordinator_bodies()
    indices = coordinator.append([make_entry(t, bodies[t], op) for t in ("round.manifest", "reward.issued")])
    err = refused(env, "partner-a", lambda c: c.append([make_entry("reward.issued", bodies["reward.issued"],
                                                                     env.keys["partner-a"])]), "PERMISSION_DENIED")  # fmt: skip
    assert "reward.issued" in err.details
    coordinator.checkpoint()  # the operator signs the log with both entries in it
    auditor = env.client("auditor")
    cp = auditor.latest_checkpoint()
    assert cp.tree_size > max(indices)
    for index in indices:
        [(_, data)] = auditor.entries(index, index + 1)
        assert json.loads(data)["type"] in ("round.manifest", "reward.issued")
        proof = auditor.inclusion_proof(index, cp.tree_size)
        assert merkle.verify_inclusion(merkle.leaf_hash(data), index, cp.tree_size, proof, cp.root)


def test_coordinator_cannot_impersonate_a_partner(env):
    """The audit's attack: the coordinator registers a fresh key as "partner-a" and signs partner-a's consents."""
    store = env.server.ledger.store
    impostor = Identity.generate("partner-a", "partner")
    err = refused(env, "coordinator", lambda c: c.register(impostor), "PERMISSION_DENIED")
    assert "partner identities such as 'partner-a' are registered by the operator" in err.details
    # not under another role either: the name is taken
    as_auditor = Identity.generate("partner-a", "auditor")
    err = refused(env, "coordinator", lambda c: c.register(as_auditor), "ALREADY_EXISTS")
    assert f"identity 'partner-a' already holds key {env.keys['partner-a'].key_id} (role partner)" in err.details
    # and not even the operator gives an existing identity a second key: that takes key.rotated
    err = refused(env, "operator", lambda c: c.register(impostor), "ALREADY_EXISTS")
    assert "already holds key" in err.details and "needs key.rotated" in err.details
    assert store.key(impostor.key_id) is None and store.key(as_auditor.key_id) is None
    assert [k.key_id for k in store.keys_of("partner-a")] == [env.keys["partner-a"].key_id]
    # so whatever the impostor signs is refused, as a call and as an entry
    with LedgerClient(env.server.address, impostor) as c:
        with pytest.raises(LedgerRPCError) as call:
            c.tree_size()
    assert call.value.code == "UNAUTHENTICATED" and "unknown key id" in call.value.details
    forged = forge("consent.withdrawn", {"consent_id": "e" * 32, "partner_id": "partner-a",
                                         "subject_ref": ref_of(env, "partner-a", "a3"),
                                         "indicated_at": "2026-01-01"}, impostor)  # fmt: skip
    err = refused(env, "operator", lambda c: c.append([forged]), "UNAUTHENTICATED")
    assert "unknown key id" in err.details
    assert env.client("partner-a").current_consent(ref_of(env, "partner-a", "a3")) is not None


def test_a_partner_rotates_its_own_key(env):
    operator = env.client("operator")
    old = Identity.generate("partner-r", "partner")
    operator.register(old)
    new = Identity.generate("partner-r", "partner")
    body = {"identity": "partner-r", "role": "partner", "key_id": new.key_id, "public_key": new.public_b64,
            "replaces": old.key_id}  # fmt: skip
    with LedgerClient(env.server.address, old) as c:
        escalate = make_entry("key.rotated", dict(body, role="coordinator"), old)
        with pytest.raises(LedgerRPCError) as err:
            c.append([escalate])
        assert err.value.code == "PERMISSION_DENIED" and "keeps the role" in err.value.details
        [index] = c.append([make_entry("key.rotated", body, old)])
        with pytest.raises(LedgerRPCError) as err:
            c.tree_size()
        assert err.value.code == "UNAUTHENTICATED" and "rotated out" in err.value.details
    with LedgerClient(env.server.address, new) as c:
        assert c.tree_size() == index + 1
        assert env.client("partner-b").active_key("partner-r").key_id == new.key_id  # peers check the new key now
        other = make_entry("key.rotated", {"identity": "partner-a", "role": "partner", "key_id": old.key_id,
                                           "public_key": old.public_b64, "replaces": env.keys["partner-a"].key_id},
                           new)  # fmt: skip
        with pytest.raises(LedgerRPCError) as err:
            c.append([other])
        assert err.value.code == "PERMISSION_DENIED"


def test_every_role_looks_up_a_partners_active_key(env):
    """GetKey: how a partner checks the masking keys its peers signed in a secure job (client.peer_keys)."""
    for caller in ("partner-b", "auditor", "coordinator"):
        key = env.client(caller).active_key("partner-a")
        assert (key.identity, key.role) == ("partner-a", "partner")
        assert (key.key_id, key.public_key) == (env.keys["partner-a"].key_id, env.keys["partner-a"].public_b64)
    assert env.client("partner-a").active_key("coordinator").role == "coordinator"
    assert env.client("partner-a").active_key("nobody") is None
    refused(env, "partner-a", lambda c: c.active_key("not a name!"), "INVALID_ARGUMENT")


def test_a_supernodes_link_looks_up_a_peers_key_before_asking_anything_else(env, tmp_path):
    """A SuperNode's keys dir holds its own partner key only; its first question may be a peer's masking-key owner."""
    import shutil

    from client.consent_link import PartnerClients, open_link

    own = tmp_path / "node-keys"
    own.mkdir()
    for suffix in (".key", ".pub"):
        shutil.copy(env.keys_dir / f"partner-b{suffix}", own)
    (own / "partner-b.hmac").write_text("00" * 32)
    link = open_link(f"py:client.consent_link:open_link?grpc={env.server.address}&keys={own}")
    assert link.partner_key("partner-a") == env.keys["partner-a"].public_b64
    assert link.partner_key("coordinator") is None  # not a partner's key
    assert list(link.reader._clients) == ["partner-b"]
    (tmp_path / "public-only").mkdir()
    shutil.copy(env.keys_dir / "partner-a.pub", tmp_path / "public-only")
    with pytest.raises(LookupError, match="no partner key in .*public-only"):
        PartnerClients(env.server.address, str(tmp_path / "public-only")).active_key("partner-a")


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
        ("no_sig", "INVALID_ARGUMENT", "entry fields wrong: missing ['sig']"),
        ("empty_sig", "INVALID_ARGUMENT", "entry field 'sig' must be a non-empty string"),
        ("over_64_kib", "INVALID_ARGUMENT", "bytes; the limit is 65536"),
        ("unpublished_notice", "NOT_FOUND", "was never published by 'partner-a'"),
        ("manifest_with_free_field", "INVALID_ARGUMENT", "unexpected field(s) ['user_email']"),
        ("manifest_outside_vocabulary", "INVALID_ARGUMENT", "unknown purpose(s) ['selling_data']"),
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
    elif case in ("no_sig", "empty_sig"):
        fields = json.loads(_canonical_consent(env))
        if case == "no_sig":
            del fields["sig"]
        else:
            fields["sig"] = ""
        batch = [canonical_bytes(fields)]
    elif case == "over_64_kib":
        body = consent_body("partner-a", a_ref, recipients=[f"r{i:05d}-{'x' * 50}" for i in range(1200)])
        batch = [forge("consent.given", body, keys["partner-a"])]
        assert 64 * 1024 < len(batch[0]) < 1024 * 1024
    elif case == "unpublished_notice":
        body = consent_body("partner-a", a_ref, notice={"id": "never-shown", "version": "1", "sha256": "0" * 64})
        batch = [forge("consent.given", body, keys["partner-a"])]
    elif case.startswith("manifest"):
        caller = "coordinator"
        body = {"job_id": "job-m", "round": 1, "tree_size": 5, "purpose": PURPOSE, "categories": CATEGORIES,
                "partners": [], "model_out_hash": "0" * 64}  # fmt: skip
        if case == "manifest_with_free_field":
            body["user_email"] = "alice@example.com"
        else:
            body.update(purpose="selling_data", categories=["genome"])
        batch = [forge("round.manifest", body, keys["coordinator"])]
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


def test_unsigned_appends_are_unauthenticated_and_store_nothing(env):
    entry = env.desk("partner-a").consent_entries(decisions("unsigned", 1))[0]
    before = env.client("auditor").tree_size()
    with grpc.insecure_channel(env.server.address) as channel:
        stub = ledger_pb2_grpc.ConsentLedgerStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Append(pb.AppendRequest(entries=[entry.data]), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "unsigned request" in err.value.details()
        # signed, but for other bytes than those sent
        raw = pb.AppendRequest(entries=[entry.data]).SerializeToString()
        metadata = sign_request(env.keys["partner-a"], SERVICE_PREFIX + "Append", raw + b"\x00")
        call = channel.unary_unary(SERVICE_PREFIX + "Append", request_serializer=None,
                                   response_deserializer=pb.AppendResponse.FromString)  # fmt: skip
        with pytest.raises(grpc.RpcError) as err:
            call(raw, metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "bad request signature" in err.value.details()
    assert env.client("auditor").tree_size() == before


def test_a_corrupt_protobuf_body_is_refused(env):
    """Correctly signed raw bytes that are not an AppendRequest: INVALID_ARGUMENT, and nothing stored."""
    method = SERVICE_PREFIX + "Append"
    before = env.client("auditor").tree_size()
    with grpc.insecure_channel(env.server.address) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=pb.AppendResponse.FromString)
        for raw in (b"\x0a\xff\xff\xff\xff\x0f", b"\xff" * 16, b"\x0a\x05ab"):  # bad length, bad tags, truncated
            metadata = sign_request(env.keys["partner-a"], method, raw)
            with pytest.raises(grpc.RpcError) as err:
                call(raw, metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raw
            assert "request is not a valid protobuf message" in err.value.details()
    assert env.client("auditor").tree_size() == before


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_eligibility_day_defaults_to_the_checkpoint_over_grpc_too(tmp_path, kind):
    """Same tree size, same set, whatever the day: the default day is the checkpoint's (UTC), as in-process."""
    from consent.ledger import LedgerReader

    with running_env(kind, tmp_path) as env:
        desk = env.desk("partner-a")
        desk.record([dict(d, valid_until="2021-01-01") for d in decisions("lapsing", 2)] + decisions("lasting", 3))
        coordinator = env.client("coordinator")
        size = coordinator.tree_size()
        store = env.server.ledger.store
        cp = sign_checkpoint(env.keys["operator"], store.origin, size, store.root(size), ts="2020-06-01T08:00:00Z")
        with store.engine.begin() as conn:
            conn.execute(store_tables.checkpoints.insert().values(tree_size=size, body=cp.body, key_id=cp.key_id,
                                                                  signature=cp.signature))  # fmt: skip
        remote = coordinator.eligible_set("partner-a", PURPOSE, CATEGORIES, tree_size=size)
        assert remote.day == "2020-06-01" and remote.count == 5
        reader = LedgerReader.open_readonly(env.url)
        try:
            local = reader.eligible_set("partner-a", PURPOSE, CATEGORIES, tree_size=size)
            assert (local.root, local.count) == (remote.root, remote.count)
        finally:
            reader.close()
        explicit = coordinator.eligible_set("partner-a", PURPOSE, CATEGORIES, tree_size=size, day="2022-01-01")
        assert explicit.day == "2022-01-01" and explicit.count == 3
        desk.record(decisions("later", 1))  # a size with no checkpoint: UTC today, when both lapsed
        latest = coordinator.eligible_set("partner-a", PURPOSE, CATEGORIES)
        assert latest.day == dt.datetime.now(dt.timezone.utc).date().isoformat() and latest.count == 4
