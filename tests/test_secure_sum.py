"""Secure jobs (distributed DP over a secure sum): the masking arithmetic, a partner's keys and reveals, the server's
unmasking and step, and a whole job on an in-process grid with the real ClientApp (no Ray; the Flower simulation
of a secure job is in test_federated_secure.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict

from client.app import make_client_app
from client.data import SyntheticPlatforms
from client.masking import mask_update, masking_key, reveal
from client.peer_keys import key_book, sign_masking_key
from client.protocol import ARRAYS, RoundConfig, arrays_to_record
from client.secure_sum import (
    SCALE_BITS,
    SecureSumError,
    decode,
    encode,
    masked,
    new_private_key,
    pair_key,
    public_hex,
    round_key,
    sum_words,
)
from consent.audit import secure_round_problems
from consent.entries import EntryError, check_body
from models.nets import ChurnLTVNet, get_weights, weight_names
from server.job import Job, JobError
from server.runner import initial_model, run_job
from server.secure_aggregation import SecureSum, SecureSumFailed
from test_federated_support import CATEGORIES, PURPOSE, FakeLedger, InProcessGrid, as_server_app, fake_ledger_for

PARTNERS = ("a", "b", "c")
N_FEATURES = 6
TOLERANCE = 3 * 2.0 ** -(SCALE_BITS + 1)  # each of 3 encodings rounds by at most half a step
BOOK = FakeLedger(tree_size=42, refs={p: {} for p in PARTNERS}, consenting={})  # the partners' ledger keys


def secure_job(**overrides) -> Job:
    settings = dict(job_id="sec-unit", purpose=PURPOSE, categories=CATEGORIES, rounds=10, min_partners=2,
                    batch_size=64, lr=0.01, tree_size=42, aggregation="secure")  # fmt: skip
    settings.update(overrides)
    return Job(**settings)


def test_pairwise_masks_cancel_in_the_sum_and_hide_each_vector():
    rng = np.random.default_rng(0)
    keys = {p: new_private_key() for p in PARTNERS}
    vectors = {p: rng.normal(0, 50, size=1000) for p in PARTNERS}
    out = {}
    for me in PARTNERS:
        rounds = {peer: round_key(pair_key(keys[me], public_hex(keys[peer]), "job", me, peer), 7)
                  for peer in PARTNERS if peer != me}  # fmt: skip
        out[me] = masked(encode(vectors[me]), me, rounds)
    total = decode(sum_words(list(out.values())))
    assert np.abs(total - sum(vectors.values())).max() <= TOLERANCE
    for me in PARTNERS:  # alone, a masked vector decodes to noise spread over the whole 64-bit range
        assert np.median(np.abs(decode(out[me]) - vectors[me])) > 1e9


def test_a_pair_derives_one_key_bound_to_its_job_and_round():
    a, b = new_private_key(), new_private_key()
    key_ab = pair_key(a, public_hex(b), "job-1", "a", "b")
    assert key_ab == pair_key(b, public_hex(a), "job-1", "b", "a")
    assert key_ab != pair_key(a, public_hex(b), "job-2", "a", "b")
    assert round_key(key_ab, 1) != round_key(key_ab, 2)
    with pytest.raises(SecureSumError, match="not a 32-byte X25519"):
        pair_key(a, "00" * 5, "job-1", "a", "b")


def test_encoding_refuses_nan_inf_and_values_beyond_its_range():
    assert np.allclose(decode(encode(np.array([-1.5, 0.0, 2.25e6]))), [-1.5, 0.0, 2.25e6])
    with pytest.raises(SecureSumError, match="NaN/Inf"):
        encode(np.array([1.0, np.nan]))
    with pytest.raises(SecureSumError, match="range"):
        encode(np.array([3e9]))


# --- a partner's keys, masks and reveals, and the server's unmasking and step --------------------------------------


def _partners_and_server(job: Job):
    states = {p: RecordDict() for p in PARTNERS}
    keys = {p: masking_key(states[p], BOOK, p, job.job_id) for p in PARTNERS}
    start = initial_model(job, N_FEATURES)
    server = SecureSum(job, keys, {p: 100 for p in PARTNERS}, start, N_FEATURES)
    return states, server, start


def _round(server: SecureSum, job: Job, server_round: int, roster=PARTNERS) -> RoundConfig:
    record = server.round_config(job.round_config(server_round).to_record(), list(roster))
    return RoundConfig.from_record(record)


def _gradients(seed: int) -> list[np.ndarray]:
    model = ChurnLTVNet(N_FEATURES, hidden=(64, 32))
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 5, size=w.shape) for w in get_weights(model)]


def _reference_step(job: Job, start: ArrayRecord, gradient_sum: list[np.ndarray], server: SecureSum):
    net = ChurnLTVNet(N_FEATURES, hidden=job.hidden)
    net.load_state_dict({k: torch.as_tensor(v.numpy()) for k, v in start.items()})
    optimizer = torch.optim.Adam(net.parameters(), lr=job.lr)  # round 1 of the cosine schedule: the full rate
    for p, g in zip(net.parameters(), gradient_sum):
        p.grad = torch.as_tensor(g / (server.plan.sample_rate * server.union_rows), dtype=p.dtype)
    optimizer.step()
    return get_weights(net)


def test_the_server_unmasks_a_round_with_a_dropout_and_steps_on_the_survivors_sum():
    job = secure_job()
    states, server, start = _partners_and_server(job)
    config = _round(server, job, 1)
    grads = {p: _gradients(i) for i, p in enumerate(PARTNERS)}
    words = {p: mask_update(grads[p], p, config, states[p], BOOK) for p in PARTNERS}
    survivors = ("a", "c")  # b's reply never arrives
    asked = []

    def ask(who, dropped):
        asked.append((tuple(who), tuple(dropped)))
        return {(s, d): bytes.fromhex(reveal(states[s], s, job.job_id, 1, dropped)[d]) for s in who for d in dropped}

    masked_records = {p: arrays_to_record(weight_names(ChurnLTVNet(N_FEATURES)), words[p]) for p in survivors}
    out = server.aggregate(1, masked_records, list(PARTNERS), ask)
    assert asked == [(survivors, ("b",))]
    expected_sum = [grads["a"][i] + grads["c"][i] for i in range(len(grads["a"]))]
    expected = _reference_step(job, start, expected_sum, server)
    assert all(np.allclose(o.numpy(), e, atol=1e-6) for o, e in zip(out.values(), expected))
    assert server.recovered == {1: ["b"]}


def _round_one_replies(senders=PARTNERS):
    """A fresh secure job's server and the masked round-1 records of ``senders`` (partner -> ArrayRecord)."""
    job = secure_job()
    states, server, _ = _partners_and_server(job)
    config = _round(server, job, 1)
    names = weight_names(ChurnLTVNet(N_FEATURES))
    records = {p: arrays_to_record(names, mask_update(_gradients(PARTNERS.index(p)), p, config, states[p], BOOK))
               for p in senders}  # fmt: skip
    return server, records


