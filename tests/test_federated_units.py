"""Fast checks of the federated plumbing without a Flower run: the ClientApp is called in-process on real
messages, and its replies go through the server's screening, aggregation and manifests."""

from __future__ import annotations

import time
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict

from client.app import make_client_app
from client.data import SyntheticPlatforms
from client.eligibility import EligibilityError, EligibleSet, eligible_subjects
from client.manifest import ManifestPart
from client.privacy import BudgetExceeded, spent_so_far, train_privately
from client.protocol import ARRAYS, CONFIG, MANIFEST, METRICS, RoundConfig
from server.job import Job, JobError
from server.manifests import model_hash
from server.runner import initial_model
from server.screening import screen_train_replies, shapes_of
from server.strategy import aggregate_train_metrics, build_strategy
from test_federated_support import CATEGORIES, PURPOSE, FakeLedger, InProcessGrid, as_server_app, fake_ledger_for

REPO = Path(__file__).resolve().parent.parent
DATA = SyntheticPlatforms(users_per_platform=200, seed=5)


@pytest.fixture(scope="module")
def ledger():
    return fake_ledger_for(DATA, consent_share=0.7)


def job(**overrides) -> Job:
    settings = dict(job_id="unit", purpose=PURPOSE, categories=CATEGORIES, rounds=2, tree_size=42, local_epochs=1,
                    batch_size=64)  # fmt: skip
    return Job(**{**settings, **overrides})


def instruction(content: RecordDict, node_id: int, message_type: str = MessageType.TRAIN) -> Message:
    metadata = Metadata(
        run_id=1, message_id=f"m-{node_id}-{time.monotonic_ns()}", src_node_id=1, dst_node_id=node_id,
        reply_to_message_id="", group_id="", created_at=time.time(), ttl=600.0, message_type=message_type,
    )  # fmt: skip
    return Message(content, metadata=metadata)


def context(partition: int) -> Context:
    return Context(run_id=1, node_id=100 + partition, node_config={"partition-id": partition}, state=RecordDict(),
                   run_config={})  # fmt: skip


@pytest.fixture(scope="module")
def round_one(ledger):
    """Real train replies of the three partners to round 1 of a job, from the ClientApp called in-process."""
    the_job = job()
    app = make_client_app(ledger=ledger, data=DATA)
    probe = DATA.features("content", CATEGORIES)
    arrays = initial_model(the_job, probe.X.shape[1])
    config = the_job.round_config(1).to_record()
    sent = [instruction(RecordDict({ARRAYS: arrays, CONFIG: config}), node_id=100 + p) for p in range(3)]
    replies = [app(msg, context(p)) for p, msg in enumerate(sent)]
    return the_job, arrays, sent, replies


def poisoned(reply: Message, fault: str) -> Message:
    arrays = ArrayRecord()
    for i, (name, array) in enumerate(reply.content[ARRAYS].items()):
        values = array.numpy().copy()
        if i == 0 and fault == "nan":
            values.flat[3] = np.nan
        if i == 0 and fault == "shape":
            values = values[:, :-1]
        # any other fault: an untouched copy
        arrays[name] = Array(values)
    content = RecordDict({ARRAYS: arrays, METRICS: reply.content[METRICS], MANIFEST: reply.content[MANIFEST]})
    return Message(content, reply_to=reply_to_of(reply))


def reply_to_of(reply: Message) -> Message:
    return instruction(RecordDict(), node_id=reply.metadata.src_node_id)


def test_round_config_survives_the_wire():
    config = job(hidden=(16, 8)).round_config(3)
    assert RoundConfig.from_record(config.to_record()) == config


def test_job_from_the_flower_app_config_in_pyproject():
    run_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    the_job = Job.from_run_config({**run_config, "strategy": "krum", "categories": "transaction, behavioural"})
    assert the_job.rounds == run_config["num-rounds"] and the_job.strategy == "krum"
    assert the_job.categories == ("transaction", "behavioural") and the_job.hidden == (64, 32)
    assert the_job.extra["ledger-url"] == run_config["ledger-url"]
    with pytest.raises(JobError, match="unknown strategy"):
        Job.from_run_config({**run_config, "strategy": "fedprox"})
    with pytest.raises(JobError, match="target epsilon"):
        job(target_epsilon=0.0)


