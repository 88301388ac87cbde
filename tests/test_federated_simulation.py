"""Real Flower simulations (Ray, one CPU per partner): a clean job, a job with misbehaving partners, a stopped job.

Each ``simulate_job`` starts and stops Ray (Flower's backend shuts it down), so the scenarios share runs through
module-scoped fixtures: three simulations for the whole file.
"""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
import pytest

from client.data import SyntheticPlatforms
from server.job import Job, NotEnoughPartners
from server.runner import JobHooks
from server.simulation import simulate_job
from test_federated_support import CATEGORIES, PURPOSE, fake_ledger_for, faulty_client_app

DATA = SyntheticPlatforms(users_per_platform=300, seed=11)
TIMEOUT_S = 8.0


def small_job(job_id: str, **overrides) -> Job:
    settings = dict(
        job_id=job_id,
        purpose=PURPOSE,
        categories=CATEGORIES,
        rounds=2,
        target_epsilon=3.0,
        delta=1e-5,
        min_partners=2,
        round_timeout_s=60.0,
        local_epochs=1,
        batch_size=64,
        tree_size=42,
    )
    settings.update(overrides)
    return Job(**settings)


class RoundClock:
    """``on_round`` hook: keeps the manifests and when each round closed (monotonic seconds)."""

    def __init__(self) -> None:
        self.manifests, self.closed_at = [], []

    def __call__(self, manifest) -> None:
        self.manifests.append(manifest)
        self.closed_at.append(time.monotonic())


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def ledger():
    return fake_ledger_for(DATA, consent_share=0.8)


@pytest.fixture(scope="module")
def clean_run(ledger):
    clock = RoundClock()
    started = time.monotonic()
    result = simulate_job(small_job("clean"), 3, ledger=ledger, data=DATA, hooks=JobHooks(on_round=clock))
    return result, clock, time.monotonic() - started


def test_three_partners_two_rounds_finish_and_move_the_model(clean_run, ledger):
    result, clock, elapsed = clean_run
    print(f"simulation, 3 partners, 2 rounds: {elapsed:.1f} s")
    assert [m.server_round for m in result.manifests] == [1, 2]
    assert clock.manifests == result.manifests  # the hook saw every round
    assert result.model_hash != result.initial_model_hash
    assert result.manifests[0].model_out_hash == result.manifests[1].model_in_hash
    assert all(np.isfinite(a.numpy()).all() for a in result.arrays.values())
    for manifest in result.manifests:
        assert sorted(p.partner_id for p in manifest.partners) == list(DATA.partners)
        assert not manifest.refused and not manifest.failed and not manifest.missing_nodes
        for part in manifest.partners:
            eligible = ledger.consenting[part.partner_id]
            assert part.eligible_count == len(eligible) and part.tree_size == 42
            assert 0 < part.num_examples <= part.eligible_count
            assert len({p.code_hash for p in manifest.partners}) == 1


def test_epsilon_is_reported_per_partner_as_the_max_and_within_target(clean_run):
    result, _, _ = clean_run
    spent = result.epsilon_by_partner
    assert set(spent) == set(DATA.partners)
    assert all(0 < eps <= 3.0 + 1e-6 for eps in spent.values())
    for server_round, manifest in zip((1, 2), result.manifests):
        assert result.train_metrics[server_round]["epsilon"] == pytest.approx(manifest.epsilon_max)
        assert manifest.epsilon_max == max(p.epsilon for p in manifest.partners)
    # Composition across rounds: the second round's cumulative spend is above the first's.
    assert result.manifests[1].epsilon_max > result.manifests[0].epsilon_max
    assert result.evaluate_metrics[2]["num-examples"] > 0


def test_each_partner_keeps_its_own_round_metrics_and_they_average_to_flowers(clean_run):
    result, _, _ = clean_run
    for server_round in (1, 2):
        train = result.partner_train_metrics[server_round]
        assert set(train) == set(DATA.partners)
        losses = [m["train-loss"] for m in train.values()]
        assert len(set(losses)) == 3, "every partner shows the same train loss"
        weights = [m["num-examples"] for m in train.values()]
        mean = sum(v * w for v, w in zip(losses, weights)) / sum(weights)
        assert mean == pytest.approx(result.train_metrics[server_round]["train-loss"], rel=1e-9)
        assert max(m["epsilon"] for m in train.values()) == pytest.approx(result.train_metrics[server_round]["epsilon"])
        evaluation = result.partner_evaluate_metrics[server_round]
        assert set(evaluation) == set(DATA.partners)
        shared = set.intersection(*(set(m) for m in evaluation.values())) - {"num-examples"}
        assert shared, "no evaluation metric reported by every partner"
        # each partner also reports the level of the model as it would serve it (its own spend calibration)
        assert {"decile_mape_calibrated", "ltv_ratio_calibrated"} <= shared
        for name in shared:
            n = [m["num-examples"] for m in evaluation.values()]
            mean = sum(m[name] * w for m, w in zip(evaluation.values(), n)) / sum(n)
            assert mean == pytest.approx(result.evaluate_metrics[server_round][name], rel=1e-9)
    saved = json.loads(json.dumps(result.to_dict()))
    assert saved["partner_train_metrics"]["2"]["loyal"] == result.partner_train_metrics[2]["loyal"]
    assert "train-loss" not in json.dumps([m.to_dict() for m in result.manifests])  # losses stay out of the ledger


