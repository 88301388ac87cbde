"""Secure jobs (distributed DP over a secure sum): the masking arithmetic, a partner's keys and reveals, the server's
unmasking and step, and a whole job on an in-process grid with the real ClientApp (no Ray; the Flower simulation
of a secure job is in test_federated_secure.py)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from client.app import make_client_app
from client.data import SyntheticPlatforms
from client.masking import mask_update, masking_key, reveal
from client.peer_keys import key_book, sign_masking_key
from client.manifest import ManifestPart
from client.protocol import ARRAYS, MANIFEST, SEALED, RoundConfig, arrays_to_record
from client.secure_sum import (
    SCALE_BITS,
    SecureSumError,
    decode,
    encode,
    join_seed,
    masked,
    new_private_key,
    new_seed,
    open_share,
    pair_key,
    public_hex,
    remove_masks,
    round_key,
    seal_share,
    split_seed,
    sum_words,
)
from consent.audit import secure_round_problems
from consent.entries import EntryError, check_body
from models.nets import ChurnLTVNet, get_weights, weight_names
from server.job import Job, JobError
from server.runner import initial_model, run_job
from server.screening import screen_train_replies, shapes_of
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


def test_self_masks_hide_a_vector_whose_pair_masks_are_all_known_and_come_off_with_the_seed():
    rng = np.random.default_rng(1)
    keys = {p: new_private_key() for p in PARTNERS}
    vectors = {p: rng.normal(0, 50, size=1000) for p in PARTNERS}
    seeds = {p: new_seed() for p in PARTNERS}
    rounds = {me: {peer: round_key(pair_key(keys[me], public_hex(keys[peer]), "job", me, peer), 3)
                   for peer in PARTNERS if peer != me} for me in PARTNERS}  # fmt: skip
    out = {me: masked(encode(vectors[me]), me, rounds[me], seeds[me]) for me in PARTNERS}
    total = sum_words(list(out.values()))
    assert np.median(np.abs(decode(total) - sum(vectors.values()))) > 1e9  # the self masks do not cancel
    assert np.abs(decode(remove_masks(total, {}, list(seeds.values()))) - sum(vectors.values())).max() <= TOLERANCE
    # b's vector with both of its pair masks taken off (a server that got a's and c's round keys with b) is still
    # hidden by b's self mask, and only b's seed uncovers it
    pair_masks_off = remove_masks(out["b"], {("b", "a"): rounds["a"]["b"], ("b", "c"): rounds["c"]["b"]})
    assert np.median(np.abs(decode(pair_masks_off) - vectors["b"])) > 1e9
    assert np.abs(decode(remove_masks(pair_masks_off, {}, [seeds["b"]])) - vectors["b"]).max() <= 2.0 ** -SCALE_BITS


def test_seed_shares_rebuild_a_seed_from_the_threshold_only_and_open_only_for_their_recipient():
    seed = new_seed()
    shares = split_seed(seed, ["b", "c", "d"], threshold=2)
    assert join_seed([shares["b"], shares["d"]], 2, "a") == seed
    assert join_seed(list(shares.values()), 2, "a") == seed
    with pytest.raises(SecureSumError, match="1 share"):
        join_seed([shares["c"]], 2, "a")
    assert join_seed([split_seed(seed, ["b", "c"], threshold=1)["c"]], 1, "a") == seed  # threshold 1: a copy
    a, b = new_private_key(), new_private_key()
    key = pair_key(a, public_hex(b), "job", "a", "b")
    box = seal_share(key, "job", 4, "a", "b", shares["b"])
    assert open_share(pair_key(b, public_hex(a), "job", "b", "a"), "job", 4, "a", "b", box) == shares["b"]
    tampered = bytes([box[0] ^ 1]) + box[1:]
    for args in (("job", 4, "a", "b", tampered), ("job", 5, "a", "b", box), ("other", 4, "a", "b", box),
                 ("job", 4, "b", "a", box)):  # fmt: skip
        with pytest.raises(SecureSumError, match="does not open"):
            open_share(key, *args)


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


def _revealed(states, job_id: str, server_round: int, who, dropped, sealed_for):
    """What the strategy collects over ``query.reveal``: each survivor's round keys and opened seed shares."""
    keys, shares = {}, {}
    for s in who:
        k, sh = reveal(states[s], s, job_id, server_round, dropped, sealed_for[s])
        keys.update({(s, d): bytes.fromhex(v) for d, v in k.items()})
        shares.update({(s, owner): bytes.fromhex(v) for owner, v in sh.items()})
    return keys, shares