def test_a_bare_flwr_run_trains_with_the_demo_plan():
    """The Flower App's training defaults are the plan `cohort demo` runs on the same synthetic platforms."""
    from cohort.demo import PLANS

    run_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    the_job, plan = Job.from_run_config(run_config), PLANS["synthetic"]
    assert (the_job.local_epochs, the_job.batch_size, the_job.lr, the_job.lr_schedule, the_job.max_grad_norm) == (
        plan.local_epochs, plan.batch_size, plan.lr, plan.lr_schedule, plan.max_grad_norm)


def test_client_trains_only_on_eligible_rows_and_commits_to_them(round_one, ledger):
    _, _, _, replies = round_one
    for partition, reply in enumerate(replies):
        partner = DATA.partners[partition]
        part = ManifestPart.from_record(reply.content[MANIFEST])
        eligible = EligibleSet.of(ledger.consenting[partner])
        assert (part.partner_id, part.eligible_root, part.eligible_count) == (partner, eligible.root, eligible.count)
        assert 0 < part.num_examples < eligible.count  # a share of the eligible rows is held out for evaluation
        assert part.epsilon <= 3.0 and part.noise_multiplier > 0 and part.max_grad_norm == 20.0


def test_screening_accepts_honest_updates_and_refuses_poisoned_ones(round_one):
    the_job, arrays, sent, replies = round_one
    node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
    honest = screen_train_replies(replies, shapes_of(arrays), the_job, 1, node_of_message=node_of)
    assert len(honest.accepted) == 3 and not honest.refused
    bad = [poisoned(replies[0], "nan"), poisoned(replies[1], "shape"), replies[2]]
    screened = screen_train_replies(bad, shapes_of(arrays), the_job, 1)
    assert [u.part.partner_id for u in screened.accepted] == ["loyal"]
    reasons = {r.partner_id: r.reason for r in screened.refused}
    assert "NaN/Inf" in reasons["content"] and "shape" in reasons["group_buy"]
    wrong_round = screen_train_replies(replies[:1], shapes_of(arrays), the_job, 2)
    assert "server_round" in wrong_round.refused[0].reason


def test_screening_refuses_a_partner_whose_reported_spend_went_down(round_one):
    """ε is cumulative over a job: less than an earlier round's report means the partner lost its spend (a SuperNode
    restarted without its state dir) and would train on as if its users had spent nothing."""
    the_job, arrays, _, replies = round_one
    reported = {ManifestPart.from_record(r.content[MANIFEST]).partner_id: ManifestPart.from_record(
        r.content[MANIFEST]).epsilon for r in replies}  # fmt: skip
    earlier = {"content": reported["content"] + 0.5, "group_buy": reported["group_buy"]}
    screened = screen_train_replies(replies, shapes_of(arrays), the_job, 1, spent=earlier)
    assert sorted(u.part.partner_id for u in screened.accepted) == ["group_buy", "loyal"]
    [refusal] = screened.refused
    assert refusal.partner_id == "content" and f"below the {earlier['content']:.4f} this partner reported" in \
        refusal.reason


@pytest.mark.parametrize("name", ["fedavg", "fedmedian", "fedtrimmedavg", "krum"])
def test_every_selectable_strategy_aggregates_cohort_replies(round_one, name):
    the_job, arrays, _, replies = round_one
    strategy = build_strategy(job(strategy=name, trim_beta=0.2))
    aggregated, metrics = strategy.aggregate_train(1, [poisoned(r, "copy") for r in replies])
    assert shapes_of(aggregated) == shapes_of(arrays)
    assert all(np.isfinite(a.numpy()).all() for a in aggregated.values())
    assert model_hash(aggregated) != model_hash(arrays)
    # Krum aggregates the metrics of the update it picks; GuardedStrategy then sets epsilon to everyone's max.
    assert metrics["epsilon"] <= max(float(r.content[METRICS]["epsilon"]) for r in replies)


def test_epsilon_aggregates_as_the_max_not_a_weighted_mean():
    records = [
        RecordDict({METRICS: MetricRecord({"num-examples": 900, "epsilon": 1.0, "train-loss": 1.0})}),
        RecordDict({METRICS: MetricRecord({"num-examples": 100, "epsilon": 2.5, "train-loss": 3.0})}),
    ]
    metrics = aggregate_train_metrics(records, "num-examples")
    assert metrics["epsilon"] == 2.5
    assert metrics["train-loss"] == pytest.approx(1.2)
    assert metrics["num-examples"] == 1000


