"""A secure job (distributed DP over a secure sum) in a real Flower simulation (Ray), with partners that misbehave:
each round the survivors' self masks come off with their peers' seed shares, a roster partner whose masked vector is
missing has its pair masks removed with the survivors' revealed round keys (``query.reveal`` over the real grid),
and the job goes on; a round whose sum cannot be unmasked (a dropout and a missing reveal) is void."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from client.data import SyntheticPlatforms
from server.runner import JobHooks
from server.simulation import simulate_job
from test_federated_simulation import Captured, RoundClock, small_job
from test_federated_support import fake_ledger_for, faulty_client_app

DATA = SyntheticPlatforms(users_per_platform=300, seed=11)
TIMEOUT_S = 8.0
# (partition, round) -> fault; partitions 0, 1, 2 are content, group_buy, loyal
# Round 4: content crashes and group_buy fails its reveal, so their pair mask cannot come off: the round is void.
FAULTS = {(1, 2): "slow:12", (2, 3): "shape", (0, 4): "crash", (1, 4): "no-reveal"}


@pytest.fixture(scope="module")
def secure_run(tmp_path_factory):
    ledger = fake_ledger_for(DATA, consent_share=0.8)
    captured = Captured()
    logging.getLogger("server").addHandler(captured)
    clock = RoundClock()
    try:
        job = small_job("secure", rounds=5, aggregation="secure", batch_size=128, lr=0.01,
                        round_timeout_s=TIMEOUT_S)  # fmt: skip
        app = faulty_client_app(ledger, DATA, FAULTS, state_root=str(tmp_path_factory.mktemp("spend")))
        result = simulate_job(job, 3, client_app=app, hooks=JobHooks(on_round=clock))
    finally:
        logging.getLogger("server").removeHandler(captured)
    return result, captured.messages


def _partners(manifest) -> list[str]:
    return sorted(p.partner_id for p in manifest.partners)


def test_a_secure_job_finishes_every_round_despite_a_slow_a_refused_and_a_crashed_partner(secure_run):
    result, _ = secure_run
    assert [m.server_round for m in result.manifests] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(a.numpy()).all() and a.numpy().dtype == np.float32 for a in result.arrays.values())
    recovered = {m.server_round: m.aggregation["recovered"] for m in result.manifests}
    assert recovered == {1: [], 2: ["group_buy"], 3: ["loyal"], 4: [], 5: []}
    void = result.manifests[3]
    assert "missing mask keys [('group_buy', 'content')]" in void.aggregation["voided"]
    assert void.model_in_hash == void.model_out_hash != result.manifests[4].model_out_hash
    assert [m.server_round for m in result.manifests if "voided" in m.aggregation] == [4]
    assert _partners(result.manifests[0]) == _partners(result.manifests[4]) == ["content", "group_buy", "loyal"]
    assert _partners(result.manifests[1]) == ["content", "loyal"]


def test_each_dropout_is_logged_with_the_masks_removed(secure_run):
    result, messages = secure_run
    removed = [m for m in messages if "masks of dropped partner(s)" in m]
    assert len(removed) == 2 and all("2 revealed round key(s)" in m for m in removed)
    assert any("no reveal from node" in m and "crashed before its reveal" in m for m in messages)
    assert any(m.startswith("round 4 void, the model keeps its weights") for m in messages)
    assert any("refused update" in m and "loyal" in m and "shape" in m for m in messages)
    assert len(result.manifests[3].failed) == 1 and "crashed" in result.manifests[3].failed[0].reason


def test_every_partner_reports_the_same_job_epsilon_within_target(secure_run):
    result, _ = secure_run
    last = result.manifests[-1]
    assert {p.noise_multiplier for p in last.partners} == {last.aggregation["noise_multiplier"]}
    assert all(0 < p.epsilon <= result.job.target_epsilon + 1e-6 for p in last.partners)
    spent = {p.partner_id: p.epsilon for p in last.partners}
    # loyal computed a share in all five rounds (round 3's was refused after it spent it): the whole budget, as
    # calibrated; content crashed in round 4 before computing, so that round cost its users nothing.
    assert spent["loyal"] > 0.99 * result.job.target_epsilon
    assert spent["content"] < spent["loyal"]