def _masked_round(job: Job, server_round: int = 1, senders=PARTNERS):
    """A fresh secure job's states and server, and the masked updates of ``senders`` in one round."""
    states, server, start = _partners_and_server(job)
    config = _round(server, job, server_round)
    grads = {p: _gradients(PARTNERS.index(p)) for p in PARTNERS}
    updates = {p: mask_update(grads[p], p, config, states[p], BOOK) for p in senders}
    return states, server, start, grads, updates


def _records(updates, senders):
    names = weight_names(ChurnLTVNet(N_FEATURES))
    return ({p: arrays_to_record(names, updates[p].words) for p in senders},
            {p: updates[p].sealed for p in senders})  # fmt: skip


@pytest.mark.parametrize("min_partners", [2, 3])
def test_the_server_unmasks_a_round_and_steps_on_the_survivors_sum(min_partners):
    """min 2: b's reply never arrives (its pair masks come off with the survivors' round keys, each survivor's seed
    from 1 share); min 3: all three answer and each seed is rebuilt from the 2 other partners' shares."""
    job = secure_job(min_partners=min_partners)
    states, server, start, grads, updates = _masked_round(job)
    survivors = ("a", "c") if min_partners == 2 else PARTNERS
    dropped = tuple(sorted(set(PARTNERS) - set(survivors)))
    asked = []

    def ask(who, gone, sealed_for):
        asked.append((tuple(who), tuple(gone), {r: sorted(f) for r, f in sealed_for.items()}))
        return _revealed(states, job.job_id, 1, who, gone, sealed_for)

    out = server.aggregate(1, *_records(updates, survivors), list(PARTNERS), ask)
    assert asked == [(survivors, dropped, {r: sorted(set(survivors) - {r}) for r in survivors})]
    expected_sum = [sum(grads[p][i] for p in survivors) for i in range(len(grads["a"]))]
    expected = _reference_step(job, start, expected_sum, server)
    assert all(np.allclose(o.numpy(), e, atol=1e-6) for o, e in zip(out.values(), expected))
    assert server.recovered == ({1: ["b"]} if dropped else {})
    assert server.trust()["colluders_to_unmask"] == min_partners - 1


def test_a_survivor_that_cannot_answer_its_reveal_costs_nothing_when_the_others_hold_enough_shares():
    job = secure_job()  # min 2: each seed split 1-of-2, so either other partner's share rebuilds it
    states, server, start, grads, updates = _masked_round(job)

    def c_gone(who, dropped, sealed_for):
        return _revealed(states, job.job_id, 1, [p for p in who if p != "c"], dropped, sealed_for)

    out = server.aggregate(1, *_records(updates, PARTNERS), list(PARTNERS), c_gone)
    expected = _reference_step(job, start, [sum(grads[p][i] for p in PARTNERS) for i in range(len(grads["a"]))], server)
    assert all(np.allclose(o.numpy(), e, atol=1e-6) for o, e in zip(out.values(), expected))


