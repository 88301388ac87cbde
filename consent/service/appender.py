"""Group commit: one writer thread turns the appends of many concurrent RPCs into few durable transactions.

Each queued request is judged on its own: the writer concatenates what is waiting (up to `max_group_entries`) and
appends it as ONE store batch — one transaction, one fsync. Because the store judges a batch entry by entry exactly
as if the entries arrived one at a time, a combined batch succeeds iff every request in it would have succeeded in
that order. When it fails, the store names the offending entry; the writer fails only the request that owns it and
retries the rest, so one bad request never sinks another and the outcome equals appending the requests one by one.
Futures resolve only after the commit has returned, i.e. when the entries are durable.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from consent.rules import AppendError

log = logging.getLogger("cohort.ledger.appender")

_STOP = object()


@dataclass
class _Pending:
    entries: list[bytes]
    future: Future = field(default_factory=Future)


class AppendQueue:
    def __init__(
        self,
        append: Callable[[Sequence[bytes]], list[int]],
        max_group_entries: int = 5000,
        max_queued_requests: int = 10_000,
    ):
        self._append = append
        self.max_group_entries = max_group_entries
        # Bounded so a flood of writers waits at submit() (backpressure) instead of growing memory.
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued_requests)
        self._closed = False
        self.groups_committed = 0  # for tests and metrics: how many transactions served how many requests
        self.requests_committed = 0
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def submit(self, entries: Sequence[bytes]) -> Future:
        """Queues one request's entries; the future yields their indices or raises the request's AppendError."""
        if self._closed:
            raise RuntimeError("the ledger is shutting down")
        pending = _Pending(list(entries))
        self._queue.put(pending)
        return pending.future

    def append(self, entries: Sequence[bytes], timeout: float | None = None) -> list[int]:
        return self.submit(entries).result(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Commits everything already queued, then stops the writer."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ---- the writer thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            group, size = [first], len(first.entries)
            while size < self.max_group_entries:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                group.append(nxt)
                size += len(nxt.entries)
            live = [p for p in group if p.future.set_running_or_notify_cancel()]
            try:
                self._commit(live)
            except BaseException as exc:  # never let the writer die with callers waiting on it
                log.exception("ledger writer failed a group of %d requests", len(live))
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)

    def _commit(self, group: list[_Pending]) -> None:
        pending = list(group)
        while pending:
            batch = [e for p in pending for e in p.entries]
            try:
                indices = self._append(batch)
            except AppendError as exc:
                culprit = _owner(pending, exc)
                if culprit is None:
                    self._one_by_one(pending)
                    return
                request, local_index = culprit
                request.future.set_exception(_relocate(exc, local_index))
                pending.remove(request)
                continue
            except Exception:
                # Not attributable to one request (e.g. the database went away): judge each alone.
                self._one_by_one(pending)
                return
            offset = 0
            for p in pending:
                p.future.set_result(indices[offset : offset + len(p.entries)])
                offset += len(p.entries)
            self.groups_committed += 1
            self.requests_committed += len(pending)
            return

    def _one_by_one(self, pending: list[_Pending]) -> None:
        for p in pending:
            try:
                p.future.set_result(self._append(p.entries))
                self.groups_committed += 1
                self.requests_committed += 1
            except Exception as exc:
                p.future.set_exception(exc)


def _owner(pending: list[_Pending], exc: AppendError) -> tuple[_Pending, int | None] | None:
    """The request that holds batch position exc.index, and the position within that request."""
    if len(pending) == 1:
        return pending[0], exc.index
    if exc.index is None:
        return None
    offset = 0
    for p in pending:
        if exc.index < offset + len(p.entries):
            return p, exc.index - offset
        offset += len(p.entries)
    return None


def _relocate(exc: AppendError, local_index: int | None) -> AppendError:
    """The same refusal, numbered as the submitting request sees its own entries."""
    if local_index == exc.index:
        return exc
    message = str(exc)
    prefix = f"entry {exc.index} of the batch: "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    return AppendError(exc.code, message, local_index)