def test_without_every_survivors_reveal_the_round_cannot_be_unmasked():
    server, records = _round_one_replies(("a", "b"))
    with pytest.raises(SecureSumFailed, match=r"missing mask keys \[\('b', 'c'\)\]"):
        server.aggregate(1, records, list(PARTNERS), lambda who, dropped: {("a", "c"): b"\0" * 32})


def test_a_malformed_masked_update_stops_the_job_instead_of_stepping_on_garbage():
    server, records = _round_one_replies()
    rng = np.random.default_rng(3)
    first = next(iter(records["b"].keys()))
    garbage = rng.integers(0, 2**63, size=records["b"][first].shape, dtype=np.uint64)
    records["b"] = ArrayRecord({name: (Array(garbage) if name == first else a) for name, a in records["b"].items()})
    before = get_weights(server.net)
    with pytest.raises(SecureSumFailed, match="malformed update"):
        server.aggregate(1, records, list(PARTNERS), lambda who, dropped: {})
    assert all(np.array_equal(a, b) for a, b in zip(before, get_weights(server.net)))  # no step taken


def test_a_partner_reveals_only_the_last_rounds_keys_with_its_own_peers():
    job = secure_job()
    states, server, _ = _partners_and_server(job)
    mask_update(_gradients(0), "a", _round(server, job, 2), states["a"], BOOK)
    assert set(reveal(states["a"], "a", job.job_id, 2, ["c"])) == {"c"}
    with pytest.raises(SecureSumError, match="not the last round"):
        reveal(states["a"], "a", job.job_id, 1, ["c"])
    with pytest.raises(SecureSumError, match="not a peer"):
        reveal(states["a"], "a", job.job_id, 2, ["a"])
    with pytest.raises(SecureSumError, match="not a peer"):
        reveal(states["a"], "a", job.job_id, 2, ["z"])
    with pytest.raises(SecureSumError, match="not in this round's roster"):
        mask_update(_gradients(0), "a", _round(server, job, 3, roster=("b", "c")), states["a"], BOOK)
    with pytest.raises(SecureSumError, match="cannot carry the noise of 2 shares"):  # each adds 1/sqrt(2) of it
        mask_update(_gradients(0), "a", _round(server, job, 3, roster=("a",)), states["a"], BOOK)
    with pytest.raises(SecureSumError, match="no masking key"):
        mask_update(_gradients(0), "a", _round(server, job, 3), RecordDict(), BOOK)


