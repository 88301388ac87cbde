"""The fast append path: signatures checked in worker processes, plain-DBAPI inserts, the cached Merkle frontier.

Every refusal must be exactly what entry-by-entry checking in this process gives (same code, index and message),
and nothing may be stored."""

from __future__ import annotations

import base64

import pytest

from consent import merkle, sigcheck
from consent.canonical import canonical_bytes
from consent.entries import SignedEntry, make_entry, now_iso, signed_message
from consent.keys import Identity
from consent.rules import AppendError, KeyRecord
from consent.store.log import LedgerStore
from consent.verify import verify_ledger
from tests.ledger_helpers import consent, make_world

N = 80  # above LedgerStore.parallel_verify_min


def _resign(fields: dict, signer: Identity) -> bytes:
    unsigned = {k: v for k, v in fields.items() if k != "sig"}
    return canonical_bytes(dict(unsigned, sig=base64.b64encode(signer.sign(canonical_bytes(unsigned))).decode()))


def _unchecked_entry(entry_type: str, body: dict, signer: Identity) -> SignedEntry:
    """A signed entry as make_entry builds it, minus the body rules."""
    import os

    unsigned = {"v": 1, "type": entry_type, "signer": signer.name, "key_id": signer.key_id, "ts": now_iso(),
                "nonce": os.urandom(12).hex(), "body": body}  # fmt: skip
    fields = dict(unsigned, sig=base64.b64encode(signer.sign(canonical_bytes(unsigned))).decode())
    return SignedEntry(data=canonical_bytes(fields), fields=fields)


def _with(entry, **changes) -> bytes:
    """The entry's bytes with fields changed but the old signature kept (so the signature no longer verifies)."""
    return canonical_bytes(dict(entry.fields, **changes))


def _outcome(store: LedgerStore, batch) -> tuple:
    before = store.tree_size()
    try:
        store.append(batch)
    except AppendError as exc:
        assert store.tree_size() == before, "a refused batch must store nothing"
        return exc.code, exc.index, str(exc)
    return ("ok",)


def _both_ways(store: LedgerStore, batch) -> tuple:
    """The refusal with signatures checked in this process, then with the workers (all of them, or most with the
    tail of the batch verified here); they must agree."""
    store.parallel_verify_min = 10**9
    sequential = _outcome(store, batch)
    store.parallel_verify_min = LedgerStore.parallel_verify_min
    for share in (0.0, 0.5):
        store._inline_share = share
        assert _outcome(store, batch) == sequential
    return sequential


@pytest.fixture
def world(ledger_url):
    w = make_world(ledger_url)
    w.partners["partner-a"].record([consent("warm-up")])  # caches partner-a's key: later batches use the workers
    return w


def test_large_batches_use_the_workers_and_verify(world, ledger_url, monkeypatch):
    a = world.partners["partner-a"]
    from consent.store import log

    in_process = []
    original, inline = KeyRecord.verify, log._inline_verdict
    monkeypatch.setattr(KeyRecord, "verify", lambda self, sig, msg: in_process.append(1) or original(self, sig, msg))
    monkeypatch.setattr(log, "_inline_verdict", lambda entry, key: in_process.append(1) or inline(entry, key))
    for size in (N, 300, 33):
        world.ledger.store._inline_share = 0.0
        world.ledger.append(a.consent_entries([consent(f"u{size}-{i}") for i in range(size)]))
    assert in_process == [], "large batches signed by known keys should be verified by the workers"
    world.ledger.store._inline_share = 0.25  # a quarter of the batch is kept back and verified in-process
    world.ledger.append(a.consent_entries([consent(f"w{i}") for i in range(100)]))
    assert 0 < len(in_process) <= 25
    cp = world.ledger.checkpoint()
    leaves = [d for _, d in world.ledger.entries(0, cp.tree_size)]
    assert merkle.root_hash(leaves) == cp.root
    assert verify_ledger(ledger_url, workers=0).ok