def test_partner_refuses_a_round_beyond_the_job_budget_and_keeps_its_spend(tmp_path, ledger):
    from client.data import load_eligible_rows
    from models.nets import ChurnLTVNet

    the_job = job(rounds=1).round_config(1)
    rows = load_eligible_rows(ledger, DATA, "loyal", the_job).train
    state, state_dir = RecordDict(), str(tmp_path / "spend")
    spent = train_privately(ChurnLTVNet(rows.X.shape[1]), rows, the_job, state, state_dir)
    assert 0 < spent.epsilon <= 3.0
    with pytest.raises(BudgetExceeded):
        train_privately(ChurnLTVNet(rows.X.shape[1]), rows, the_job, state, state_dir)
    # A restarted node (fresh state) reads its spend back from its state dir and still refuses.
    assert spent_so_far(RecordDict(), the_job, state_dir) == pytest.approx(spent.epsilon, rel=1e-3)
    with pytest.raises(BudgetExceeded):
        train_privately(ChurnLTVNet(rows.X.shape[1]), rows, the_job, RecordDict(), state_dir)


def test_a_prv_job_composes_its_rounds_to_the_target_and_refuses_one_more(tmp_path, ledger):
    """A job with ``accountant = "prv"``: the partner plans less noise than under RDP, its rounds compose under PRV
    up to the job's epsilon, and a round past the plan is refused before training. (ε 0.5 and batch 16 keep sigma
    large and the sample rate small: at a small sigma and a sample rate near 1/2 each PRV composition takes
    seconds.)"""
    from client.data import load_eligible_rows
    from client.privacy import plan_noise
    from models.nets import ChurnLTVNet

    prv_job = job(rounds=2, accountant="prv", target_epsilon=0.5, batch_size=16)
    rows = load_eligible_rows(ledger, DATA, "loyal", prv_job.round_config(1)).train
    n = rows.X.shape[0]
    rdp_job = job(rounds=2, target_epsilon=0.5, batch_size=16)
    prv_sigma = plan_noise(n, prv_job.round_config(1)).noise_multiplier
    assert prv_sigma < plan_noise(n, rdp_job.round_config(1)).noise_multiplier
    state, state_dir = RecordDict(), str(tmp_path / "prv")
    done = [train_privately(ChurnLTVNet(rows.X.shape[1]), rows, prv_job.round_config(r), state, state_dir)
            for r in (1, 2)]  # fmt: skip
    assert 0 < done[0].epsilon < done[1].epsilon <= prv_job.target_epsilon + 1e-6
    assert done[1].epsilon == pytest.approx(prv_job.target_epsilon, rel=0.05)
    assert spent_so_far(RecordDict(), prv_job.round_config(2), state_dir) == pytest.approx(done[1].epsilon, rel=1e-6)
    with pytest.raises(BudgetExceeded):
        train_privately(ChurnLTVNet(rows.X.shape[1]), rows, prv_job.round_config(3), state, state_dir)


def test_the_lr_schedule_reaches_partner_training_and_an_unknown_one_is_refused(tmp_path, ledger, monkeypatch):
    import dataclasses

    import client.privacy
    from client.data import load_eligible_rows
    from models.nets import ChurnLTVNet

    with pytest.raises(JobError, match="unknown lr schedule 'warmup'"):
        job(lr_schedule="warmup")
    run_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert job().lr_schedule == "cosine"  # the Job default; the Flower App's config asks for constant
    cosine = Job.from_run_config({**run_config, "lr-schedule": "cosine"})
    assert RoundConfig.from_record(cosine.round_config(1).to_record()).lr_schedule == "cosine"

    seen, real_train = [], client.privacy.train  # a spy around the real training: what the partner asked for
    monkeypatch.setattr(client.privacy, "train", lambda *a, **kw: seen.append(kw["lr_decay"]) or real_train(*a, **kw))
    rows = load_eligible_rows(ledger, DATA, "loyal", job().round_config(1)).train
    for schedule in ("constant", "cosine"):
        config = job(lr_schedule=schedule).round_config(1)
        train_privately(ChurnLTVNet(rows.X.shape[1]), rows, config, RecordDict(), str(tmp_path / schedule))
    assert seen == [False, True]
    # A round config from a server that knows other schedules: refused before any step is taken or counted.
    odd = dataclasses.replace(job().round_config(1), lr_schedule="warmup")
    with pytest.raises(ValueError, match="unknown lr-schedule 'warmup'"):
        train_privately(ChurnLTVNet(rows.X.shape[1]), rows, odd, RecordDict(), str(tmp_path / "odd"))
    assert seen == [False, True] and spent_so_far(RecordDict(), odd, str(tmp_path / "odd")) == 0.0