class CountingBook(FakeLedger):
    """The partners' ledger keys, counting the key lookups."""

    def partner_key(self, partner_id):
        self.calls.append(partner_id)
        return super().partner_key(partner_id)


def test_a_partner_masks_only_with_keys_its_peers_signed_with_their_ledger_keys():
    job = secure_job()
    book = CountingBook(tree_size=42, refs={p: {} for p in PARTNERS}, consenting={})
    states = {p: RecordDict() for p in PARTNERS}
    honest = {p: masking_key(states[p], book, p, job.job_id) for p in PARTNERS}
    server = SecureSum(job, honest, {p: 100 for p in PARTNERS}, initial_model(job, N_FEATURES), N_FEATURES)
    for r in (1, 2):
        mask_update(_gradients(0), "a", _round(server, job, r), states["a"], book)
    assert sorted(book.calls) == ["b", "c"]  # each peer's key is looked up once in the job, not once a round

    def forged_round(c_key: str, job_id: str = job.job_id) -> RoundConfig:
        record = server.round_config(job.round_config(3).to_record(), list(PARTNERS))
        record["peer-keys"] = [honest["a"], honest["b"], c_key]
        record["job-id"] = job_id
        return RoundConfig.from_record(record)

    server_key = public_hex(new_private_key())  # what a server that wants to read c's vector would hand out
    signed_by_b = sign_masking_key(book, job.job_id, "b", server_key)  # a colluding b signs it
    other_job = masking_key(RecordDict(), book, "c", "another-job")  # c's own signature, for another job
    before = dict(states["a"]["secure-sum"])
    for c_key in (server_key, f"{server_key}.{'00' * 64}", f"{server_key}.{signed_by_b.partition('.')[2]}",
                  other_job):  # fmt: skip
        with pytest.raises(SecureSumError, match="masking key of 'c' refused: not signed by its ledger key"):
            mask_update(_gradients(0), "a", forged_round(c_key), states["a"], book)
    assert dict(states["a"]["secure-sum"]) == before  # nothing masked, nothing kept: the round-2 reveal rules hold
    stranger = FakeLedger(tree_size=42, refs={"a": {}, "b": {}}, consenting={})  # a ledger with no partner "c"
    fresh = RecordDict()
    masking_key(fresh, stranger, "a", job.job_id)
    with pytest.raises(SecureSumError, match="the ledger holds no active partner key"):
        mask_update(_gradients(0), "a", forged_round(honest["c"]), fresh, stranger)
    with pytest.raises(SecureSumError, match="cannot sign masking keys"):
        key_book(object(), "a")


