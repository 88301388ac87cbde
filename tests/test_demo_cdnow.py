"""`cohort demo --data cdnow`: the real CDNOW log split into three non-IID partners runs the whole flow, and a
job only ever reads the data categories its subjects granted."""

from __future__ import annotations

import pytest
from rich.console import Console

from client.cdnow import CDNOWPartners
from cohort.demo import evaluation_users, run_demo
from cohort.demo_world import CDNOW_CATEGORIES

pytestmark = pytest.mark.slow


def test_cdnow_partners_without_a_held_out_fold_cover_every_customer_once():
    data = CDNOWPartners(by="cohort", test_fold=None)
    tables = [data.features(p, CDNOW_CATEGORIES) for p in data.partners]
    ids = [str(u) for t in tables for u in t.user_ids]
    assert len(ids) == len(set(ids)) == 23_570
    assert all(len(t) > 5_000 for t in tables)  # non-IID, but no partner is tiny


def test_cdnow_partner_columns_follow_the_job_categories():
    data = CDNOWPartners(by="cohort", test_fold=None)
    both = data.features("A", ("basic", "transaction"))
    only = data.features("A", ("transaction",))
    assert set(both.feature_categories) == {"basic", "transaction"}
    assert set(only.feature_categories) == {"transaction"} and only.X.shape[1] < both.X.shape[1]


def test_cdnow_demo_trains_audits_and_proves_the_withdrawals(tmp_path):
    demo = run_demo(tmp_path, rounds=1, epsilon=3.0, seed=3, console=Console(quiet=True), data="cdnow")
    assert demo.verify_ok and demo.audit_ok and demo.rights.ok
    assert demo.rights.subjects > 3 * 100  # 5% of each partner's ~6,000 consenting customers, plus one erasure
    assert tuple(demo.result.job.categories) == CDNOW_CATEGORIES
    assert {r["partner"] for r in demo.comparison} == {"A", "B", "C"}
    # CDNOW has no other customers: the table scores each partner's held-out eligible customers, as in the product
    assert evaluation_users(CDNOWPartners(by="cohort", test_fold=None), CDNOW_CATEGORIES) is None
    assert all(500 < r["n"] < 0.2 * 23570 for r in demo.comparison)
    assert all(0.5 < r["churn_auc"] <= 1.0 for r in demo.comparison if r["model"] == "federated, DP")
