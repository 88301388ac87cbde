"""`cohort ledger verify`: re-derive everything the ledger claims from its raw entries, and name the first lie.

One streaming pass in log order recomputes each leaf hash, re-judges each entry with the same rules the append
path used (keys, roles, partner scoping, consent semantics), rebuilds the Merkle tree level by level and checks
every signed checkpoint (and its witnesses) against the recomputed root at its size. The stored perfect-subtree
hashes (what proofs are served from) and the consent index (what eligibility reads) are compared with digests of
their recomputed values. The expensive, order-free part of each entry, the parse (canonical form, fields, body
rules) and the Ed25519 check, runs in worker processes that read their own chunks of the log; the streaming pass
takes their parse verdicts in order and only re-reads the JSON, and takes back any chunk no worker has started
when it gets there, so both cores stay busy. Memory stays bounded by the page size plus the rules' state.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import select

from consent import merkle, sigcheck
from consent.canonical import CanonicalError
from consent.canonical import decode as decode_json
from consent.checkpoints import Checkpoint, verify_checkpoint_signature
from consent.entries import EntryError, SignedEntry, parse_entry, signature_of, signed_message
from consent.keys import public_from_b64
from consent.ledger import _far_future
from consent.rules import AppendError, LogState, apply_entry, signing_key
from consent.store import tables as t
from consent.store.engine import open_engine
from consent.store.batch_rows import CONSENT_KIND

_FAR = _far_future()
CHUNK = 10_000  # entries per unit of work for the parse-and-signature workers
PARALLEL_FROM = 20_000  # smaller logs are verified in-process: starting workers would cost more than it saves


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
        size = report.tree_size
        chunks = [(url, a, min(a + CHUNK, size), keys) for a in range(0, size, CHUNK)]
        if workers > 0 and size > PARALLEL_FROM:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = _ChunkResults(chunks, [pool.submit(_check_chunk, *c) for c in chunks])
                try:
                    # While the workers start on the first chunks, this process digests the stored indexes.
                    digests = _stored_node_digests(engine), _consent_index_digest(engine)
                    _stream_pass(engine, report, page, digests, results)
                    done = results.all()
                finally:
                    results.cancel()
        else:
            _stream_pass(engine, report, page, None, None)
            done = [_check_chunk(*c) for c in chunks]
        for checked, bad, _, _ in done:
            report.signatures_checked += checked
            for idx, key_id in bad:
                report.add(idx, f"entry {idx}: signature does not verify under key {key_id}")
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
            public_from_b64(body["public_key"])
            out[body["key_id"]] = body["public_key"]
        except (EntryError, KeyError, TypeError, ValueError):
            continue  # the streaming pass reports the broken entry itself
    return out


def _rows(engine, statement: str, page: int) -> Iterator[tuple]:
    """Rows of a plain SELECT, streamed in pages (bounded memory on any log size), with little per-row cost."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            cur = conn.connection.cursor()
            try:
                cur.execute(statement)
                while rows := cur.fetchmany(page):
                    yield from rows
            finally:
                cur.close()
        else:
            result = conn.execution_options(stream_results=True, yield_per=page).exec_driver_sql(statement)
            for part in result.partitions():
                yield from part


# What a worker learns about entries start..end-1: (signatures checked, [(index, key id) that do not verify],
# {index: why the entry does not parse}, indices in the range with no stored entry).
ChunkResult = tuple[int, list[tuple[int, str]], dict[int, str], list[int]]