def test_a_server_that_fakes_a_dropout_gets_the_pair_keys_but_not_the_vector():
    job = secure_job()
    states, _, _, grads, updates = _masked_round(job)
    sealed_for = {r: {s: updates[s].sealed[r] for s in ("a", "c") if s != r} for r in ("a", "c")}
    keys, _ = _revealed(states, job.job_id, 1, ("a", "c"), ["b"], sealed_for)  # "b dropped", yet b's vector is here
    flat_b = np.concatenate([w.ravel() for w in updates["b"].words])
    pair_masks_off = remove_masks(flat_b, {("b", s): k for (s, _), k in keys.items()})
    true_b = np.concatenate([g.ravel() for g in grads["b"]])
    assert np.median(np.abs(decode(pair_masks_off) - true_b)) > 1e9  # still under b's self mask
    with pytest.raises(SecureSumError, match="already answered round 1"):  # and the seed shares are not given now
        reveal(states["a"], "a", job.job_id, 1, ["c"], {"b": updates["b"].sealed["a"]})


def test_without_every_survivors_reveal_the_round_cannot_be_unmasked():
    job = secure_job()
    states, server, _, _, updates = _masked_round(job, senders=("a", "b"))
    with pytest.raises(SecureSumFailed, match=r"missing mask keys \[\('b', 'c'\)\]"):
        server.aggregate(1, *_records(updates, ("a", "b")), list(PARTNERS),
                         lambda who, dropped, sealed_for: ({("a", "c"): b"\0" * 32}, {}))  # fmt: skip

    def without_shares(who, dropped, sealed_for):
        return _revealed(states, job.job_id, 1, who, dropped, sealed_for)[0], {}

    with pytest.raises(SecureSumFailed, match="0 share\\(s\\) of 'a''s self-mask seed, 1 needed"):
        server.aggregate(1, *_records(updates, ("a", "b")), list(PARTNERS), without_shares)


def test_a_malformed_masked_update_stops_the_job_instead_of_stepping_on_garbage():
    job = secure_job()
    states, server, _, _, updates = _masked_round(job)
    records, sealed = _records(updates, PARTNERS)
    rng = np.random.default_rng(3)
    first = next(iter(records["b"].keys()))
    garbage = rng.integers(0, 2**63, size=records["b"][first].shape, dtype=np.uint64)
    records["b"] = ArrayRecord({name: (Array(garbage) if name == first else a) for name, a in records["b"].items()})
    before = get_weights(server.net)
    with pytest.raises(SecureSumFailed, match="malformed update"):
        server.aggregate(1, records, sealed, list(PARTNERS),
                         lambda who, dropped, sf: _revealed(states, job.job_id, 1, who, dropped, sf))  # fmt: skip
    assert all(np.array_equal(a, b) for a, b in zip(before, get_weights(server.net)))  # no step taken