FAULTS = {
    (1, 2): f"slow:{TIMEOUT_S + 4}",  # round 2: partner 1 answers after the round closed
    (2, 3): "nan",
    (2, 4): "shape",
    (0, 5): "crash",
}


@pytest.fixture(scope="module")
def faulty_run(ledger, tmp_path_factory):
    captured = Captured()
    logging.getLogger("server").addHandler(captured)
    clock = RoundClock()
    try:
        job = small_job("faulty", rounds=5, strategy="fedmedian", round_timeout_s=TIMEOUT_S, target_epsilon=5.0)
        app = faulty_client_app(ledger, DATA, FAULTS, state_root=str(tmp_path_factory.mktemp("spend")))
        result = simulate_job(job, 3, client_app=app, hooks=JobHooks(on_round=clock))
    finally:
        logging.getLogger("server").removeHandler(captured)
    return result, clock, captured.messages


def _partners(manifest) -> list[str]:
    return sorted(p.partner_id for p in manifest.partners)


def test_faulty_job_still_finishes_all_rounds(faulty_run):
    result, _, _ = faulty_run
    assert [m.server_round for m in result.manifests] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(a.numpy()).all() for a in result.arrays.values())
    assert _partners(result.manifests[0]) == ["content", "group_buy", "loyal"]


def test_slow_partner_round_closes_at_timeout_and_partner_rejoins(faulty_run):
    result, clock, messages = faulty_run
    round2 = result.manifests[1]
    assert _partners(round2) == ["content", "loyal"] and len(round2.missing_nodes) == 1
    # Round 2 lasted about the timeout (not the partner's 12 s), measured between the round hooks.
    assert TIMEOUT_S - 0.5 < clock.closed_at[1] - clock.closed_at[0] < TIMEOUT_S + 4
    assert any("did not answer within" in m for m in messages)
    assert "group_buy" in _partners(result.manifests[2])  # back in round 3


def test_nan_update_is_refused_and_logged_not_aggregated(faulty_run):
    result, _, messages = faulty_run
    round3 = result.manifests[2]
    assert _partners(round3) == ["content", "group_buy"]
    assert [(r.partner_id, "NaN/Inf" in r.reason) for r in round3.refused] == [("loyal", True)]
    assert any("refused update" in m and "loyal" in m and "NaN/Inf" in m for m in messages)


def test_wrong_shape_update_is_refused_and_logged(faulty_run):
    result, _, messages = faulty_run
    round4 = result.manifests[3]
    assert _partners(round4) == ["content", "group_buy"]
    assert len(round4.refused) == 1 and "shape" in round4.refused[0].reason
    assert any("refused update" in m and "shape" in m for m in messages)


def test_crashed_partner_is_counted_failed_and_round_completes(faulty_run):
    result, _, _ = faulty_run
    round5 = result.manifests[4]
    assert _partners(round5) == ["group_buy", "loyal"]
    assert len(round5.failed) == 1 and "crashed" in round5.failed[0].reason
    assert all(math.isfinite(p.epsilon) for p in round5.partners)


def test_manifests_with_refusals_and_failures_are_entries_the_ledger_accepts(faulty_run):
    """Crashed partners send whole remote tracebacks; the signed manifest must still be a valid ledger body."""
    from consent.entries import MAX_REASON, check_body

    result, _, _ = faulty_run
    crashed = result.manifests[4].failed[0]
    assert "crashed" in crashed.to_dict()["reason"] and len(crashed.to_dict()["reason"]) <= MAX_REASON
    for manifest in result.manifests:
        body = manifest.to_dict()
        body.update(as_of="2026-12-01", lifetime_epsilon=10.0, checkpoint_root="00" * 32)
        check_body("round.manifest", body)  # raises EntryError naming the field if the ledger would refuse it


def test_too_few_usable_partners_stops_the_job_with_a_clear_error(ledger):
    app = faulty_client_app(ledger, DATA, {(2, 1): "crash"})
    job = small_job("strict", min_partners=3, round_timeout_s=30.0)
    with pytest.raises(NotEnoughPartners) as stopped:
        simulate_job(job, 3, client_app=app)
    message = str(stopped.value)
    assert "round 1" in message and "2 usable update(s), need at least 3" in message
    assert "crashed" in message