def _check_chunk(url: str, start: int, end: int, keys: dict[str, str]) -> ChunkResult:
    """Parses entries start..end-1 and checks the signature of each that parses and names a key of the log.

    Run in worker processes: the parse (canonical form, fields, body rules) and the Ed25519 check are most of the
    cost of a verification, and need nothing from the entries before. The streaming pass then reuses the parse
    verdicts (it re-reads the JSON, not the rules) and judges the entries in order."""
    engine = open_engine(url, migrate=False)
    publics: dict[str, sigcheck.PublicKey] = {}
    bad: list[tuple[int, str]] = []
    errors: dict[int, str] = {}
    absent: list[int] = []
    checked = 0
    expected = start
    split = sigcheck.split_signature
    b64decode = base64.b64decode
    statement = f"SELECT idx, data FROM entries WHERE idx >= {int(start)} AND idx < {int(end)} ORDER BY idx"
    try:
        for idx, data in _rows(engine, statement, 5_000):
            if idx != expected:
                absent.extend(range(expected, idx))
            expected = idx + 1
            data = bytes(data)
            try:
                entry = parse_entry(data, now=_FAR)
            except EntryError as exc:
                errors[idx] = str(exc)
                continue
            key_id = entry.key_id
            pub_b64 = keys.get(key_id)
            if pub_b64 is None:
                continue  # unknown key: the streaming pass names it
            if key_id not in publics:
                publics[key_id] = sigcheck.public_key(pub_b64, public_from_b64(pub_b64))
            checked += 1
            try:
                cut = split(data)
                if cut is not None and cut[0] == key_id:  # the canonical bytes, cut: no re-encoding
                    good = publics[key_id].verify(b64decode(cut[1], validate=True), cut[2])
                else:
                    good = publics[key_id].verify(signature_of(entry), signed_message(entry))
            except Exception:
                good = False
            if not good:
                bad.append((idx, key_id))
    finally:
        engine.dispose()
    absent.extend(range(expected, end))
    return checked, bad, errors, absent


class _ChunkResults:
    """The workers' chunk results, read in log order by the streaming pass. While the chunk it needs next is still
    being worked on, this process takes the LAST chunk no worker has started and does it itself (work stealing
    from the tail), so neither side idles while the other has work."""

    def __init__(self, chunks: list, futures: list[Future]):
        self.chunks, self.futures = chunks, futures
        self.done: list[ChunkResult | None] = [None] * len(chunks)
        self.k = 0
        self.tail = len(chunks) - 1  # chunks above this one are done or taken

    def result(self, k: int) -> ChunkResult:
        fut = self.futures[k]
        while self.done[k] is None and not fut.done():
            if not self._steal(k):
                break
        if self.done[k] is None:
            self.done[k] = _check_chunk(*self.chunks[k]) if fut.cancel() else fut.result()
        return self.done[k]

    def _steal(self, k: int) -> bool:
        """Does one not-yet-started chunk after k in this process; False if there is none."""
        while self.tail > k:
            j = self.tail
            self.tail -= 1
            if self.done[j] is None and self.futures[j].cancel():
                self.done[j] = _check_chunk(*self.chunks[j])
                return True
        return False

    def parse_verdict(self, idx: int) -> tuple[bool, str | None]:
        """(known, error): known=False if no chunk vouches for entry idx; else error is None if it parses."""
        chunks = self.chunks
        while self.k < len(chunks) and idx >= chunks[self.k][2]:
            self.k += 1
        if self.k == len(chunks) or idx < chunks[self.k][1]:
            return False, None
        _, _, errors, absent = self.result(self.k)
        if absent and idx in absent:
            return False, None
        return True, errors.get(idx)

    def all(self) -> list[ChunkResult]:
        return [self.result(k) for k in range(len(self.chunks))]

    def cancel(self) -> None:
        for fut in self.futures:
            fut.cancel()