def test_a_restarted_partner_keeps_its_masking_key_from_its_state_dir(tmp_path):
    job = secure_job()
    states, server, _ = _partners_and_server(job)
    state_dir = str(tmp_path / "a")
    before = masking_key(states["a"], BOOK, "a", job.job_id, state_dir)  # the key "a" gave at preflight
    assert masking_key(RecordDict(), BOOK, "a", job.job_id) != before  # without a state dir a restart makes a new one
    mask_update(_gradients(0), "a", _round(server, job, 1), states["a"], BOOK, state_dir)
    restarted = RecordDict()  # the SuperNode came back with an empty Context.state
    assert masking_key(restarted, BOOK, "a", job.job_id, state_dir) == before
    assert set(reveal(restarted, "a", job.job_id, 1, ["b"], state_dir)) == {"b"}
    key_file = tmp_path / "a" / f"{job.job_id}.secure-sum.json"
    assert key_file.stat().st_mode & 0o077 == 0  # the private key is readable by the partner's user only


def test_secure_jobs_refuse_robust_strategies_and_a_single_partner():
    with pytest.raises(JobError, match="needs strategy fedavg"):
        secure_job(strategy="krum")
    with pytest.raises(JobError, match="min_partners >= 2"):
        secure_job(min_partners=1)
    with pytest.raises(JobError, match="unknown aggregation"):
        secure_job(aggregation="homomorphic")


# --- a whole secure job on an in-process grid, with the real ClientApp ---------------------------------------------


class Recording:
    """The real ClientApp, keeping every reply it sends (what the server receives)."""

    def __init__(self, app) -> None:
        self.app, self.replies = app, []

    def __call__(self, msg: Message, context) -> Message:
        out = self.app(msg, context)
        self.replies.append((msg.metadata.message_type, out))
        return out


@pytest.fixture(scope="module")
def data():
    return SyntheticPlatforms(users_per_platform=300, seed=11)


def test_a_secure_job_trains_within_budget_and_the_server_sees_only_masked_sums(data, monkeypatch):
    as_server_app(monkeypatch)
    ledger = fake_ledger_for(data, consent_share=0.8)
    app = Recording(make_client_app(ledger=ledger, data=data))
    job = secure_job(rounds=8, batch_size=128, expected_partners=3, preflight_timeout_s=5)
    result = run_job(InProcessGrid(app, 3), job)
    assert len(result.manifests) == 8
    trains = [reply for kind, reply in app.replies if kind == "train"]
    assert len(trains) == 24
    for reply in trains:
        words = np.concatenate([a.numpy().ravel() for a in reply.content[ARRAYS].values()])
        assert words.dtype == np.uint64
        # an honest gradient sum of <= 300 rows clipped at C=20 has |value| <= 6e3 per coordinate; a masked one is
        # spread over the 64-bit range
        assert np.median(np.abs(decode(words))) > 1e9
        assert "train-loss" not in reply.content["metrics"]
    spent = result.epsilon_by_partner
    assert set(spent) == set(data.partners) and max(spent.values()) <= job.target_epsilon + 1e-6
    assert max(spent.values()) > 0.9 * job.target_epsilon  # the noise is calibrated to spend the budget, not less
    trust = result.manifests[-1].aggregation
    assert trust["mode"] == "secure" and trust["recovered"] == []
    assert math.isclose(trust["partner_noise_multiplier"] * math.sqrt(2), trust["noise_multiplier"])
    assert trust["epsilon_if_colluding"] > job.target_epsilon
    assert result.model_hash != result.manifests[0].model_in_hash
    body = result.manifests[-1].to_dict()
    check_body("round.manifest", body)  # the ledger accepts the secure manifest as it is
    assert secure_round_problems(body) == []
    short = body | {"partners": body["partners"][:1]}  # a sum of one partner's share: under-noised
    assert secure_round_problems(short) == [f"round 8 of job {job.job_id}: secure sum of 1 partner(s), but each added "
                                            "the noise share of 2"]  # fmt: skip
    inflated = body | {"aggregation": trust | {"partner_noise_multiplier": trust["noise_multiplier"]}}
    assert "do not make the total" in secure_round_problems(inflated)[0]
    with pytest.raises(EntryError, match="mode must be 'secure'"):
        check_body("round.manifest", body | {"aggregation": trust | {"mode": "plain"}})
