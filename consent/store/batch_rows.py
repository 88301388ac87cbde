"""What a batch of parsed entries adds to each table of the log, and the thread that writes it while the
appending thread judges the batch (``consent.store.log``)."""

from __future__ import annotations

import threading

from consent.entries import SignedEntry
from consent.store.sql import Sql

CONSENT_KIND = {
    "consent.given": "given",
    "consent.refused": "refused",
    "consent.withdrawn": "withdrawn",
    "consent.expired": "expired",
    "subject.erasure_requested": "erasure",
}


class BatchRows:
    """The rows a batch adds to each table; a pure function of the parsed entries, built on demand."""

    def __init__(self, batch: list[SignedEntry], leaves: list[bytes], start: int, existing_subjects: set[str]):
        self.batch, self.leaves, self.start, self.existing_subjects = batch, leaves, start, existing_subjects
        self.built = False

    def build(self) -> None:
        if self.built:
            return
        entries, events, consents, keys, revoked = [], [], [], [], []
        erasure, erased = [], []
        new_subjects: dict[str, tuple] = {}
        existing = self.existing_subjects
        idx = self.start
        for e, leaf in zip(self.batch, self.leaves):
            body = e.body
            etype = e.type
            ref = body.get("subject_ref")
            if not isinstance(ref, str):
                ref = None
            partner = body.get("partner_id")
            entries.append((idx, leaf, e.data, etype, e.key_id, partner if isinstance(partner, str) else None, ref))
            kind = CONSENT_KIND.get(etype)
            if kind:
                events.append((
                    idx, body["partner_id"], ref, kind, body.get("consent_id"),
                    ",".join(sorted(body["purposes"])) if "purposes" in body else None,
                    ",".join(sorted(body["data_categories"])) if "data_categories" in body else None,
                    body.get("valid_until"),
                ))  # fmt: skip
            if etype == "consent.given" or etype == "consent.refused":
                consents.append((body["consent_id"], body["partner_id"], ref, etype, idx))
            if ref is not None and etype.startswith(("consent.", "subject.")):
                if ref not in existing and ref not in new_subjects:
                    new_subjects[ref] = (ref, body["partner_id"], idx)
            if etype == "subject.erasure_requested":
                erasure.append((idx, ref))
            elif etype == "subject.erased":
                erased.append((idx, ref))
            elif etype == "key.registered" or etype == "key.rotated":
                keys.append({"key_id": body["key_id"], "identity": body["identity"], "role": body["role"],
                             "public_key": body["public_key"], "registered_idx": idx, "revoked_idx": None})  # fmt: skip
                if etype == "key.rotated":
                    revoked.append((body["replaces"], idx))
            idx += 1
        self.entries, self.events, self.consents, self.new_subjects = entries, events, consents, new_subjects
        self.keys, self.revoked, self.erasure, self.erased = keys, revoked, erasure, erased
        self.built = True


class Writer:
    """Runs write(sql, rows) in a thread; join() returns (result, exception)."""

    def __init__(self, write, sql: "Sql", rows: BatchRows):
        self.rows = rows
        self._result = self._error = None
        self._thread = threading.Thread(target=self._run, args=(write, sql, rows), name="ledger-append-writer")
        self._thread.start()

    def _run(self, write, sql, rows) -> None:
        try:
            self._result = write(sql, rows)
        except BaseException as exc:  # handed to the appending thread
            self._error = exc

    def join(self):
        self._thread.join()
        return self._result, self._error