def _stream_pass(engine, report: VerifyReport, page: int, digests, results: _ChunkResults | None) -> None:
    """Re-judges the log in order: leaf hashes, rules, Merkle tree, checkpoints, stored nodes, consent index."""
    with engine.connect() as conn:
        checkpoints = conn.execute(select(t.checkpoints).order_by(t.checkpoints.c.tree_size)).all()
        witnesses: dict[int, list] = {}
        for w in conn.execute(select(t.witness_signatures)):
            witnesses.setdefault(w.tree_size, []).append(w)
    cp_at = {c.tree_size: c for c in checkpoints}
    signed: list = []  # (size, Checkpoint, witness rows): signatures are judged once the log's keys are known
    if 0 in cp_at:
        signed.append(_check_checkpoint(cp_at[0], merkle.EMPTY_ROOT, witnesses, report))
    signed = [s for s in signed if s is not None]
    state = LogState(empty_log=True)
    frontier: list[tuple[int, bytes]] = []  # (level, hash) of perfect subtrees, left to right
    level_digests: dict[int, "hashlib._Hash"] = {}
    events_digest = hashlib.sha256()
    size = 0
    idx_expected = 0
    sha256 = hashlib.sha256
    loads = decode_json
    consent_kind = CONSENT_KIND
    add = report.add
    checked = 0
    for idx, data, stored_leaf in _rows(engine, "SELECT idx, data, leaf_hash FROM entries ORDER BY idx", page):
        if type(data) is not bytes:
            data = bytes(data)
        if idx != idx_expected:
            add(idx_expected, f"entry {idx_expected} is missing (next stored index is {idx})")
            idx_expected = idx
        leaf = sha256(b"\x00" + data).digest()
        if leaf != stored_leaf:
            add(idx, f"entry {idx}: content does not match its stored leaf hash (entry altered)")
        entry = None
        known, error = results.parse_verdict(idx) if results is not None else (False, None)
        if not known:
            try:
                entry = parse_entry(data, now=_FAR)
            except EntryError as exc:
                error = str(exc)
        elif error is None:
            # A worker ran parse_entry on these very bytes and it passed: only the JSON is needed again.
            entry = SignedEntry(data=data, fields=loads(data))
        if entry is None:
            add(idx, f"entry {idx}: {error}")
        else:
            try:
                state.empty_log = idx == 0
                key = signing_key(entry, leaf, state, idx)
                apply_entry(entry, leaf, key, state, idx)
                kind = consent_kind.get(entry.fields["type"])
                if kind:
                    events_digest.update(_event_row(idx, entry, kind))
            except (EntryError, AppendError) as exc:
                add(idx, f"entry {idx}: {exc}")
            except Exception as exc:  # never expected of a parsed entry; still a finding, never a crash
                add(idx, f"entry {idx}: cannot be judged ({exc!r})")
        # Merkle: push the leaf, merge equal-level neighbours; each merge is a stored perfect node.
        h, level = leaf, 0
        while frontier and frontier[-1][0] == level:
            h = sha256(b"\x01" + frontier.pop()[1] + h).digest()
            level += 1
            d = level_digests.get(level)
            if d is None:
                d = level_digests[level] = sha256()
            d.update(h)
        frontier.append((level, h))
        size = idx + 1
        idx_expected = size
        checked += 1
        if size in cp_at:
            root = merkle.root_from_frontier([fh for _, fh in frontier])
            judged = _check_checkpoint(cp_at[size], root, witnesses, report)
            if judged is not None:
                signed.append(judged)
    report.entries_checked += checked
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
    stored_nodes, consent_index = digests or (_stored_node_digests(engine), _consent_index_digest(engine))
    _check_stored_nodes(stored_nodes, level_digests, report)
    _check_consent_index(consent_index, events_digest.digest(), report)