def test_a_late_round_and_the_next_one_of_one_partner_both_count(tmp_path, ledger):
    """Simulation can run a partner's late round and its next round at once, each actor with its own stale
    Context.state: the state dir's lock makes the second wait, and the spend it reports includes the first."""
    import threading

    from client.data import load_eligible_rows
    from client.privacy import epsilon_of
    from models.nets import ChurnLTVNet

    two = job(rounds=2)
    rows = load_eligible_rows(ledger, DATA, "loyal", two.round_config(1)).train
    state_dir, start, results = str(tmp_path / "spend"), threading.Barrier(2), {}

    def actor(server_round: int) -> None:
        start.wait()
        model = ChurnLTVNet(rows.X.shape[1])
        results[server_round] = train_privately(model, rows, two.round_config(server_round), RecordDict(), state_dir)

    threads = [threading.Thread(target=actor, args=(r,)) for r in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.rounds_trained for r in results.values()) == [1, 2]
    second = max(results.values(), key=lambda r: r.rounds_trained)
    plan = second.plan
    both = epsilon_of([(plan.noise_multiplier, plan.sample_rate, 2 * plan.steps_per_round)], two.round_config(2))
    assert second.epsilon == pytest.approx(both, rel=1e-6)
    assert spent_so_far(RecordDict(), two.round_config(2), state_dir) == pytest.approx(both, rel=1e-6)


def test_an_inconsistent_eligible_set_from_the_ledger_is_rejected(ledger):
    class LyingLedger:
        def eligible_subjects(self, *args):
            honest = ledger.eligible_subjects(*args)
            return EligibleSet(honest.subject_refs[1:], honest.count, honest.root)  # one ref dropped silently

    with pytest.raises(EligibilityError, match="does not match"):
        eligible_subjects(LyingLedger(), "content", PURPOSE, CATEGORIES, 42)


def test_model_hash_is_stable_and_sensitive():
    arrays = initial_model(job(), 10)
    assert model_hash(arrays) == model_hash(initial_model(job(), 10))
    assert model_hash(arrays) != model_hash(initial_model(job(seed=1), 10))


# --- preflight, node selection and the job's eligible set, through an in-process grid --------------------------------


class CappedLedger(FakeLedger):
    """The fake ledger with a lifetime budget: subjects in ``over_budget`` consent but are never eligible."""

    over_budget: frozenset = frozenset()

    def eligible_subjects(self, partner_id, purpose, categories, tree_size) -> EligibleSet:
        consenting = super().eligible_subjects(partner_id, purpose, categories, tree_size)
        return EligibleSet.of([r for r in consenting.subject_refs if r not in self.over_budget])

    def consenting_count(self, partner_id, purpose, categories, tree_size) -> int:
        return super().eligible_subjects(partner_id, purpose, categories, tree_size).count


def _preflight(ledger, monkeypatch, silent=(), **overrides):
    from server.preflight import preflight

    as_server_app(monkeypatch)
    grid = InProcessGrid(make_client_app(ledger=ledger, data=DATA), 3, silent=set(silent))
    return preflight(grid, job(preflight_timeout_s=1.0, **overrides)), grid


def test_preflight_refuses_a_job_when_a_partner_has_no_consenting_subject(ledger, monkeypatch):
    from server.job import PreflightError

    nobody = replace(ledger, consenting={**ledger.consenting, "loyal": []})
    with pytest.raises(PreflightError) as refused:
        _preflight(nobody, monkeypatch)
    message = str(refused.value)
    assert "refused" in message and "loyal: no subject consents to churn_ltv_modelling" in message
    assert "content" not in message and "group_buy" not in message


def test_preflight_says_when_every_consenting_subject_is_over_the_lifetime_budget(ledger, monkeypatch):
    from server.job import PreflightError

    capped = CappedLedger(tree_size=42, refs=ledger.refs, consenting=ledger.consenting)
    capped.over_budget = frozenset(ledger.consenting["group_buy"])
    with pytest.raises(PreflightError) as refused:
        _preflight(capped, monkeypatch)
    n = len(ledger.consenting["group_buy"])
    assert f"group_buy: all {n} consenting subjects would exceed their lifetime ε budget" in str(refused.value)


