"""`cohort ledger verify`: re-derive everything the ledger claims from its raw entries, and name the first lie.

One streaming pass in log order recomputes each leaf hash, re-judges each entry with the same rules the append
path used (keys, roles, partner scoping, consent semantics), rebuilds the Merkle tree level by level and checks
every signed checkpoint (and its witnesses) against the recomputed root at its size. The stored perfect-subtree
hashes (what proofs are served from) and the consent index (what eligibility reads) are compared with digests of
their recomputed values. Ed25519 signature checks, the expensive part, run in worker processes that read their
own slices of the log, so both cores are used; memory stays bounded by the page size plus the rules' state.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import select

from consent import merkle
from consent.checkpoints import Checkpoint, verify_checkpoint_signature
from consent.entries import EntryError, parse_entry, signature_of, signed_message
from consent.keys import public_from_b64
from consent.ledger import _far_future
from consent.rules import AppendError, LogState, check_entry
from consent.store import tables as t
from consent.store.engine import open_engine
from consent.store.log import _CONSENT_KIND

_FAR = _far_future()
SIGNATURE_CHUNK = 50_000


@dataclass
class VerifyReport:
    tree_size: int = 0
    entries_checked: int = 0
    signatures_checked: int = 0
    checkpoints_checked: int = 0
    root: bytes = b""
    problems: list[tuple[int | None, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad(self) -> tuple[int | None, str] | None:
        with_index = [p for p in self.problems if p[0] is not None]
        return min(with_index, key=lambda p: p[0]) if with_index else (self.problems[0] if self.problems else None)

    def add(self, index: int | None, reason: str) -> None:
        if len(self.problems) < 1000:  # a wholesale forgery need not exhaust memory to be reported
            self.problems.append((index, reason))


def verify_ledger(url: str, workers: int | None = None, page: int = 20_000) -> VerifyReport:
    started = time.perf_counter()
    report = VerifyReport()
    engine = open_engine(url, migrate=False)
    try:
        with engine.connect() as conn:
            report.tree_size = conn.execute(select(t.head.c.tree_size)).scalar_one()
            key_rows = conn.execute(
                select(t.entries.c.data).where(t.entries.c.entry_type.in_(("key.registered", "key.rotated")))
            ).all()
        keys = _keys_from_log([bytes(r[0]) for r in key_rows])
        workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        chunks = [(url, a, min(a + SIGNATURE_CHUNK, report.tree_size), keys)
                  for a in range(0, report.tree_size, SIGNATURE_CHUNK)]  # fmt: skip
        if workers > 0 and len(chunks) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_verify_signatures, *c) for c in chunks]
                _stream_pass(engine, report, page)
                for fut in futures:
                    n, bad = fut.result()
                    report.signatures_checked += n
                    for idx, reason in bad:
                        report.add(idx, reason)
        else:
            _stream_pass(engine, report, page)
            for c in chunks:
                n, bad = _verify_signatures(*c)
                report.signatures_checked += n
                for idx, reason in bad:
                    report.add(idx, reason)
    finally:
        engine.dispose()
    report.problems.sort(key=lambda p: (p[0] is None, p[0] or 0))
    report.seconds = time.perf_counter() - started
    return report


def _keys_from_log(key_entries: list[bytes]) -> dict[str, str]:
    out = {}
    for data in key_entries:
        try:
            body = parse_entry(data, now=_FAR).body
            out[body["key_id"]] = body["public_key"]
        except (EntryError, KeyError):
            continue  # the streaming pass reports the broken entry itself
    return out


def _verify_signatures(url: str, start: int, end: int, keys: dict[str, str]) -> tuple[int, list[tuple[int, str]]]:
    engine = open_engine(url, migrate=False)
    publics = {}
    bad = []
    n = 0
    try:
        with engine.connect() as conn:
            q = select(t.entries.c.idx, t.entries.c.data).where(t.entries.c.idx >= start, t.entries.c.idx < end)
            for idx, data in conn.execution_options(yield_per=10_000).execute(q):
                try:
                    entry = parse_entry(bytes(data), now=_FAR)
                except EntryError:
                    continue  # reported by the streaming pass
                pub_b64 = keys.get(entry.key_id)
                if pub_b64 is None:
                    continue  # unknown key: the streaming pass names it
                if entry.key_id not in publics:
                    publics[entry.key_id] = public_from_b64(pub_b64)
                n += 1
                try:
                    publics[entry.key_id].verify(signature_of(entry), signed_message(entry))
                except Exception:
                    bad.append((idx, f"entry {idx}: signature does not verify under key {entry.key_id}"))
    finally:
        engine.dispose()
    return n, bad


def _stream_pass(engine, report: VerifyReport, page: int) -> None:
    with engine.connect() as conn:
        checkpoints = conn.execute(select(t.checkpoints).order_by(t.checkpoints.c.tree_size)).all()
        witnesses: dict[int, list] = {}
        for w in conn.execute(select(t.witness_signatures)):
            witnesses.setdefault(w.tree_size, []).append(w)
    cp_at = {c.tree_size: c for c in checkpoints}
    signed: list = []  # (Checkpoint, witness rows): signatures are judged once the log's keys are known
    if 0 in cp_at:
        signed.append(_check_checkpoint(cp_at[0], merkle.EMPTY_ROOT, witnesses, report))
    state = LogState(empty_log=True)
    frontier: list[tuple[int, bytes]] = []  # (level, hash) of perfect subtrees, left to right
    level_digests: dict[int, "hashlib._Hash"] = {}
    events_digest = hashlib.sha256()
    size = 0
    idx_expected = 0
    with engine.connect() as conn:
        q = select(t.entries.c.idx, t.entries.c.data, t.entries.c.leaf_hash).order_by(t.entries.c.idx)
        for idx, data, stored_leaf in conn.execution_options(yield_per=page).execute(q):
            data, stored_leaf = bytes(data), bytes(stored_leaf)
            if idx != idx_expected:
                report.add(idx_expected, f"entry {idx_expected} is missing (next stored index is {idx})")
                idx_expected = idx
            leaf = merkle.leaf_hash(data)
            if leaf != stored_leaf:
                report.add(idx, f"entry {idx}: content does not match its stored leaf hash (entry altered)")
            try:
                entry = parse_entry(data, now=_FAR)
                state.empty_log = idx == 0
                check_entry(entry, leaf, state, idx, verify_signature=False)
                kind = _CONSENT_KIND.get(entry.type)
                if kind:
                    events_digest.update(_event_row(idx, entry, kind))
            except (EntryError, AppendError) as exc:
                report.add(idx, f"entry {idx}: {exc}")
            # Merkle: push the leaf, merge equal-level neighbours; each merge is a stored perfect node.
            h, level = leaf, 0
            while frontier and frontier[-1][0] == level:
                _, left = frontier.pop()
                h = merkle.node_hash(left, h)
                level += 1
                level_digests.setdefault(level, hashlib.sha256()).update(h)
            frontier.append((level, h))
            size = idx + 1
            idx_expected = idx + 1
            report.entries_checked += 1
            if size in cp_at:
                root = merkle.root_from_frontier([fh for _, fh in frontier])
                signed.append(_check_checkpoint(cp_at[size], root, witnesses, report))
    if size != report.tree_size:
        report.add(None, f"head says the log has {report.tree_size} entries but {size} are stored")
    report.root = merkle.root_from_frontier([fh for _, fh in frontier])
    for c in checkpoints:
        if c.tree_size > size:
            report.add(None, f"checkpoint at size {c.tree_size} is beyond the log's {size} entries (log truncated?)")
    report.checkpoints_checked = sum(1 for c in checkpoints if c.tree_size <= size)
    if report.tree_size and not any(k.role == "operator" for k in state.keys.values()):
        report.add(0, "the log registers no operator key")
    _check_signed_checkpoints(signed, state.keys, report)
    _check_stored_nodes(engine, level_digests, report)
    _check_consent_index(engine, events_digest.digest(), report)


def _check_checkpoint(cp, root: bytes, witnesses, report: VerifyReport):
    checkpoint = Checkpoint.from_body(bytes(cp.body), cp.key_id, bytes(cp.signature))
    if checkpoint.tree_size != cp.tree_size:
        report.add(None, f"checkpoint row {cp.tree_size} carries a body for size {checkpoint.tree_size}")
    if checkpoint.root != root:
        report.add(None, f"checkpoint at size {cp.tree_size}: signed root {checkpoint.root.hex()[:16]}… does not "
                         f"match the recomputed root {root.hex()[:16]}…")  # fmt: skip
    return checkpoint, witnesses.get(cp.tree_size, [])


def _event_row(idx: int, entry, kind: str) -> bytes:
    b = entry.body
    parts = [str(idx), b["partner_id"], b["subject_ref"], kind, b.get("consent_id") or "",
             ",".join(sorted(b["purposes"])) if "purposes" in b else "",
             ",".join(sorted(b["data_categories"])) if "data_categories" in b else "", b.get("valid_until") or ""]  # fmt: skip
    return ("\x1f".join(parts) + "\x1e").encode()


def _check_consent_index(engine, expected: bytes, report: VerifyReport) -> None:
    c = t.consent_events.c
    digest = hashlib.sha256()
    with engine.connect() as conn:
        q = select(c.idx, c.partner_id, c.subject_ref, c.kind, c.consent_id, c.purposes, c.categories, c.valid_until)
        for r in conn.execution_options(yield_per=50_000).execute(q.order_by(c.idx)):
            parts = [str(r.idx), r.partner_id, r.subject_ref, r.kind, r.consent_id or "", r.purposes or "",
                     r.categories or "", r.valid_until or ""]  # fmt: skip
            digest.update(("\x1f".join(parts) + "\x1e").encode())
    if digest.digest() != expected:
        report.add(None, "the consent index (consent_events) does not match the log: eligibility would be wrong")


def _check_stored_nodes(engine, level_digests: dict, report: VerifyReport) -> None:
    with engine.connect() as conn:
        levels = [r[0] for r in conn.execute(select(t.tree_nodes.c.level).distinct())]
        for level in sorted(set(levels) | set(level_digests)):
            digest = hashlib.sha256()
            q = select(t.tree_nodes.c.hash).where(t.tree_nodes.c.level == level).order_by(t.tree_nodes.c.idx)
            for (h,) in conn.execution_options(yield_per=50_000).execute(q):
                digest.update(bytes(h))
            want = level_digests.get(level, hashlib.sha256()).digest()
            if digest.digest() != want:
                report.add(None, f"stored tree nodes at level {level} do not match the entries (proofs would lie)")


def _check_signed_checkpoints(signed: list, keys: dict, report: VerifyReport) -> None:
    """Checkpoint and witness signatures, against the keys the log itself registers (not the mutable key table)."""
    for checkpoint, wits in signed:
        key = keys.get(checkpoint.key_id)
        if key is None or key.role != "operator":
            report.add(None, f"checkpoint at size {checkpoint.tree_size} is signed by {checkpoint.key_id}, "
                             "which is not a registered operator key")  # fmt: skip
        elif not verify_checkpoint_signature(checkpoint, key._public):
            report.add(None, f"checkpoint at size {checkpoint.tree_size}: operator signature does not verify")
        for w in wits:
            wkey = keys.get(w.key_id)
            if wkey is None or not verify_checkpoint_signature(checkpoint, wkey._public, bytes(w.signature)):
                report.add(None, f"checkpoint at size {checkpoint.tree_size}: witness {w.key_id} signature invalid")