def _check_checkpoint(cp, root: bytes, witnesses, report: VerifyReport):
    """(Checkpoint, witness rows) to have its signatures judged, or None when its stored body is not a checkpoint
    body at all (reported here, naming the checkpoint)."""
    try:
        checkpoint = Checkpoint.from_body(bytes(cp.body), cp.key_id, bytes(cp.signature))
        if type(checkpoint.tree_size) is not int or not isinstance(checkpoint.origin, str) or not isinstance(
            checkpoint.ts, str
        ):
            raise TypeError("origin, tree_size or ts has the wrong type")
    except (CanonicalError, KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        report.add(None, f"checkpoint at size {cp.tree_size}: stored body is corrupt ({what}); its signature "
                         "cannot be checked")  # fmt: skip
        return None
    if checkpoint.tree_size != cp.tree_size:
        report.add(None, f"checkpoint at size {cp.tree_size}: its signed body is for size {checkpoint.tree_size}")
    if checkpoint.root != root:
        report.add(None, f"checkpoint at size {cp.tree_size}: signed root {checkpoint.root.hex()[:16]}… does not "
                         f"match the recomputed root {root.hex()[:16]}…")  # fmt: skip
    return cp.tree_size, checkpoint, witnesses.get(cp.tree_size, [])


def _event_row(idx: int, entry, kind: str) -> bytes:
    b = entry.body
    parts = [str(idx), b["partner_id"], b["subject_ref"], kind, b.get("consent_id") or "",
             ",".join(sorted(b["purposes"])) if "purposes" in b else "",
             ",".join(sorted(b["data_categories"])) if "data_categories" in b else "", b.get("valid_until") or ""]  # fmt: skip
    return ("\x1f".join(parts) + "\x1e").encode()


def _consent_index_digest(engine) -> bytes:
    digest = hashlib.sha256()
    q = ("SELECT idx, partner_id, subject_ref, kind, consent_id, purposes, categories, valid_until "
         "FROM consent_events ORDER BY idx")  # fmt: skip
    for idx, partner, ref, kind, consent_id, purposes, categories, valid_until in _rows(engine, q, 50_000):
        parts = [str(idx), partner, ref, kind, consent_id or "", purposes or "", categories or "", valid_until or ""]
        digest.update(("\x1f".join(parts) + "\x1e").encode())
    return digest.digest()


def _check_consent_index(stored: bytes, expected: bytes, report: VerifyReport) -> None:
    if stored != expected:
        report.add(None, "the consent index (consent_events) does not match the log: eligibility would be wrong")


def _stored_node_digests(engine) -> dict[int, bytes]:
    """SHA-256 over the stored hashes of each level, in index order."""
    out: dict[int, bytes] = {}
    digest = None
    current = None
    for level, h in _rows(engine, "SELECT level, hash FROM tree_nodes ORDER BY level, idx", 50_000):
        if level != current:
            if digest is not None:
                out[current] = digest.digest()
            digest, current = hashlib.sha256(), level
        digest.update(h)
    if digest is not None:
        out[current] = digest.digest()
    return out


def _check_stored_nodes(stored: dict[int, bytes], level_digests: dict, report: VerifyReport) -> None:
    empty = hashlib.sha256().digest()
    for level in sorted(set(stored) | set(level_digests)):
        want = level_digests[level].digest() if level in level_digests else empty
        if stored.get(level, empty) != want:
            report.add(None, f"stored tree nodes at level {level} do not match the entries (proofs would lie)")


def _check_signed_checkpoints(signed: list, keys: dict, report: VerifyReport) -> None:
    """Checkpoint and witness signatures, against the keys the log itself registers (not the mutable key table)."""
    for size, checkpoint, wits in signed:  # size: the row's, which names the checkpoint even if its body lies
        key = keys.get(checkpoint.key_id)
        if key is None or key.role != "operator":
            report.add(None, f"checkpoint at size {size} is signed by {checkpoint.key_id}, which is not a registered "
                             "operator key")  # fmt: skip
        elif not verify_checkpoint_signature(checkpoint, key._public):
            report.add(None, f"checkpoint at size {size}: operator signature does not verify")
        for w in wits:
            wkey = keys.get(w.key_id)
            if wkey is None or not verify_checkpoint_signature(checkpoint, wkey._public, bytes(w.signature)):
                report.add(None, f"checkpoint at size {size}: witness {w.key_id} signature invalid")