def test_preflight_tolerates_a_partner_that_does_not_answer(ledger, monkeypatch):
    report, grid = _preflight(ledger, monkeypatch, silent={102})
    assert sorted(report.partner_of_node) == [100, 101] and "no answer" in report.not_ready[102]
    assert {p.partner_id: p.consenting_count for p in report.ready} == {
        p: len(ledger.consenting[p]) for p in ("content", "group_buy")
    }


class NodesOnly:
    """A grid that only says which nodes are connected (for the strategy's message routing)."""

    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def test_only_nodes_found_ready_at_preflight_are_sent_rounds_and_counted(round_one, monkeypatch, caplog):
    from server.strategy import GuardedStrategy

    as_server_app(monkeypatch)
    the_job, arrays, _, replies = round_one  # replies from nodes 100, 101, 102
    strategy = GuardedStrategy(build_strategy(the_job), the_job, {100: "content", 101: "group_buy"})
    grid = NodesOnly([100, 101, 102])  # 102 connected, but not found ready at preflight
    train = strategy.configure_train(1, arrays, the_job.round_config(1).to_record(), grid)
    assert [m.metadata.dst_node_id for m in train] == [100, 101]
    evaluate = strategy.configure_evaluate(1, arrays, the_job.round_config(1).to_record(), grid)
    assert [m.metadata.dst_node_id for m in evaluate] == [100, 101]
    with caplog.at_level("WARNING", logger="server"):
        strategy.aggregate_train(1, replies)
    manifest = strategy.manifests[0]
    assert sorted(p.partner_id for p in manifest.partners) == ["content", "group_buy"]
    assert [(r.node_id, "not found ready at preflight" in r.reason) for r in manifest.refused] == [(102, True)]
    assert any("refused update from node 102" in m for m in caplog.messages)
    assert set(strategy.partner_train_metrics[1]) == {"content", "group_buy"}
    eval_replies = [make_client_app(ledger=fake_ledger_for(DATA, 0.7), data=DATA)(
        instruction(RecordDict({ARRAYS: arrays, CONFIG: the_job.round_config(1).to_record()}), 100 + p,
                    MessageType.EVALUATE), context(p)) for p in range(3)]  # fmt: skip
    strategy.aggregate_evaluate(1, eval_replies)
    assert set(strategy.partner_evaluate_metrics[1]) == {"content", "group_buy"}


def test_a_partner_keeps_its_eligible_set_for_the_whole_job(ledger, tmp_path):
    """Budgets are charged after every round: a re-asked, capped ledger would shrink the set mid-job."""
    from client.job_eligibility import job_eligible_set

    capped = CappedLedger(tree_size=42, refs=ledger.refs, consenting=ledger.consenting)
    state, state_dir = RecordDict(), str(tmp_path / "node")
    first = job_eligible_set(capped, "content", job().round_config(0), state, state_dir)
    assert first == EligibleSet.of(ledger.consenting["content"])
    capped.over_budget = frozenset(ledger.consenting["content"][:10])  # round 1 was charged
    for server_round in (1, 2):
        assert job_eligible_set(capped, "content", job().round_config(server_round), state, state_dir) == first
    restarted = job_eligible_set(capped, "content", job().round_config(2), RecordDict(), state_dir)
    assert restarted == first  # read back from the state dir, not asked again
    next_job = job_eligible_set(capped, "content", job(job_id="next").round_config(0), state, state_dir)
    assert next_job.count == first.count - 10


def test_a_partners_link_asks_the_refs_every_round_so_an_erasure_between_rounds_takes_its_user_out(tmp_path):
    from client.consent_link import ConsentLink
    from tests.ledger_helpers import consent, make_world

    w = make_world(str(tmp_path / "ledger.db"), partners=("partner-a",))
    desk = w.partners["partner-a"]
    desk.record([consent(u) for u in ("ann", "bob", "cat")])
    link = ConsentLink(w.ledger, {"partner-a": desk.secret})
    users = ["ann", "bob", "cat", "never-recorded"]
    first = link.subject_refs_for("partner-a", users)
    assert sorted(first) == ["ann", "bob", "cat"] and first == desk.subject_refs(["ann", "bob", "cat"], create=False)
    desk.erase("bob")
    again = link.subject_refs_for("partner-a", users)  # the same users: their HMACs are remembered, not their refs
    assert again == {u: first[u] for u in ("ann", "cat")}
    assert link.subject_refs_for("partner-a", ["cat"]) == {"cat": first["cat"]}  # other users: asked afresh
    w.ledger.close()