def test_a_partner_reveals_once_a_round_only_the_last_rounds_keys_and_shares_of_its_own_peers():
    job = secure_job()
    states, server, _ = _partners_and_server(job)
    config = _round(server, job, 2)
    update = mask_update(_gradients(0), "a", config, states["a"], BOOK)
    from_b = mask_update(_gradients(1), "b", config, states["b"], BOOK).sealed["a"]
    assert set(update.sealed) == {"b", "c"}
    with pytest.raises(SecureSumError, match="not the last round"):
        reveal(states["a"], "a", job.job_id, 1, ["c"], {"b": from_b})
    with pytest.raises(SecureSumError, match="not a peer"):
        reveal(states["a"], "a", job.job_id, 2, ["a", "c"], {"b": from_b})
    with pytest.raises(SecureSumError, match="not a peer"):
        reveal(states["a"], "a", job.job_id, 2, ["z", "c"], {"b": from_b})
    with pytest.raises(SecureSumError, match=r"named once, dropped or survived \(both: \[\], neither: \['b'\]\)"):
        reveal(states["a"], "a", job.job_id, 2, ["c"], {})
    with pytest.raises(SecureSumError, match=r"\(both: \['b'\], neither: \[\]\)"):
        reveal(states["a"], "a", job.job_id, 2, ["b", "c"], {"b": from_b})
    with pytest.raises(SecureSumError, match="does not open"):  # b's share for a, relabelled as c's
        reveal(states["a"], "a", job.job_id, 2, ["b"], {"c": from_b})
    keys, shares = reveal(states["a"], "a", job.job_id, 2, ["c"], {"b": from_b})
    assert set(keys) == {"c"} and set(shares) == {"b"}
    with pytest.raises(SecureSumError, match="already answered round 2"):
        reveal(states["a"], "a", job.job_id, 2, ["b", "c"], {})
    for again in (2, 1):  # a second vector for round 2 (and its reveal, this time "b survived") is not to be had
        with pytest.raises(SecureSumError, match=f"round {again} refused: this partner already masked round 2"):
            mask_update(_gradients(0), "a", _round(server, job, again), states["a"], BOOK)
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
    keys, _ = reveal(restarted, "a", job.job_id, 1, ["b", "c"], {}, state_dir)
    assert set(keys) == {"b", "c"}
    with pytest.raises(SecureSumError, match="already answered round 1"):  # the reveal is kept in the state dir too
        reveal(RecordDict(), "a", job.job_id, 1, ["b", "c"], {}, state_dir)
    key_file = tmp_path / "a" / f"{job.job_id}.secure-sum.json"
    stale = json.loads(key_file.read_text()) | {"round": 0, "revealed": 0}  # an actor of "a" with the node state
    late = RecordDict({"secure-sum": ConfigRecord(stale | {"private-key": bytes.fromhex(stale["private-key"])})})
    with pytest.raises(SecureSumError, match="round 1 refused"):  # from before round 1: the state dir decides
        mask_update(_gradients(0), "a", _round(server, job, 1), late, BOOK, state_dir)
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
    assert trust["mode"] == "secure" and trust["recovered"] == [] and trust["colluders_to_unmask"] == 1
    assert math.isclose(trust["partner_noise_multiplier"] * math.sqrt(2), trust["noise_multiplier"])
    assert trust["epsilon_if_colluding"] > job.target_epsilon
    assert result.model_hash != result.manifests[0].model_in_hash
    body = result.manifests[-1].to_dict()
    check_body("round.manifest", body)  # the ledger accepts the secure manifest as it is
    earlier = {k: v for k, v in trust.items() if k != "colluders_to_unmask"}  # manifests of jobs before self masks
    check_body("round.manifest", body | {"aggregation": earlier})
    with pytest.raises(EntryError, match="colluders_to_unmask must be an integer >= 1"):
        check_body("round.manifest", body | {"aggregation": trust | {"colluders_to_unmask": 0}})
    assert secure_round_problems(body) == []
    short = body | {"partners": body["partners"][:1]}  # a sum of one partner's share: under-noised
    assert secure_round_problems(short) == [f"round 8 of job {job.job_id}: secure sum of 1 partner(s), but each added "
                                            "the noise share of 2"]  # fmt: skip
    _screening_refuses_replies_without_their_sealed_shares(trains[0], job, sorted(data.partners))
    inflated = body | {"aggregation": trust | {"partner_noise_multiplier": trust["noise_multiplier"]}}
    assert "do not make the total" in secure_round_problems(inflated)[0]
    overstated = body | {"aggregation": trust | {"colluders_to_unmask": 2}}
    assert secure_round_problems(overstated) == [f"round 8 of job {job.job_id}: states 2 colluding partner(s) to "
                                                 "unmask a vector, but seed shares of 2 noise shares are split 1-of-n"]
    with pytest.raises(EntryError, match="mode must be 'secure'"):
        check_body("round.manifest", body | {"aggregation": trust | {"mode": "plain"}})


class MutedGrid(InProcessGrid):
    """The in-process grid, except that the messages of ``mute`` get no reply: (partition, round, message type)."""

    def __init__(self, app, num_partners: int, mute: set[tuple[int, int, str]]) -> None:
        super().__init__(app, num_partners)
        self.mute = mute

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        def muted(msg: Message) -> bool:
            config = msg.content.config_records.get("config")
            if config is None or "server-round" not in config:
                return False  # preflight
            kind = "reveal" if msg.metadata.message_type.endswith(".reveal") else msg.metadata.message_type
            return (msg.metadata.dst_node_id - self.FIRST_NODE, int(config["server-round"]), kind) in self.mute

        heard = [m for m in messages if not muted(m)]
        self.sent += [m for m in messages if muted(m)]
        return super().send_and_receive(heard, timeout=timeout)