def test_refusals_match_sequential_checking(world):
    store = world.ledger.store
    a, b = world.partners["partner-a"], world.partners["partner-b"]
    good = a.consent_entries([consent(f"g{i}") for i in range(N)])
    datas = [e.data for e in good]

    def batch(**at):
        out = list(datas)
        for pos, data in at.items():
            out[int(pos[1:])] = data
        return out

    bad_sig = lambda e: _with(e, nonce="00" * 12)  # noqa: E731
    # a bad signature, then a semantic error further on: the signature wins
    dup = _resign(dict(good[60].fields, body=dict(good[60].body, consent_id=good[1].body["consent_id"])), a.identity)
    assert _both_ways(store, batch(p10=bad_sig(good[10]), p60=dup))[:2] == ("UNAUTHENTICATED", 10)
    # a semantic error, then a bad signature further on: the semantic error wins
    assert _both_ways(store, batch(p20=dup, p50=bad_sig(good[50])))[:2] == ("ALREADY_EXISTS", 20)
    # a bad signature on an entry that also breaks the partner scope: the signature is checked first
    foreign = _with(good[30], signer="partner-b", key_id=b.identity.key_id)
    assert _both_ways(store, batch(p30=foreign))[:2] == ("UNAUTHENTICATED", 30)
    # a signature that is not base64
    assert "not base64" in _both_ways(store, batch(p40=_with(good[40], sig="!!notbase64!!")))[2]
    # an unknown key comes before the signature check
    stranger = Identity.generate("partner-a", "partner")
    unknown = _resign(dict(good[5].fields, key_id=stranger.key_id), stranger)
    assert _both_ways(store, batch(p5=unknown, p3=bad_sig(good[3])))[:2] == ("UNAUTHENTICATED", 3)
    assert _both_ways(store, batch(p5=unknown, p7=bad_sig(good[7])))[2].endswith(f"unknown key id {stranger.key_id!r}")
    # a replay inside the batch
    assert _both_ways(store, batch(p70=datas[69]))[:2] == ("ALREADY_EXISTS", 70)
    # a malformed entry anywhere beats every rule; of several, the first (parsed by a worker or here) is named
    assert _both_ways(store, batch(p2=bad_sig(good[2]), p79=b"{not json"))[:2] == ("INVALID_ARGUMENT", 79)
    spaced = good[12].data.replace(b'"v":1}', b'"v": 1}')
    assert "canonical" in _both_ways(store, batch(p12=spaced, p30=b"[1]", p75=b"{not json"))[2]
    assert _both_ways(store, batch(p45=b"[1]", p75=b"{not json"))[:2] == ("INVALID_ARGUMENT", 45)
    assert _both_ways(store, batch(p3=dup, p77=_with(good[77], ts="2999-01-01T00:00:00.000000Z")))[:2] == (
        "INVALID_ARGUMENT", 77)  # fmt: skip
    # and after all that the good batch goes in whole
    assert _outcome(store, datas) == ("ok",)


def test_keys_registered_in_the_same_batch_are_verified_in_process(world, ledger_url):
    newcomer = Identity.generate("partner-c", "partner")
    reg = make_entry("key.registered", {"identity": "partner-c", "role": "partner", "key_id": newcomer.key_id,
                                        "public_key": newcomer.public_b64}, world.operator)  # fmt: skip
    from consent.partner import DEFAULT_NOTICE, PartnerDesk

    class Quiet:  # a desk that builds entries without appending them
        def __init__(self, ledger):
            self._l = ledger

        def __getattr__(self, name):
            return getattr(self._l, name)

    c = PartnerDesk(newcomer, b"c" * 16, Quiet(world.ledger))
    a = world.partners["partner-a"]
    notice = make_entry("notice.published", {"partner_id": "partner-c", "notice_id": DEFAULT_NOTICE.notice_id,
                                             "version": DEFAULT_NOTICE.version, "sha256": DEFAULT_NOTICE.sha256,
                                             "purposes": ["churn_ltv_modelling"]}, newcomer)  # fmt: skip
    batch = [reg, notice] + c.consent_entries([consent(f"c{i}") for i in range(N)]) + a.consent_entries([consent("z")])
    world.ledger.append(batch)
    # and a bad signature by the newcomer in a later batch is still caught, by the workers this time
    later = c.consent_entries([consent(f"d{i}") for i in range(N)])
    tampered = [e.data for e in later]
    tampered[44] = _with(later[44], nonce="11" * 12)
    assert _both_ways(world.ledger.store, tampered)[:2] == ("UNAUTHENTICATED", 44)
    world.ledger.checkpoint()
    assert verify_ledger(ledger_url, workers=0).ok


