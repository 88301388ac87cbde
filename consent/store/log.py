"""The append path and the read path of the log over SQLAlchemy: batched, all-or-nothing, durable on return.

One transaction per batch: lock the head row, judge every entry against the log (consent.rules), insert the
entries, the new perfect-subtree hashes and the derived indexes, move the head, commit. Only after the commit
returns are indices handed back, so an acknowledged entry survives a crash.

Large batches take a faster road to the same outcome. Their Ed25519 signatures go to worker processes
(consent.sigcheck) before the batch is even parsed, and a share of them is kept back to verify here; the rows are
sent to the database by a writer thread while this thread runs the rules, the signature step left for last. The
statements are plain DBAPI calls (COPY and pipelines on PostgreSQL, a handful of round trips per batch), and the
Merkle frontier is kept in memory between appends. Whatever the road, the batch is refused, with the same error,
exactly when entry-by-entry checking would refuse it, and nothing of a refused batch is stored.

The rows a batch adds and the writer thread are ``consent.store.batch_rows``; the DBAPI statements are
``consent.store.sql``.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Iterator, Sequence

from sqlalchemy import Engine, or_, select, update

from consent import merkle, sigcheck
from consent.canonical import decode as decode_json
from consent.checkpoints import Checkpoint, sign_checkpoint
from consent.entries import EntryError, SignedEntry, parse_entry
from consent.keys import Identity
from consent.rules import (
    INVALID_ARGUMENT,
    AppendError,
    ConsentRecord,
    KeyRecord,
    LogState,
    SIGNATURE_BAD,
    SIGNATURE_NOT_BASE64,
    SIGNATURE_OK,
    SubjectRecord,
    apply_entry,
    check_entry,
    check_signature,
    signature_verdict,
    signing_key,
)
from consent.store import tables as t
from consent.store.batch_rows import BatchRows, Writer
from consent.store.engine import open_engine
from consent.store.members import member_clauses
from consent.store.sql import Sql

_ENTRY_COLUMNS = ("idx", "leaf_hash", "data", "entry_type", "key_id", "partner_id", "subject_ref")
_NODE_COLUMNS = ("level", "idx", "hash")
_EVENT_COLUMNS = ("idx", "partner_id", "subject_ref", "kind", "consent_id", "purposes", "categories", "valid_until")
_CONSENT_COLUMNS = ("consent_id", "partner_id", "subject_ref", "kind", "idx")
_SUBJECT_COLUMNS = ("subject_ref", "partner_id", "first_idx")


class LedgerStore:
    """The ledger's log in a SQL database. Thread-safe; several processes may append to one PostgreSQL."""

    def __init__(self, engine: Engine, origin: str = "cohort-ledger"):
        self.engine = engine
        self.origin = origin
        self._lock = threading.Lock()
        self._keys: dict[str, KeyRecord] = {}  # hints for the signature workers; the rules read keys from the db
        self._notices: dict[tuple[str, str, str], str] = {}  # published notices seen: (partner, id, version) -> sha256
        self._frontier: tuple[int, dict[tuple[int, int], bytes]] | None = None  # (tree size, its frontier nodes)
        self._inline_share = 0.1  # of a large batch's signatures verified here rather than by the workers
        with engine.begin() as conn:
            if conn.execute(select(t.head.c.tree_size)).first() is None:
                conn.execute(t.head.insert().values(id=1, tree_size=0))

    @classmethod
    def open(cls, url: str, origin: str = "cohort-ledger", migrate: bool = True) -> "LedgerStore":
        return cls(open_engine(url, migrate=migrate), origin=origin)

    def close(self) -> None:
        self.engine.dispose()

    # ---- append -------------------------------------------------------------------------------------------

    # From this many entries on, signatures are checked in worker processes (consent.sigcheck) while this
    # process parses the batch and reads the log state; smaller batches are not worth the hand-off.
    parallel_verify_min = 32

    def append(self, batch: Sequence[SignedEntry | bytes]) -> list[int]:
        """Appends the batch atomically and returns the leaf indices; raises AppendError and stores nothing."""
        pending = self._check_signatures_ahead(batch) if len(batch) >= self.parallel_verify_min else None
        confirm = None  # with workers: raises the batch's parse error, if any, once their verdicts are in
        try:
            if pending is None:
                parsed = [self._parse(item, i) for i, item in enumerate(batch)]
            else:
                parsed, confirm = self._parse_with_workers(batch, pending)
        except BaseException:
            _cancel(pending)
            raise
        if not parsed:
            return []
        leaf_hash = merkle.leaf_hash
        leaves = [leaf_hash(e.data) for e in parsed]
        with self._lock:
            try:
                with self.engine.begin() as conn:
                    sql = Sql(conn)
                    try:
                        start, state = self._state_for(sql, parsed, leaves)
                    except Exception:
                        if confirm is not None:
                            confirm()  # entries that do not parse explain it, and are what must be reported
                        raise
                    existing_subjects = set(state.subjects)
                    if pending is None:
                        for i, (entry, leaf) in enumerate(zip(parsed, leaves)):
                            check_entry(entry, leaf, state, i)
                        rows = BatchRows(parsed, leaves, start, existing_subjects)
                        frontier = self._write(sql, rows)
                        self._finish(sql, rows, state)
                    else:
                        writer = Writer(self._write, sql, BatchRows(parsed, leaves, start, existing_subjects))
                        if confirm is not None:
                            try:
                                confirm()
                            except BaseException:
                                writer.join()
                                raise
                        frontier = self._judge_and_insert(parsed, leaves, state, pending, writer, sql)
            except BaseException:
                _cancel(pending)
                raise
            # Committed: only now may the caches move on.
            self._frontier = frontier
            self._keys.update({k: v for k, v in state.keys.items()})
            self._notices.update(state.notices)
        return list(range(start, start + len(parsed)))

    def _judge_and_insert(self, parsed, leaves, state, pending: sigcheck.Pending, writer: "Writer", sql):
        """check_entry for every entry, and the inserts, while the workers are still verifying signatures.

        The rows of a batch do not depend on the verdicts, only whether they are committed does: a writer thread
        sends them to the database (which works on them, and the DBAPI waits for it, without the GIL) while this
        thread runs the rules with the signature step left out, remembering each entry's key, and verifies the
        share of signatures kept back from the workers. The verdicts are read last. The error raised is still the
        one sequential checking gives: a bad signature at j wins over any later failure, and over a failure at j
        itself after the signature step (role, scope, semantics); a write error only counts if the rules pass."""
        keys_used: list[KeyRecord] = []
        failure: BaseException | None = None
        limit = len(parsed)  # entries whose signatures sequential checking would have verified
        try:
            for i, (entry, leaf) in enumerate(zip(parsed, leaves)):
                try:
                    key = signing_key(entry, leaf, state, i)
                except Exception as exc:
                    failure, limit = exc, i
                    break
                keys_used.append(key)
                try:
                    apply_entry(entry, leaf, key, state, i)
                except Exception as exc:
                    failure, limit = exc, i + 1
                    break
            # The tail of the batch kept back from the workers is verified here, while they finish theirs.
            own = [(_inline_verdict(parsed[i], keys_used[i]), keys_used[i].public_key) for i in range(pending.n, limit)]
        finally:
            frontier, write_error = writer.join()
        if failure is None and write_error is not None:
            failure = write_error  # never expected (the rules saw every row coming); signatures still go first
        if failure is None:
            try:
                self._finish(sql, writer.rows, state)
            except Exception as exc:
                failure = exc
        verdicts = self._verdicts(pending, parsed)
        # Steer the share kept in-process (parsed and verified here) so that this thread does not wait for the
        # workers, nor they for it (2 ms of slack per batch).
        if pending.waited > 0.002:
            self._inline_share = min(0.5, self._inline_share + 0.03)
        else:
            self._inline_share = max(0.0, self._inline_share - 0.01)
        verdicts[pending.n : limit] = own
        for i in range(limit):
            check_signature(parsed[i], keys_used[i], i, verdicts[i])
        if failure is not None:
            raise failure
        return frontier

    def _parse_with_workers(self, batch: Sequence[SignedEntry | bytes], pending: sigcheck.Pending):
        """(entries, confirm): the batch parsed, the entries sent to the workers validated there (parse_entry),
        the rest here. While the workers run parse_entry, this thread decodes the JSON of the same bytes: an entry
        they pass is SignedEntry(bytes, that JSON), exactly what parse_entry returns. So that the log's write lock,
        the reads and the inserts need not wait for their verdicts, the entries are returned at once, with
        `confirm`, which raises the error for the first entry in the batch that does not parse (as parsing here
        one by one would) and must be called before anything is judged or committed; confirm is None when the
        verdicts were already needed here."""
        datas = [bytes(item.data if isinstance(item, SignedEntry) else item) for item in batch]
        sent = pending.n
        head: list[SignedEntry | None] = []
        for data in datas[:sent]:
            try:
                fields = decode_json(data)
            except Exception:
                fields = None  # the workers' parse_entry says why
            head.append(SignedEntry(data=data, fields=fields) if type(fields) is dict else None)
        own: list[SignedEntry] = []
        own_error = None
        for i in range(sent, len(datas)):
            try:
                own.append(self._parse(datas[i], i))
            except AppendError as exc:
                own_error = exc
                break

        def confirm() -> None:
            errors = pending.parse_errors()
            if errors is None:  # the workers could not say: parse here
                for i in range(sent):
                    self._parse(datas[i], i)
            elif errors:
                position, message = errors[0]
                raise AppendError(INVALID_ARGUMENT, message, position)
            if own_error is not None:
                raise own_error

        if own_error is not None or any(e is None for e in head):
            confirm()  # the batch is refused: wait for the verdicts that name the first bad entry
            head = [e if e is not None else self._parse(datas[i], i) for i, e in enumerate(head)]
            return head + own, None
        return head + own, confirm

    @staticmethod
    def _parse(item: SignedEntry | bytes, position: int) -> SignedEntry:
        if isinstance(item, SignedEntry):
            item = item.data
        if not isinstance(item, (bytes, bytearray)):
            raise AppendError(INVALID_ARGUMENT, f"entry must be bytes, got {type(item).__name__}", position)
        try:
            return parse_entry(bytes(item))
        except EntryError as exc:
            raise AppendError(INVALID_ARGUMENT, str(exc), position) from None

    def _check_signatures_ahead(self, batch: Sequence[SignedEntry | bytes]) -> sigcheck.Pending | None:
        """Hands the batch's signatures to worker processes (keys this store has seen), or None: check here."""
        datas = []
        for item in batch:
            data = item.data if isinstance(item, SignedEntry) else item
            if not isinstance(data, (bytes, bytearray)):
                return None  # the parse reports it; nothing to win
            datas.append(bytes(data))
        keys = {}
        for data in datas:
            kid = _key_id_hint(data)
            if kid is not None and kid not in keys:
                rec = self._keys.get(kid)
                if rec is not None and not rec.revoked:
                    keys[kid] = rec.public_key
        if not keys:
            return None  # keys not cached yet (first batch of a process): verified in-process
        keep = int(len(datas) * self._inline_share)
        return sigcheck.POOL.submit(datas[: len(datas) - keep], keys, parse=True)

    @staticmethod
    def _verdicts(pending: sigcheck.Pending | None, parsed: list[SignedEntry]) -> list[tuple[int, str] | None] | None:
        if pending is None:
            return None
        status, used = pending.collect()
        keys = pending.keys
        out: list[tuple[int, str] | None] = [None] * len(parsed)
        for i in range(pending.n):
            entry, kid = parsed[i], used[i]
            if status[i] != sigcheck.UNCHECKED and kid == entry.key_id:
                out[i] = (status[i], keys[kid])
        return out

    def _state_for(self, sql: "Sql", batch: list[SignedEntry], leaves: list[bytes]) -> tuple[int, LogState]:
        """Takes the log's write lock and prefetches exactly the rows the rules will ask about; (size, state).

        Touching the head row first takes the write lock (row lock on PostgreSQL, RESERVED on SQLite), so the size
        it returns cannot move under us, nor can the rows read after it (on PostgreSQL in the same round trip).
        Keys are always read from the database, not from this process's cache: another process may have rotated
        one out. The bodies may not have been validated yet (the workers' parse verdicts come later), so nothing
        here may assume their shape beyond what it checks."""
        refs = set()
        consent_ids = set()
        key_ids: set[str] = set()
        identities: set[str] = set()
        notices: set[tuple[str, str, str]] = set()
        for e in batch:
            body = e.body
            ref = body.get("subject_ref")
            if isinstance(ref, str):
                refs.add(ref)
            for name in ("consent_id", "supersedes"):
                value = body.get(name)
                if isinstance(value, str):
                    consent_ids.add(value)
            kid = e.fields.get("key_id")
            if isinstance(kid, str):
                key_ids.add(kid)
            etype = e.fields.get("type")
            if etype == "key.registered" or etype == "key.rotated":
                for name, into in (("identity", identities), ("replaces", key_ids)):
                    value = body.get(name)
                    if isinstance(value, str):
                        into.add(value)
            elif etype == "notice.published" or etype == "consent.given" or etype == "consent.refused":
                notice = _notice_key(body)
                if notice is not None:
                    notices.add(notice)
        start, subject_rows, consent_rows, leaf_rows, key_rows = sql.lock_and_read(
            refs, consent_ids, set(leaves), key_ids, identities
        )
        state = LogState(empty_log=start == 0)
        for key_id, identity, role, public_key, revoked_idx in key_rows:
            state.keys[key_id] = KeyRecord(key_id, identity, role, public_key, revoked_idx is not None)
        subjects = state.subjects
        for ref, partner, erasure_idx, erased_idx in subject_rows:
            subjects[ref] = SubjectRecord(partner, erasure_idx is not None, erased_idx is not None)
        consents = state.consents
        for consent_id, partner, ref, kind in consent_rows:
            consents[consent_id] = ConsentRecord(partner, ref, kind)
        state.leaf_hashes.update(bytes(r[0]) for r in leaf_rows)
        state.notices = self._load_notices(sql, notices)
        return start, state

    def _load_notices(self, sql: "Sql", wanted: set[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
        """(partner, notice id, version) -> sha256 of those published. Published notices never change, so those
        this process has seen are cached; a notice not seen yet is looked up in the log (it may be another
        process's, or not exist)."""
        missing = {n for n in wanted if n not in self._notices}
        if missing:
            partners = sorted({p for p, _, _ in missing})
            q = select(t.entries.c.data).where(t.entries.c.entry_type == "notice.published",
                                               t.entries.c.partner_id.in_(partners))  # fmt: skip
            for (data,) in sql.conn.execute(q):
                try:
                    body = json.loads(bytes(data))["body"]
                    found = (body["partner_id"], body["notice_id"], body["version"]), body["sha256"]
                except (ValueError, KeyError, TypeError):
                    continue  # a damaged row publishes nothing (`cohort ledger verify` names it)
                self._notices.setdefault(*found)
        return {n: self._notices[n] for n in wanted if n in self._notices}

    def _write(self, sql: "Sql", rows: "BatchRows") -> tuple[int, dict] | None:
        """Inserts the batch's entries, new tree nodes and consent indexes and moves the head past them (all
        undone by a rollback if the batch is refused); returns the Merkle frontier after the batch."""
        rows.build()
        nodes, frontier = self._new_nodes(sql, rows.start, rows.leaves)
        sql.write([
            ("entries", _ENTRY_COLUMNS, rows.entries),
            ("tree_nodes", _NODE_COLUMNS, [(lv, i, h) for lv, i, h in nodes if lv > 0]),
            ("consent_events", _EVENT_COLUMNS, rows.events),
            ("consents", _CONSENT_COLUMNS, rows.consents),
            ("subjects", _SUBJECT_COLUMNS, list(rows.new_subjects.values())),
        ], head=rows.start + len(rows.leaves))  # fmt: skip
        return frontier

    def _finish(self, sql: "Sql", rows: "BatchRows", state: LogState) -> None:
        """The updates that follow from the rules' verdicts: ended consents, erasures, keys."""
        ended = [(rec.kind, consent_id) for consent_id, rec in state.consents.items()
                 if rec.kind in ("consent.withdrawn", "consent.expired")]  # fmt: skip
        sql.execute_many("UPDATE consents SET kind = {} WHERE consent_id = {}", ended)
        sql.execute_many("UPDATE subjects SET erasure_requested_idx = {} WHERE subject_ref = {}", rows.erasure)
        sql.execute_many("UPDATE subjects SET erased_idx = {} WHERE subject_ref = {}", rows.erased)
        conn = sql.conn
        if rows.keys:
            conn.execute(t.keys.insert(), rows.keys)
        for key_id, idx in rows.revoked:
            conn.execute(update(t.keys).where(t.keys.c.key_id == key_id).values(revoked_idx=idx))
            self._keys.pop(key_id, None)

    def _new_nodes(self, sql: "Sql", start: int, leaves: list[bytes]):
        """The perfect-subtree nodes the batch completes, and the frontier of the tree after the batch.

        Left siblings from before the batch are all nodes of the frontier at `start`: kept in memory from this
        process's last append when the log has not moved since, else read from the store."""
        known = self._frontier[1] if self._frontier is not None and self._frontier[0] == start else None
        if known is None:
            known = sql.frontier(start)

        def get_node(level: int, index: int) -> bytes:
            h = known.get((level, index))
            return h if h is not None else self._node(sql.conn, level, index)

        nodes = merkle.new_nodes_for_batch(start, leaves, get_node)
        made = {(lv, i): h for lv, i, h in nodes}
        end = start + len(leaves)
        frontier = {}
        for key in merkle.frontier_nodes(end):
            h = made.get(key) or known.get(key)
            if h is None:
                return nodes, None
            frontier[key] = h
        return nodes, (end, frontier)

    @staticmethod
    def _node(conn, level: int, index: int) -> bytes:
        if level == 0:
            row = conn.execute(select(t.entries.c.leaf_hash).where(t.entries.c.idx == index)).first()
        else:
            row = conn.execute(
                select(t.tree_nodes.c.hash).where(t.tree_nodes.c.level == level, t.tree_nodes.c.idx == index)
            ).first()
        if row is None:
            raise LookupError(f"tree node ({level}, {index}) missing: the store is damaged")
        return bytes(row[0])

    # ---- read ---------------------------------------------------------------------------------------------

    def tree_size(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(t.head.c.tree_size).where(t.head.c.id == 1)).scalar_one()

    def root(self, tree_size: int | None = None) -> bytes:
        with self.engine.connect() as conn:
            size = self._size_arg(conn, tree_size)
            return merkle.root_from_nodes(size, lambda lv, i: self._node(conn, lv, i))

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        with self.engine.connect() as conn:
            size = self._size_arg(conn, tree_size)
            if not 0 <= index < size:
                raise IndexError(f"leaf {index} is not in a tree of size {size}")
            return merkle.inclusion_proof_from_nodes(index, size, lambda lv, i: self._node(conn, lv, i))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        with self.engine.connect() as conn:
            size = self._size_arg(conn, new_size)
            if not 0 <= old_size <= size:
                raise IndexError(f"old size {old_size} is not within 0..{size}")
            return merkle.consistency_proof_from_nodes(old_size, size, lambda lv, i: self._node(conn, lv, i))

    def _size_arg(self, conn, tree_size: int | None) -> int:
        current = conn.execute(select(t.head.c.tree_size).where(t.head.c.id == 1)).scalar_one()
        if tree_size is None:
            return current
        if not 0 <= tree_size <= current:
            raise IndexError(f"tree size {tree_size} is beyond the log's {current}")
        return tree_size

    def entry(self, index: int) -> bytes:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.entries.c.data).where(t.entries.c.idx == index)).first()
        if row is None:
            raise IndexError(f"no entry {index}")
        return bytes(row[0])

    def entries(self, start: int, end: int) -> list[tuple[int, bytes]]:
        with self.engine.connect() as conn:
            q = select(t.entries.c.idx, t.entries.c.data).where(t.entries.c.idx >= start, t.entries.c.idx < end)
            return [(r.idx, bytes(r.data)) for r in conn.execute(q.order_by(t.entries.c.idx))]

    def iter_entries(self, page: int = 20000) -> Iterator[tuple[int, bytes, bytes]]:
        """(index, data, stored leaf hash) in log order, paged so memory stays bounded on any log size."""
        start = 0
        while True:
            with self.engine.connect() as conn:
                q = (
                    select(t.entries.c.idx, t.entries.c.data, t.entries.c.leaf_hash)
                    .where(t.entries.c.idx >= start)
                    .order_by(t.entries.c.idx)
                    .limit(page)
                )
                rows = conn.execute(q).all()
            if not rows:
                return
            for r in rows:
                yield r.idx, bytes(r.data), bytes(r.leaf_hash)
            start = rows[-1].idx + 1

    def subject_history(self, subject_ref: str) -> list[tuple[int, bytes]]:
        with self.engine.connect() as conn:
            q = select(t.entries.c.idx, t.entries.c.data).where(t.entries.c.subject_ref == subject_ref)
            return [(r.idx, bytes(r.data)) for r in conn.execute(q.order_by(t.entries.c.idx))]

    def find_by_type(self, entry_type: str) -> list[tuple[int, bytes]]:
        with self.engine.connect() as conn:
            q = select(t.entries.c.idx, t.entries.c.data).where(t.entries.c.entry_type == entry_type)
            return [(r.idx, bytes(r.data)) for r in conn.execute(q.order_by(t.entries.c.idx))]

    def keys(self) -> list[KeyRecord]:
        with self.engine.connect() as conn:
            return [
                KeyRecord(r.key_id, r.identity, r.role, r.public_key, r.revoked_idx is not None)
                for r in conn.execute(select(t.keys))
            ]

    def key(self, key_id: str) -> KeyRecord | None:
        """The key record (the request authenticator's lookup). A key this process has seen active is served from
        its cache: a rotation appended by ANOTHER process is seen here only once this process looks the key up
        again (appends never use the cache: their rules read keys from the database)."""
        cached = self._keys.get(key_id)
        if cached is not None and not cached.revoked:
            return cached
        with self.engine.connect() as conn:
            r = conn.execute(select(t.keys).where(t.keys.c.key_id == key_id)).first()
        if r is None:
            return None
        rec = KeyRecord(r.key_id, r.identity, r.role, r.public_key, r.revoked_idx is not None)
        if not rec.revoked:
            self._keys[key_id] = rec
        return rec

    def keys_at(self, identity: str, index: int) -> list[KeyRecord]:
        """The identity's keys that were active when entry ``index`` was appended: registered before it and not yet
        rotated out (a rotation at ``r`` revokes the old key from ``r`` on and registers the new one at ``r``)."""
        c = t.keys.c
        with self.engine.connect() as conn:
            q = select(t.keys).where(c.identity == identity, or_(c.registered_idx.is_(None), c.registered_idx < index),
                                     or_(c.revoked_idx.is_(None), c.revoked_idx > index))  # fmt: skip
            return [KeyRecord(r.key_id, r.identity, r.role, r.public_key, r.revoked_idx is not None)
                    for r in conn.execute(q.order_by(c.registered_idx))]  # fmt: skip

    def keys_of(self, identity: str) -> list[KeyRecord]:
        """Every key ever registered for an identity (at most one of them active), in registration order."""
        with self.engine.connect() as conn:
            q = select(t.keys).where(t.keys.c.identity == identity).order_by(t.keys.c.registered_idx)
            return [KeyRecord(r.key_id, r.identity, r.role, r.public_key, r.revoked_idx is not None)
                    for r in conn.execute(q)]  # fmt: skip

    # ---- checkpoints --------------------------------------------------------------------------------------

    def publish_checkpoint(self, operator: Identity) -> Checkpoint:
        with self._lock, self.engine.begin() as conn:
            size = conn.execute(select(t.head.c.tree_size).where(t.head.c.id == 1)).scalar_one()
            existing = conn.execute(select(t.checkpoints).where(t.checkpoints.c.tree_size == size)).first()
            if existing is not None:
                return Checkpoint.from_body(bytes(existing.body), existing.key_id, bytes(existing.signature))
            root = merkle.root_from_nodes(size, lambda lv, i: self._node(conn, lv, i))
            cp = sign_checkpoint(operator, self.origin, size, root)
            conn.execute(t.checkpoints.insert().values(tree_size=size, body=cp.body, key_id=cp.key_id,
                                                       signature=cp.signature))  # fmt: skip
            return cp

    def checkpoints(self) -> list[Checkpoint]:
        with self.engine.connect() as conn:
            wit: dict[int, dict[str, bytes]] = {}
            for w in conn.execute(select(t.witness_signatures)):
                wit.setdefault(w.tree_size, {})[w.key_id] = bytes(w.signature)
            rows = conn.execute(select(t.checkpoints).order_by(t.checkpoints.c.tree_size)).all()
            return [Checkpoint.from_body(bytes(r.body), r.key_id, bytes(r.signature), wit.get(r.tree_size)) for r in rows]

    def checkpoint(self, tree_size: int | None = None) -> Checkpoint | None:
        """The signed checkpoint at exactly `tree_size` (the latest if None), with its witnesses; None if none."""
        with self.engine.connect() as conn:
            q = select(t.checkpoints)
            if tree_size is None:
                q = q.order_by(t.checkpoints.c.tree_size.desc()).limit(1)
            else:
                q = q.where(t.checkpoints.c.tree_size == tree_size)
            row = conn.execute(q).first()
            if row is None:
                return None
            wq = select(t.witness_signatures).where(t.witness_signatures.c.tree_size == row.tree_size)
            wit = {w.key_id: bytes(w.signature) for w in conn.execute(wq)}
        return Checkpoint.from_body(bytes(row.body), row.key_id, bytes(row.signature), wit)

    def add_witness(self, tree_size: int, key_id: str, signature: bytes) -> None:
        with self.engine.begin() as conn:
            conn.execute(t.witness_signatures.insert().values(tree_size=tree_size, key_id=key_id, signature=signature))

    # ---- consent index ------------------------------------------------------------------------------------

    def consent_events(self, partner_id: str, tree_size: int) -> Iterator[tuple]:
        """(subject_ref, kind, consent_id, purposes, categories, valid_until) in log order below tree_size.

        Streamed in pages straight from the DBAPI cursor (a million rows for a large partner)."""
        q = ("SELECT subject_ref, kind, consent_id, purposes, categories, valid_until FROM consent_events "
             "WHERE partner_id = {ph} AND idx < {ph} ORDER BY idx")  # fmt: skip
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                cur = conn.connection.cursor()
                try:
                    cur.execute(q.format(ph="?"), (partner_id, tree_size))
                    while rows := cur.fetchmany(50_000):
                        yield from rows
                finally:
                    cur.close()
            else:
                result = conn.execution_options(stream_results=True, yield_per=50_000).exec_driver_sql(
                    q.format(ph="%s"), (partner_id, tree_size)
                )
                for part in result.partitions():
                    yield from part

    def subject_state(self, subject_ref: str) -> SubjectRecord | None:
        """What the log says of a subject (its partner, erasure requested, erased), or None if it has no entry."""
        with self.engine.connect() as conn:
            row = conn.execute(select(t.subjects).where(t.subjects.c.subject_ref == subject_ref)).first()
        if row is None:
            return None
        return SubjectRecord(row.partner_id, row.erasure_requested_idx is not None, row.erased_idx is not None)

    def subject_partner(self, subject_refs: Sequence[str]) -> dict[str, str]:
        out = {}
        with self.engine.connect() as conn:
            for among in member_clauses(conn.dialect.name, t.subjects.c.subject_ref, set(subject_refs)):
                q = select(t.subjects.c.subject_ref, t.subjects.c.partner_id).where(among)
                out.update({r[0]: r[1] for r in conn.execute(q)})
        return out