def test_a_round_whose_sum_stays_masked_is_void_and_the_job_goes_on(data, monkeypatch):
    """Round 2: group_buy's update is missing and loyal does not answer its reveal, so the pair mask of loyal and
    group_buy cannot come off. The round is void (the model keeps its weights, the manifest says why, its ε counts);
    round 3 trains again. Two void rounds in a row stop the job, naming both."""
    as_server_app(monkeypatch)
    ledger = fake_ledger_for(data, consent_share=0.8)
    job = secure_job(rounds=4, batch_size=128, expected_partners=3, preflight_timeout_s=5)
    mute = {(1, 2, "train"), (2, 2, "reveal")}
    result = run_job(MutedGrid(make_client_app(ledger=ledger, data=data), 3, mute), job)
    assert [m.server_round for m in result.manifests] == [1, 2, 3, 4]
    void = result.manifests[1]
    assert "cannot be unmasked, missing mask keys [('loyal', 'group_buy')]" in void.aggregation["voided"]
    assert void.model_out_hash == void.model_in_hash and void.aggregation["recovered"] == []
    assert sorted(p.partner_id for p in void.partners) == ["content", "loyal"]  # charged: they spent the ε
    assert all("voided" not in m.aggregation for m in result.manifests if m is not void)
    assert result.manifests[2].model_in_hash == void.model_out_hash != result.manifests[2].model_out_hash
    body = void.to_dict()
    check_body("round.manifest", body)
    assert secure_round_problems(body) == []
    stepped = body | {"model_out_hash": result.manifests[2].model_out_hash}
    assert secure_round_problems(stepped) == [f"round 2 of job {job.job_id}: void (its sum stayed masked), yet the "
                                              f"model changed ({void.model_in_hash} -> "
                                              f"{result.manifests[2].model_out_hash})"]  # fmt: skip
    with pytest.raises(EntryError, match="voided must be the reason"):
        check_body("round.manifest", body | {"aggregation": void.aggregation | {"voided": ""}})

    twice = mute | {(1, 3, "train"), (2, 3, "reveal")}
    with pytest.raises(SecureSumFailed, match=r"round 3: the sum cannot be unmasked.*round 2 was void too"):
        run_job(MutedGrid(make_client_app(ledger=ledger, data=data), 3, twice), job)


def _screening_refuses_replies_without_their_sealed_shares(first: Message, job: Job, roster: list[str]) -> None:
    """A round-1 train reply as the server got it, passes screening; without a peer's sealed share, with a share cut
    short or not hex, or with no sealed shares at all, it is refused (its self mask could not come off)."""
    me = ManifestPart.from_record(first.content[MANIFEST]).partner_id
    reference = shapes_of(first.content[ARRAYS])
    assert len(screen_train_replies([first], reference, job, 1, roster=roster).accepted) == 1
    sealed = dict(first.content[SEALED])
    peer = next(iter(sealed))
    broken = [{k: v for k, v in sealed.items() if k != peer}, sealed | {peer: sealed[peer][:-2]},
              sealed | {peer: "zz" + sealed[peer][2:]}, None]  # fmt: skip
    reasons = []
    for shares in broken:
        reply = copy.deepcopy(first)
        del reply.content[SEALED]
        if shares is not None:
            reply.content[SEALED] = ConfigRecord(shares)
        screened = screen_train_replies([reply], reference, job, 1, roster=roster)
        assert not screened.accepted and [r.partner_id for r in screened.refused] == [me]
        reasons.append(screened.refused[0].reason)
    assert "sealed seed shares for" in reasons[0] and "not 68 bytes in hex" in reasons[1]
    assert "is not hex" in reasons[2] and "no 'sealed-shares' record" in reasons[3]