def test_two_stores_on_one_log_keep_the_tree_right(world, ledger_url):
    """The in-memory Merkle frontier must not be used once another writer has moved the log."""
    other = LedgerStore.open(ledger_url)
    a = world.partners["partner-a"]
    try:
        for round_no, size in enumerate((5, 40, 1, 77, 3)):
            store = world.ledger.store if round_no % 2 == 0 else other
            store.append(a.consent_entries([consent(f"r{round_no}-{i}") for i in range(size)]))
        size = world.ledger.tree_size()
        leaves = [d for _, d in world.ledger.entries(0, size)]
        assert world.ledger.store.root() == other.root() == merkle.root_hash(leaves)
        for index in (0, size // 2, size - 1):
            proof = other.inclusion_proof(index, size)
            root = merkle.root_hash(leaves)
            assert merkle.verify_inclusion(merkle.leaf_hash(leaves[index]), index, size, proof, root)
    finally:
        other.close()
    world.ledger.checkpoint()
    assert verify_ledger(ledger_url, workers=0).ok


def test_split_signature_matches_the_canonical_signed_message(operator):
    nested = {"job_id": "j", "purpose": "analytics", "data_categories": ["basic"], "checkpoint": {"sig": "x", "a": 1},
              "rounds": [{"key_id": "zz", "sig": "y"}], "target_epsilon": 1.0, "delta": 1e-5}  # fmt: skip
    key_body = {"identity": "i", "role": "auditor", "key_id": "k" * 32, "public_key": operator.public_b64,
                "note": ',"sig":"'}  # fmt: skip
    # Built without make_entry's body rules (which now refuse these bodies): the split must hold for any bytes.
    entries = [_unchecked_entry("job.started", nested, operator),
               _unchecked_entry("key.registered", key_body, operator)]
    for e in entries:
        kid, sig, message = sigcheck.split_signature(e.data)
        assert kid == e.key_id and sig.decode() == e.fields["sig"] and message == signed_message(e)
    status, used = sigcheck.check_chunk([e.data for e in entries], {operator.key_id: operator.public_b64})
    assert list(status) == [sigcheck.OK, sigcheck.OK] and used == [operator.key_id] * 2
    bad = _with(entries[0], nonce="ab" * 12)
    assert sigcheck.check_chunk([bad], {operator.key_id: operator.public_b64})[0] == bytes([sigcheck.BAD_SIGNATURE])
    assert sigcheck.check_chunk([bad], {})[0] == bytes([sigcheck.UNCHECKED])


def test_parallel_verify_reports_exactly_what_in_process_verify_does(world, ledger_url, monkeypatch):
    from sqlalchemy import text

    from consent import verify
    from consent.store.engine import open_engine

    a = world.partners["partner-a"]
    a.record([consent(f"v{i}") for i in range(60)])
    world.ledger.checkpoint()
    monkeypatch.setattr(verify, "PARALLEL_FROM", 0)
    monkeypatch.setattr(verify, "CHUNK", 7)  # many chunks: some done by the workers, some taken back
    clean_serial, clean_parallel = verify_ledger(ledger_url, workers=0), verify_ledger(ledger_url, workers=2)
    assert clean_serial.ok and clean_parallel.ok
    assert clean_parallel.signatures_checked == clean_serial.signatures_checked == clean_serial.entries_checked
    store = world.ledger.store
    engine = open_engine(ledger_url, migrate=False)
    with engine.begin() as conn:
        signature = bytearray(store.entry(20))
        pos = signature.index(b'"sig":"') + 10
        signature[pos] = ord("A") if signature[pos] != ord("A") else ord("B")
        spaced = store.entry(30).replace(b'"v":1}', b'"v": 1}')  # not canonical any more
        backslash = store.entry(40).replace(b'"sig":"', b'"sig":"\\\\')  # parses, cannot be cut
        for idx, data in ((20, bytes(signature)), (30, spaced), (40, backslash)):
            conn.execute(text("UPDATE entries SET data = :d WHERE idx = :i"), {"d": data, "i": idx})
        conn.execute(text("DELETE FROM consent_events WHERE idx = 50"))
    engine.dispose()
    serial, parallel = verify_ledger(ledger_url, workers=0), verify_ledger(ledger_url, workers=2)
    assert not serial.ok
    assert parallel.problems == serial.problems
    assert parallel.signatures_checked == serial.signatures_checked
    assert parallel.entries_checked == serial.entries_checked
    assert {p[0] for p in serial.problems} == {20, 30, 40, None}
    assert any("signature does not verify" in reason for i, reason in serial.problems if i == 40)


def test_fast_signature_check_gives_cryptographys_verdict():
    """sigcheck.PublicKey may take a libsodium shortcut for valid signatures; its verdict must be OpenSSL's."""
    import os

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    L = 2**252 + 27742317777372353535851937790883648493

    def reference(pub, sig, msg):
        try:
            pub.verify(sig, msg)
            return True
        except InvalidSignature:
            return False

    cases = []
    for _ in range(50):
        key = Ed25519PrivateKey.generate()
        msg = os.urandom(int.from_bytes(os.urandom(1), "big") * 4)
        sig = key.sign(msg)
        pub = key.public_key()
        s = int.from_bytes(sig[32:], "little")
        cases += [
            (pub, sig, msg),
            (pub, sig, msg + b"x"),
            (pub, bytes([sig[0] ^ 1]) + sig[1:], msg),
            (pub, sig[:32] + (s + L).to_bytes(32, "little"), msg),  # the same S, not reduced: must be refused
            (pub, sig[:63], msg),
            (pub, sig + b"\0", msg),
        ]
    small_order = Ed25519PublicKey.from_public_bytes(b"\x01" + b"\x00" * 31)  # the identity point
    cases += [(small_order, b"\x01" + b"\x00" * 63, b"anything"), (small_order, bytes(64), b"")]
    for pub, sig, msg in cases:
        assert sigcheck.PublicKey(pub).verify(sig, msg) == reference(pub, sig, msg)