def _notice_key(body: dict) -> tuple[str, str, str] | None:
    """(partner, notice id, version) a notice.published publishes or a consent cites, if the body has that shape."""
    partner = body.get("partner_id")
    notice = body.get("notice")
    if isinstance(notice, dict):
        ident, version = notice.get("id"), notice.get("version")
    else:
        ident, version = body.get("notice_id"), body.get("version")
    if isinstance(partner, str) and isinstance(ident, str) and isinstance(version, str):
        return partner, ident, version
    return None


def _key_id_hint(data: bytes) -> str | None:
    """The top-level key_id of canonical entry bytes without parsing them (see consent.sigcheck); a hint only."""
    cut = data.rfind(b',"key_id":"')
    if cut < 0:
        return None
    begin = cut + 11
    end = data.find(b'"', begin)
    try:
        return data[begin:end].decode("ascii") if end > 0 else None
    except UnicodeDecodeError:
        return None


def _inline_verdict(entry: SignedEntry, key: KeyRecord) -> int:
    """signature_verdict(entry, key), with the signed message cut from the canonical bytes (consent.sigcheck)."""
    cut = sigcheck.split_signature(entry.data)
    if cut is None or cut[0] != entry.key_id:
        return signature_verdict(entry, key)
    try:
        sig = base64.b64decode(cut[1], validate=True)
    except (binascii.Error, ValueError):
        return SIGNATURE_NOT_BASE64
    return SIGNATURE_OK if sigcheck.public_key(key.public_key, key._public).verify(sig, cut[2]) else SIGNATURE_BAD


def _cancel(pending: sigcheck.Pending | None) -> None:
    if pending is not None:
        pending.collect()  # frees the workers for the next batch
