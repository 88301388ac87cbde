"""The append path and the read path of the log over SQLAlchemy: batched, all-or-nothing, durable on return.

One transaction per batch: lock the head row, judge every entry against the log (consent.rules), insert the
entries, the new perfect-subtree hashes and the derived indexes, move the head, commit. Only after the commit
returns are indices handed back, so an acknowledged entry survives a crash.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from sqlalchemy import Engine, select, update

from consent import merkle
from consent.checkpoints import Checkpoint, sign_checkpoint
from consent.entries import EntryError, SignedEntry, parse_entry
from consent.keys import Identity
from consent.rules import (
    INVALID_ARGUMENT,
    AppendError,
    ConsentRecord,
    KeyRecord,
    LogState,
    SubjectRecord,
    check_entry,
)
from consent.store import tables as t
from consent.store.engine import open_engine

_IN_CHUNK = 500  # keeps IN (...) lists under every backend's bound-parameter limit

_CONSENT_KIND = {
    "consent.given": "given",
    "consent.refused": "refused",
    "consent.withdrawn": "withdrawn",
    "consent.expired": "expired",
    "subject.erasure_requested": "erasure",
}


class LedgerStore:
    """The ledger's log in a SQL database. Thread-safe; several processes may append to one PostgreSQL."""

    def __init__(self, engine: Engine, origin: str = "cohort-ledger"):
        self.engine = engine
        self.origin = origin
        self._lock = threading.Lock()
        self._keys: dict[str, KeyRecord] = {}
        with engine.begin() as conn:
            if conn.execute(select(t.head.c.tree_size)).first() is None:
                conn.execute(t.head.insert().values(id=1, tree_size=0))

    @classmethod
    def open(cls, url: str, origin: str = "cohort-ledger", migrate: bool = True) -> "LedgerStore":
        return cls(open_engine(url, migrate=migrate), origin=origin)

    def close(self) -> None:
        self.engine.dispose()

    # ---- append -------------------------------------------------------------------------------------------

    def append(self, batch: Sequence[SignedEntry | bytes]) -> list[int]:
        """Appends the batch atomically and returns the leaf indices; raises AppendError and stores nothing."""
        parsed = [self._parse(item, i) for i, item in enumerate(batch)]
        if not parsed:
            return []
        leaves = [merkle.leaf_hash(e.data) for e in parsed]
        with self._lock, self.engine.begin() as conn:
            # Touching the head row first takes the write lock (row lock on PostgreSQL, RESERVED on SQLite),
            # so the size read below cannot move under us.
            conn.execute(update(t.head).where(t.head.c.id == 1).values(tree_size=t.head.c.tree_size))
            start = conn.execute(select(t.head.c.tree_size).where(t.head.c.id == 1)).scalar_one()
            state = self._state_for(conn, parsed, leaves, start)
            for i, (entry, leaf) in enumerate(zip(parsed, leaves)):
                check_entry(entry, leaf, state, i)
            self._insert(conn, parsed, leaves, start, state)
            conn.execute(update(t.head).where(t.head.c.id == 1).values(tree_size=start + len(parsed)))
        self._keys.update({k: v for k, v in state.keys.items()})
        return list(range(start, start + len(parsed)))

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

    def _state_for(self, conn, batch: list[SignedEntry], leaves: list[bytes], start: int) -> LogState:
        """Prefetches exactly the rows the rules will ask about, so judging a batch costs a few queries."""
        state = LogState(empty_log=start == 0)
        key_ids = {e.key_id for e in batch} | {e.body.get("replaces") for e in batch if e.type == "key.rotated"}
        state.keys = self._load_keys(conn, {k for k in key_ids if isinstance(k, str)})
        refs = {e.subject_ref for e in batch if isinstance(e.subject_ref, str)}
        for rows in _chunks(refs):
            for r in conn.execute(select(t.subjects).where(t.subjects.c.subject_ref.in_(rows))):
                state.subjects[r.subject_ref] = SubjectRecord(
                    r.partner_id, r.erasure_requested_idx is not None, r.erased_idx is not None
                )
        consent_ids = set()
        for e in batch:
            for name in ("consent_id", "supersedes"):
                if isinstance(e.body.get(name), str):
                    consent_ids.add(e.body[name])
        for rows in _chunks(consent_ids):
            for r in conn.execute(select(t.consents).where(t.consents.c.consent_id.in_(rows))):
                state.consents[r.consent_id] = ConsentRecord(r.partner_id, r.subject_ref, r.kind)
        for rows in _chunks(set(leaves)):
            found = conn.execute(select(t.entries.c.leaf_hash).where(t.entries.c.leaf_hash.in_(rows)))
            state.leaf_hashes.update(bytes(r[0]) for r in found)
        return state

    def _load_keys(self, conn, key_ids: set[str]) -> dict[str, KeyRecord]:
        out = {}
        missing = []
        for k in key_ids:
            if k in self._keys and not self._keys[k].revoked:
                out[k] = self._keys[k]
            else:
                missing.append(k)
        for rows in _chunks(missing):
            for r in conn.execute(select(t.keys).where(t.keys.c.key_id.in_(rows))):
                out[r.key_id] = KeyRecord(r.key_id, r.identity, r.role, r.public_key, r.revoked_idx is not None)
        return out

    def _insert(self, conn, batch: list[SignedEntry], leaves: list[bytes], start: int, state: LogState) -> None:
        rows, events, subjects, consents, keys, revoked = [], [], [], [], [], []
        erasure, erased = [], []
        for offset, (e, leaf) in enumerate(zip(batch, leaves)):
            idx = start + offset
            body = e.body
            ref = e.subject_ref if isinstance(e.subject_ref, str) else None
            rows.append(
                {
                    "idx": idx,
                    "leaf_hash": leaf,
                    "data": e.data,
                    "entry_type": e.type,
                    "key_id": e.key_id,
                    "partner_id": body.get("partner_id") if isinstance(body.get("partner_id"), str) else None,
                    "subject_ref": ref,
                }
            )
            kind = _CONSENT_KIND.get(e.type)
            if kind:
                events.append(
                    {
                        "idx": idx,
                        "partner_id": body["partner_id"],
                        "subject_ref": ref,
                        "kind": kind,
                        "consent_id": body.get("consent_id"),
                        "purposes": ",".join(sorted(body["purposes"])) if "purposes" in body else None,
                        "categories": ",".join(sorted(body["data_categories"])) if "data_categories" in body else None,
                        "valid_until": body.get("valid_until"),
                    }
                )
            if e.type in ("consent.given", "consent.refused"):
                consents.append({"consent_id": body["consent_id"], "partner_id": body["partner_id"],
                                 "subject_ref": ref, "kind": e.type, "idx": idx})  # fmt: skip
            if ref is not None and e.type.startswith(("consent.", "subject.")):
                subjects.append((ref, body["partner_id"], idx))
            if e.type == "subject.erasure_requested":
                erasure.append((ref, idx))
            if e.type == "subject.erased":
                erased.append((ref, idx))
            if e.type in ("key.registered", "key.rotated"):
                keys.append({"key_id": body["key_id"], "identity": body["identity"], "role": body["role"],
                             "public_key": body["public_key"], "registered_idx": idx, "revoked_idx": None})  # fmt: skip
                if e.type == "key.rotated":
                    revoked.append((body["replaces"], idx))
        conn.execute(t.entries.insert(), rows)
        nodes = merkle.new_nodes_for_batch(start, leaves, lambda level, i: self._node(conn, level, i))
        upper = [{"level": lv, "idx": i, "hash": h} for lv, i, h in nodes if lv > 0]
        if upper:
            conn.execute(t.tree_nodes.insert(), upper)
        if events:
            conn.execute(t.consent_events.insert(), events)
        if consents:
            conn.execute(t.consents.insert(), consents)
        self._record_subjects(conn, subjects)
        for consent_id, rec in state.consents.items():
            if rec.kind in ("consent.withdrawn", "consent.expired"):
                conn.execute(update(t.consents).where(t.consents.c.consent_id == consent_id).values(kind=rec.kind))
        for ref, idx in erasure:
            conn.execute(update(t.subjects).where(t.subjects.c.subject_ref == ref).values(erasure_requested_idx=idx))
        for ref, idx in erased:
            conn.execute(update(t.subjects).where(t.subjects.c.subject_ref == ref).values(erased_idx=idx))
        if keys:
            conn.execute(t.keys.insert(), keys)
        for key_id, idx in revoked:
            conn.execute(update(t.keys).where(t.keys.c.key_id == key_id).values(revoked_idx=idx))
            self._keys.pop(key_id, None)

    def _record_subjects(self, conn, subjects: list[tuple[str, str, int]]) -> None:
        first: dict[str, tuple[str, int]] = {}
        for ref, partner, idx in subjects:
            first.setdefault(ref, (partner, idx))
        known = set()
        for rows in _chunks(set(first)):
            known.update(r[0] for r in conn.execute(select(t.subjects.c.subject_ref).where(t.subjects.c.subject_ref.in_(rows))))
        new = [{"subject_ref": r, "partner_id": p, "first_idx": i} for r, (p, i) in first.items() if r not in known]
        if new:
            conn.execute(t.subjects.insert(), new)

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
        with self.engine.connect() as conn:
            return self._load_keys(conn, {key_id}).get(key_id)

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
        cps = self.checkpoints()
        if tree_size is None:
            return cps[-1] if cps else None
        return next((c for c in cps if c.tree_size == tree_size), None)

    def add_witness(self, tree_size: int, key_id: str, signature: bytes) -> None:
        with self.engine.begin() as conn:
            conn.execute(t.witness_signatures.insert().values(tree_size=tree_size, key_id=key_id, signature=signature))

    # ---- consent index ------------------------------------------------------------------------------------

    def consent_events(self, partner_id: str, tree_size: int) -> Iterator[tuple]:
        """(subject_ref, kind, consent_id, purposes, categories, valid_until) in log order below tree_size."""
        c = t.consent_events.c
        q = (
            select(c.subject_ref, c.kind, c.consent_id, c.purposes, c.categories, c.valid_until)
            .where(c.partner_id == partner_id, c.idx < tree_size)
            .order_by(c.idx)
        )
        with self.engine.connect() as conn:
            yield from conn.execution_options(yield_per=50000).execute(q)

    def subject_partner(self, subject_refs: Sequence[str]) -> dict[str, str]:
        out = {}
        with self.engine.connect() as conn:
            for rows in _chunks(set(subject_refs)):
                q = select(t.subjects.c.subject_ref, t.subjects.c.partner_id).where(t.subjects.c.subject_ref.in_(rows))
                out.update({r[0]: r[1] for r in conn.execute(q)})
        return out


def _chunks(items) -> Iterator[list]:
    items = list(items)
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i : i + _IN_CHUNK]
