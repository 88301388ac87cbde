"""Group commit: many requests share one transaction, yet each is judged alone and acknowledged only when durable."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from consent.client import LedgerRPCError
from consent.rules import AppendError
from consent.service.appender import AppendQueue
from test_service_support import consent_body, decisions, forge, running_env


class FakeStore:
    """Store semantics in miniature: all-or-nothing batches; b"bad" entries refused, naming their position."""

    def __init__(self, fail_groups_with=None):
        self.log: list[bytes] = []
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_groups_with = fail_groups_with

    def append(self, batch):
        self.gate.wait(10)
        self.calls.append(len(batch))
        for i, e in enumerate(batch):
            if e == b"bad":
                raise AppendError("INVALID_ARGUMENT", "bad entry", i)
        if self.fail_groups_with and len(batch) > 1:
            raise self.fail_groups_with
        start = len(self.log)
        self.log += batch
        return list(range(start, len(self.log)))


def _queued_behind_a_slow_commit(store: FakeStore, requests: list[list[bytes]]):
    q = AppendQueue(store.append)
    store.gate.clear()
    first = q.submit([b"first"])  # the writer blocks on this one while the rest queue up
    deadline = time.monotonic() + 5
    while q._queue.qsize() and time.monotonic() < deadline:
        time.sleep(0.001)  # until the writer has taken it
    futures = [q.submit(r) for r in requests]
    store.gate.set()
    return q, first, futures


def test_one_bad_request_does_not_fail_its_group():
    store = FakeStore()
    q, first, futures = _queued_behind_a_slow_commit(store, [[b"a1", b"a2"], [b"b1", b"bad"], [b"c1"]])
    assert first.result(5) == [0]
    assert futures[0].result(5) == [1, 2]
    with pytest.raises(AppendError) as err:
        futures[1].result(5)
    assert err.value.index == 1 and str(err.value).startswith("entry 1 of the batch")
    assert futures[2].result(5) == [3]
    assert store.log == [b"first", b"a1", b"a2", b"c1"]
    assert store.calls[1:] == [5, 3]  # one combined try, then the group without the bad request
    q.close()


def test_unattributable_failure_falls_back_to_one_request_at_a_time():
    store = FakeStore(fail_groups_with=RuntimeError("database hiccup"))
    q, first, futures = _queued_behind_a_slow_commit(store, [[b"a"], [b"b"]])
    assert first.result(5) == [0]
    assert [f.result(5) for f in futures] == [[1], [2]]
    q.close()


def test_close_commits_what_is_queued():
    store = FakeStore()
    q, first, futures = _queued_behind_a_slow_commit(store, [[b"x"], [b"y"]])
    q.close()
    assert all(f.done() for f in futures) and store.log == [b"first", b"x", b"y"]
    with pytest.raises(RuntimeError):
        q.submit([b"late"])


def test_concurrent_rpcs_mixed_good_and_bad(tmp_path):
    with running_env("sqlite", tmp_path) as env:
        good_desks = {p: env.desk(p) for p in ("partner-a", "partner-b")}
        batches = {p: [d.consent_entries(decisions(f"{p}-{k}-", 3)) for k in range(15)] for p, d in good_desks.items()}
        ref = next(iter(good_desks["partner-a"].subject_refs(["partner-a-0-0"]).values()))
        bad = forge("consent.given", consent_body("partner-a", ref, purposes=["resale"]), env.keys["partner-a"])
        size_before = env.client("auditor").tree_size()

        def send(job):
            partner, entries = job
            try:
                return "ok", env.client(partner).append(entries)
            except LedgerRPCError as exc:
                return exc.code, None

        jobs = [(p, b) for p in batches for b in batches[p]] + [("partner-a", [bad])] * 10
        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(send, jobs))
        oks = [r for code, r in results if code == "ok"]
        assert len(oks) == 30 and [c for c, _ in results[30:]] == ["INVALID_ARGUMENT"] * 10
        indices = sorted(i for r in oks for i in r)
        assert indices == list(range(size_before, size_before + 90))
        stored = dict(env.client("auditor").entries(size_before, size_before + 90))
        for (p, b), (code, idx) in zip(jobs, results):
            if code == "ok":
                assert [stored[i] for i in idx] == [e.data for e in b]
        appender = env.server.appender
        assert appender.requests_committed >= 30 and appender.groups_committed <= appender.requests_committed
