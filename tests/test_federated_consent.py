"""End to end on a real Flower simulation: only consenting subjects reach training, manifests verify against the
ledger, a withdrawal before the checkpoint is provably honoured, and the budget preflight refuses an over-budget job.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pytest
from rich.console import Console

from client.consent_link import open_link
from client.data import SyntheticPlatforms, _is_evaluation
from client.manifest import data_hash
from client.data import load_eligible_rows
from cohort.compare import CALIBRATED
from cohort.demo import EVALUATION_USERS, evaluation_users, run_demo
from cohort.demo_world import CATEGORIES, PURPOSE
from consent.audit import audit_rounds
from consent.eligibility import prove_absent, verify_absent
from consent.ledger import LedgerReader
from consent.verify import verify_ledger

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, users_per_platform=500, rounds=2, epsilon=3.0, seed=3, console=Console(quiet=True))


def test_demo_runs_audits_and_verifies(demo):
    assert demo.verify_ok and demo.audit_ok
    assert len(demo.result.manifests) == 2 and len(demo.first.manifests) == 2
    assert demo.result.job.tree_size > demo.first.job.tree_size  # job 2 is fixed to a later checkpoint
    assert all(0 < eps <= 3.0 + 1e-6 for eps in demo.result.epsilon_by_partner.values())
    assert {r["model"] for r in demo.comparison} == {"federated, DP", CALIBRATED, "local only, DP",
                                                     "centralized, no DP"}
    # scored on a fresh sample of each platform (another seed of the generator), not on ~100 held-out users
    assert {int(r["n"]) for r in demo.comparison} == {EVALUATION_USERS}
    fresh = evaluation_users(SyntheticPlatforms(users_per_platform=500, seed=3), CATEGORIES)
    own = SyntheticPlatforms(users_per_platform=500, seed=3).features("loyal", tuple(sorted(CATEGORIES)))
    assert fresh["loyal"].X.shape == (EVALUATION_USERS, own.X.shape[1]) and tuple(fresh["loyal"].feature_names) == \
        tuple(own.feature_names)
    assert not np.allclose(fresh["loyal"].X[:500], own.X)  # other users of the same platform
    assert verify_ledger(str(demo.out / "ledger.db"), workers=0).ok


def test_partner_calibration_keeps_the_ranking(demo):
    """The served model (federated + the partner's own spend calibration) ranks users exactly as the published one
    does; only the dollar level changes. (That the level moves towards the truth is tests/test_calibration.py's,
    on 1,000 held-out rows: the demo's ~100 held-out users per partner are too few to show it every run.)"""
    by = {(r["partner"], r["model"]): r for r in demo.comparison}
    for partner in {r["partner"] for r in demo.comparison}:
        raw, served = by[(partner, "federated, DP")], by[(partner, CALIBRATED)]
        assert served["ltv_gini"] == pytest.approx(raw["ltv_gini"], abs=1e-9)
        assert served["churn_auc"] == raw["churn_auc"]
        assert served["ltv_ratio"] != raw["ltv_ratio"]  # the level did move


def test_only_consenting_subjects_reach_training(demo):
    """The manifest's data hash covers the exact rows trained on; rebuild them from the users' own choices."""
    reader = LedgerReader.open_readonly(str(demo.out / "ledger.db"))
    secrets = open_link(f"py:x?db={demo.out / 'ledger.db'}&keys={demo.out / 'keys'}").secrets
    data = SyntheticPlatforms(users_per_platform=500, seed=3)
    from consent.store.vault import user_hmac

    for manifest in demo.result.manifests:
        for part in manifest.partners:
            table = data.features(part.partner_id, tuple(sorted(CATEGORIES)))
            users = [str(u) for u in table.user_ids]
            refs = reader.subject_refs(part.partner_id, [user_hmac(secrets[part.partner_id], u) for u in users])
            # independently of the eligibility code: a user is usable iff their history's last decision is a
            # consent.given naming the purpose and both categories, never withdrawn, never erased
            allowed = []
            for u in users:
                ref = refs.get(user_hmac(secrets[part.partner_id], u))
                if ref is None:
                    continue  # erased: the mapping is gone
                history = [e for i, e in reader.subject_history(ref) if i < manifest.tree_size]
                standing = None
                for e in history:
                    if e["type"] == "consent.given":
                        ok = PURPOSE in e["body"]["purposes"] and set(CATEGORIES) <= set(e["body"]["data_categories"])
                        standing = e["body"]["consent_id"] if ok else None
                    elif e["type"] == "consent.refused":
                        standing = None
                    elif e["type"] in ("consent.withdrawn", "subject.erasure_requested"):
                        standing = None
                if standing is not None:
                    allowed.append(ref)
            assert part.eligible_count == len(allowed)
            rows = load_eligible_rows(open_link(_url(demo)), data, part.partner_id, manifest_config(demo, manifest))
            assert set(rows.train_refs) <= set(allowed)
            assert set(rows.train_refs) == {r for r in allowed if not _is_evaluation(r, demo.result.job.eval_fraction)}
            assert data_hash(rows) == part.data_hash, "the client trained on rows other than the consenting ones"
    reader.close()


def manifest_config(demo, manifest):
    return demo.result.job.round_config(manifest.server_round)


def _url(demo) -> str:
    from client.consent_link import link_url
    from cohort.demo import LIFETIME_EPSILON

    return link_url(str(demo.out / "ledger.db"), str(demo.out / "keys"), LIFETIME_EPSILON,
                    demo.result.job.target_epsilon, dt.date.today().isoformat())  # fmt: skip


def test_withdrawn_and_erased_subjects_are_provably_absent(demo):
    reader = LedgerReader.open_readonly(str(demo.out / "ledger.db"))
    report = audit_rounds(reader.store)
    assert report.ok and len(report.rounds) == 2 * 2 * 3  # two jobs of two rounds, three partners
    assert all(r.matches and r.absent_proven > 0 for r in report.rounds)
    # pick a withdrawn subject and check the proof by hand against the manifest's commitment
    manifest = demo.result.manifests[-1]
    part = manifest.partners[0]
    withdrawn = [ref for ref, kind, *_ in reader.store.consent_events(part.partner_id, manifest.tree_size)
                 if kind == "withdrawn"]  # fmt: skip
    assert withdrawn
    eligible = reader.eligible_set(part.partner_id, PURPOSE, CATEGORIES, manifest.tree_size, lifetime_epsilon=10.0,
                                   job_epsilon=3.0)  # fmt: skip
    proof = prove_absent(eligible, withdrawn[0])
    assert verify_absent(proof, bytes.fromhex(part.eligible_root), part.eligible_count)
    reader.close()


def test_subjects_who_left_between_jobs_were_in_job_1_and_are_provably_absent_from_job_2(demo):
    """The demo's withdrawals and erasure happen after job 1: job 1 used those subjects, job 2 must not."""
    from cohort.demo_rights import _committed

    left = {p: refs for p, refs in demo_story(demo).items()}
    assert sum(len(v) for v in left.values()) == demo.rights.subjects > 3
    assert demo.rights.ok and demo.rights.used_before == demo.rights.absent_after == demo.rights.subjects
    reader = LedgerReader.open_readonly(str(demo.out / "ledger.db"))
    for partner, refs in left.items():
        was_root, was_count = _committed(demo.first, partner)
        now_root, now_count = _committed(demo.result, partner)
        assert now_count < was_count
        now = reader.eligible_set(partner, PURPOSE, CATEGORIES, demo.result.job.tree_size, lifetime_epsilon=10.0,
                                  job_epsilon=3.0, day=dt.date.today().isoformat())  # fmt: skip
        assert now.root == now_root
        for ref in refs:
            assert ref not in now
            assert verify_absent(prove_absent(now, ref), now_root, now_count)
    reader.close()


def demo_story(demo) -> dict[str, list[str]]:
    """subject_refs of the users who withdrew or were erased, read back from the log (not from the demo)."""
    reader = LedgerReader.open_readonly(str(demo.out / "ledger.db"))
    out: dict[str, list[str]] = {}
    for partner in ("content", "group_buy", "loyal"):
        events = reader.store.consent_events(partner, demo.result.job.tree_size)
        left = [ref for ref, kind, *_ in events if kind in ("withdrawn", "erasure")]
        out[partner] = left
    reader.close()
    return out


def test_budget_preflight_refuses_an_over_budget_job(demo, monkeypatch):
    """After the demo's two jobs every subject has spent ~6 of 10; a job targeting 8 would take them over."""
    from client.app import make_client_app
    from client.consent_link import LinkByURL, link_url
    from server.job import Job, PreflightError
    from server.ledger_hooks import LedgerBinding
    from consent.keys import Identity
    from consent.ledger import Ledger
    from test_federated_support import InProcessGrid, as_server_app

    ledger = Ledger.open(str(demo.out / "ledger.db"), Identity.load(demo.out / "keys", "operator"))
    binding = LedgerBinding(ledger, Identity.load(demo.out / "keys", "coordinator"), lifetime_epsilon=10.0)
    job = Job(job_id="too-greedy", target_epsilon=8.0, rounds=1).fixed_at(ledger.tree_size())
    for partner in ("content", "group_buy", "loyal"):
        assert binding.eligible(job, partner).count == 0
        assert binding.eligible(job, partner, capped=False).count > 0
    greedy = Job(job_id="greedier", target_epsilon=12.0, rounds=1)
    with pytest.raises(PreflightError, match="exceeds every subject's lifetime budget"):
        binding.preflight(None, greedy, None)
    # The partners' own readiness answers (the real ClientApp over the real ledger, no Ray) refuse it too.
    as_server_app(monkeypatch)
    url = link_url(str(demo.out / "ledger.db"), str(demo.out / "keys"), 10.0, 8.0, binding.day)
    app = make_client_app(ledger=LinkByURL(url), data=SyntheticPlatforms(users_per_platform=500, seed=3))
    with pytest.raises(PreflightError) as refused:
        binding.preflight(InProcessGrid(app, 3), job, None)
    for partner in ("content", "group_buy", "loyal"):
        consenting = binding.eligible(job, partner, capped=False).count
        assert f"{partner}: all {consenting} consenting subjects would exceed their lifetime ε budget" in str(
            refused.value
        )
    ledger.close()


def test_over_budget_job_is_refused_in_a_real_flower_preflight(demo):
    from client.consent_link import LinkByURL, link_url
    from consent.keys import Identity
    from consent.ledger import Ledger
    from server.job import Job, JobStopped
    from server.ledger_hooks import LedgerBinding
    from server.simulation import simulate_job

    ledger = Ledger.open(str(demo.out / "ledger.db"), Identity.load(demo.out / "keys", "operator"))
    size_before = ledger.tree_size()
    binding = LedgerBinding(ledger, Identity.load(demo.out / "keys", "coordinator"), lifetime_epsilon=10.0)
    job = Job(job_id="second-job", target_epsilon=8.0, rounds=1, preflight_timeout_s=60.0)
    url = link_url(str(demo.out / "ledger.db"), str(demo.out / "keys"), 10.0, 8.0, binding.day)
    with pytest.raises(JobStopped) as err:
        simulate_job(job, 3, ledger=LinkByURL(url), data=SyntheticPlatforms(users_per_platform=500, seed=3),
                     hooks=binding.hooks())  # fmt: skip
    assert "second-job" in str(err.value)
    for partner in ("content", "group_buy", "loyal"):
        reason = rf"{partner}: all \d+ consenting subjects would exceed their lifetime ε budget"
        assert re.search(reason, str(err.value)), str(err.value)
    started = [d for _, d in ledger.store.find_by_type("job.started") if b"second-job" in d]
    assert started == [], "a refused job must not be recorded as started"
    assert ledger.tree_size() == size_before
    ledger.close()


def test_a_secure_job_refuses_a_masking_key_its_partner_did_not_sign(demo, monkeypatch, tmp_path):
    """The real ClientApp over the real ledger signs its masking key with its ledger key; the coordinator checks every
    signature at preflight, and a node that announces a key signed by another partner's key refuses the job."""
    from client.app import make_client_app
    from client.consent_link import LinkByURL, link_url
    from client.peer_keys import sign_masking_key, verified_public_key
    from consent.audit import masking_key_problems
    from consent.entries import make_entry
    from consent.masking_keys import statement
    from client.protocol import READINESS
    from consent.keys import Identity
    from consent.ledger import Ledger
    from server.job import Job, PreflightError
    from server.ledger_hooks import LedgerBinding
    from test_federated_support import InProcessGrid, as_server_app

    ledger = Ledger.open(str(demo.out / "ledger.db"), Identity.load(demo.out / "keys", "operator"))
    size_before = ledger.tree_size()
    binding = LedgerBinding(ledger, Identity.load(demo.out / "keys", "coordinator"), lifetime_epsilon=10.0)
    url = link_url(str(demo.out / "ledger.db"), str(demo.out / "keys"), 10.0, 3.0, binding.day)
    link = open_link(url)
    key = "11" * 32
    signed = sign_masking_key(link, "j", "loyal", key)
    assert verified_public_key(signed, "j", "loyal", link.partner_key("loyal")) == key
    assert link.partner_key("coordinator") is None and link.partner_key("nobody") is None  # partner keys only
    honest = make_client_app(ledger=LinkByURL(url), data=SyntheticPlatforms(users_per_platform=500, seed=3))

    def impostor(msg, context):  # the node that plays loyal cannot sign as loyal: it signs with content's key
        out = honest(msg, context)
        readiness = out.content.config_records.get(READINESS)
        if readiness is not None and readiness["partner-id"] == "loyal":
            public = str(readiness["masking-key"]).partition(".")[0]
            signature = Identity.load(demo.out / "keys", "content").sign(statement("secure-job", "loyal", public))
            readiness["masking-key"] = f"{public}.{signature.hex()}"
        return out

    as_server_app(monkeypatch)
    job = Job(job_id="secure-job", target_epsilon=3.0, rounds=2, min_partners=2, aggregation="secure",
              preflight_timeout_s=60.0)  # fmt: skip
    assert binding.preflight(InProcessGrid(honest, 3), job, binding.checkpoint).ready  # signed keys check out
    started = ledger.tree_size()
    [(_, entry)] = [e for e in ledger.store.find_by_type("job.started") if b'"secure-job"' in e[1]]
    recorded = json.loads(entry)["body"]["masking_keys"]
    assert sorted(recorded) == ["content", "group_buy", "loyal"] and masking_key_problems(ledger.store) == []
    with pytest.raises(PreflightError, match="loyal: masking key of 'loyal' refused: not signed by its ledger key"):
        binding.preflight(InProcessGrid(impostor, 3), job.fixed_at(started), None)
    assert ledger.tree_size() == started == size_before + 1  # job.started for the honest one, nothing for this one
    ledger.close()
    # An auditor re-checks the recorded keys after the job: a job.started whose loyal key content signed is named
    # (only that one: the others are the partners' own signatures, for this job id).
    forged = ledger_copy(demo, tmp_path)
    body = json.loads(entry)["body"]
    public = recorded["loyal"].partition(".")[0]
    by_content = Identity.load(demo.out / "keys", "content").sign(statement("secure-job", "loyal", public))
    body.update(masking_keys=dict(recorded, loyal=f"{public}.{by_content.hex()}"))
    [index] = forged.append([make_entry("job.started", body, Identity.load(demo.out / "keys", "coordinator"))])
    assert masking_key_problems(forged.store) == [f"entry {index}: job secure-job: the masking key of loyal is not "
                                                  "signed by the ledger key that partner held when the job started"]
    # loyal's key rotated after the job: its old key still vouches for the job's masking key, not for a later one
    forged.rotate("loyal", Identity.generate("loyal", "partner").public_b64)
    assert masking_key_problems(forged.store) == [f"entry {index}: job secure-job: the masking key of loyal is not "
                                                  "signed by the ledger key that partner held when the job started"]
    [late] = forged.append([make_entry("job.started", json.loads(entry)["body"],
                                       Identity.load(demo.out / "keys", "coordinator"))])  # fmt: skip
    assert len(masking_key_problems(forged.store)) == 2 and f"entry {late}: job secure-job: the masking key of loyal" \
        in masking_key_problems(forged.store)[1]
    forged.close()


def ledger_copy(demo, tmp_path):
    """The demo's ledger, copied (SQLite's backup API, WAL included), opened by its operator: to forge entries in."""
    import sqlite3

    from consent.keys import Identity
    from consent.ledger import Ledger

    copy = tmp_path / "ledger.db"
    with sqlite3.connect(demo.out / "ledger.db") as source, sqlite3.connect(copy) as target:
        source.backup(target)
    return Ledger.open(str(copy), Identity.load(demo.out / "keys", "operator"))


def test_the_round_audit_flags_a_later_round_that_trains_on_the_set_before_the_withdrawals(demo, tmp_path):
    """The audit works each job's fold and proofs out once, not once a round: a later round that commits another
    set is still re-checked. Here a forged round 3 of job 2 commits job 1's set for loyal, withdrawn users and all."""
    from consent.entries import make_entry
    from consent.keys import Identity

    ledger = ledger_copy(demo, tmp_path)
    bodies = [json.loads(d)["body"] for _, d in sorted(ledger.store.find_by_type("round.manifest"))]
    first, second = demo.first.job.job_id, demo.result.job.job_id
    assert audit_rounds(ledger.store).ok
    old = next(p for p in bodies[-1 - [b["job_id"] for b in reversed(bodies)].index(first)]["partners"]
               if p["partner_id"] == "loyal")  # loyal's part in job 1's last round
    forged = json.loads(json.dumps(bodies[-1]))  # job 2's last round, as round 3
    assert forged["job_id"] == second
    forged["round"] = 3
    for part in forged["partners"]:
        if part["partner_id"] == "loyal":
            part.update(eligible_root=old["eligible_root"], eligible_count=old["eligible_count"])
    ledger.append([make_entry("round.manifest", forged, Identity.load(demo.out / "keys", "coordinator"))])
    report = audit_rounds(ledger.store)
    assert report == audit_rounds(ledger.store, reuse=False)  # reused folds and proofs: the report of a fresh audit
    problems = report.problems
    assert problems and all("round 3 of job" in p or "not provably absent" in p for p in problems)
    assert f"round 3 of job {second}: loyal's committed eligible set ({old['eligible_count']} subjects)" in problems[0]
    unprovable = " ".join(p for p in problems if "not provably absent" in p)
    assert all(f"subject {ref} withdrew/erased" in unprovable for ref in demo_story(demo)["loyal"])
    ledger.close()


def test_a_job_stopped_early_has_charged_the_rounds_that_closed(demo):
    """Rounds are charged as they close: loyal crashes in round 3 of 3, the job stops, rounds 1 and 2 stay charged.
    The demo's subjects have spent ~6 of 10 already, so after round 1's charge a ledger asked afresh would no longer
    admit them to a job of ε 3: round 2 shows each partner kept the set the job started with. Runs last: it spends."""
    from client.consent_link import LinkByURL, link_url
    from consent.keys import Identity
    from consent.ledger import Ledger
    from server.job import Job, NotEnoughPartners
    from server.ledger_hooks import LedgerBinding
    from server.simulation import simulate_job
    from test_federated_support import faulty_client_app

    ledger = Ledger.open(str(demo.out / "ledger.db"), Identity.load(demo.out / "keys", "operator"))
    binding = LedgerBinding(ledger, Identity.load(demo.out / "keys", "coordinator"), lifetime_epsilon=10.0)
    job = Job(job_id="stopped-job", target_epsilon=3.0, rounds=3, min_partners=3, local_epochs=1, batch_size=64,
              round_timeout_s=60.0, preflight_timeout_s=60.0)  # fmt: skip
    before = {p: ledger.budget_spent(p) for p in ("content", "group_buy", "loyal")}
    url = link_url(str(demo.out / "ledger.db"), str(demo.out / "keys"), 10.0, 3.0, binding.day)
    app = faulty_client_app(LinkByURL(url), SyntheticPlatforms(users_per_platform=500, seed=3), {(2, 3): "crash"})
    with pytest.raises(NotEnoughPartners, match="round 3"):
        simulate_job(job, 3, client_app=app, hooks=binding.hooks())
    manifests = [json.loads(d)["body"] for _, d in sorted(ledger.store.find_by_type("round.manifest"))
                 if json.loads(d)["body"]["job_id"] == "stopped-job"]  # fmt: skip
    assert [m["round"] for m in manifests] == [1, 2]
    parts = [{p["partner_id"]: p for p in m["partners"]} for m in manifests]
    charges = [(c["round"], c["partner_id"], c["epsilon"]) for c in ledger.budget.charges("stopped-job")]
    assert charges == [(r + 1, p, pytest.approx(parts[r][p]["epsilon"] - (parts[r - 1][p]["epsilon"] if r else 0.0)))
                       for r in (0, 1) for p in sorted(parts[r])]  # fmt: skip
    fixed = job.fixed_at(manifests[0]["tree_size"])
    for partner, part in parts[1].items():
        assert part["eligible_root"] == parts[0][partner]["eligible_root"], f"{partner}'s eligible set moved mid-job"
        assert binding.eligible(fixed, partner).count < part["eligible_count"]  # what re-asking would have given
        admitted = binding.members[("stopped-job", partner)].subject_refs
        after = ledger.budget_spent(partner, admitted)
        assert len(admitted) == part["eligible_count"]
        assert all(after[r] - before[partner].get(r, 0.0) == pytest.approx(part["epsilon"]) for r in admitted)
        assert max(after.values()) <= 10.0 + 1e-6
    stopped = [json.loads(d)["body"] for _, d in ledger.store.find_by_type("job.stopped")]
    assert stopped == [{"job_id": "stopped-job", "rounds_completed": 2, "cause": "NotEnoughPartners",
                        "epsilon_by_partner": {p: pytest.approx(parts[1][p]["epsilon"]) for p in sorted(parts[1])}}]
    assert not [d for _, d in ledger.store.find_by_type("model.published") if b"stopped-job" in d]
    report = audit_rounds(ledger.store)  # the replay charges per round too, and keeps each job's set
    assert report.ok, report.problems
    ledger.checkpoint()
    assert verify_ledger(str(demo.out / "ledger.db"), workers=0).ok
    ledger.close()
