"""The append path's SQL as plain DBAPI statements inside the caller's transaction (``consent.store.log``).

SQLite: executemany and chunked ``IN`` lists. PostgreSQL: pipelines (one round trip for a batch's reads, one for its
writes) and binary COPY for large row sets.
"""

from __future__ import annotations

from collections.abc import Iterator

from consent import merkle

IN_CHUNK = 500  # keeps IN (...) lists under every backend's bound-parameter limit
COPY_FROM = 256  # rows from which a PostgreSQL insert uses COPY rather than the pipelined INSERT
# Binary COPY sends each value in its column's wire format (consent.store.tables: BigInteger, Integer, bytea, text).
PG_TYPES = {
    "idx": "int8", "first_idx": "int8", "level": "int4", "leaf_hash": "bytea", "data": "bytea", "hash": "bytea",
    "entry_type": "text", "key_id": "text", "partner_id": "text", "subject_ref": "text", "kind": "text",
    "consent_id": "text", "purposes": "text", "categories": "text", "valid_until": "text",
}  # fmt: skip


def chunks(items) -> Iterator[list]:
    items = list(items)
    for i in range(0, len(items), IN_CHUNK):
        yield items[i : i + IN_CHUNK]


class Sql:
    """The append path's statements as plain DBAPI calls inside the caller's transaction.

    They skip SQLAlchemy's per-statement compilation and per-row parameter processing, which cost more than the
    inserts themselves at thousands of rows per batch. On PostgreSQL, where every round trip is a wait for the
    server process, statements are grouped into pipelines and large row sets go in by COPY."""

    def __init__(self, conn):
        self.conn = conn
        self.pg = conn.dialect.name == "postgresql"
        self.ph = "%s" if self.pg else "?"
        self.raw = conn.connection  # the pooled DBAPI connection the transaction runs on

    def _all(self, statement: str, params=()) -> list[tuple]:
        cur = self.raw.cursor()
        try:
            cur.execute(statement, params)
            return cur.fetchall()
        finally:
            cur.close()

    def lock_and_read(self, refs: set[str], consent_ids: set[str], leaves: set[bytes], key_ids: set[str],
                      identities: set[str]):  # fmt: skip
        """(tree size, subject rows, consent rows, leaf-hash rows already stored, key rows), the head row locked
        first. Key rows: the keys with these ids, and every key of these identities.

        On PostgreSQL the statements go in one pipeline: one round trip, not six."""
        lock = "UPDATE ledger_head SET tree_size = tree_size WHERE id = 1 RETURNING tree_size"
        key_select = "SELECT key_id, identity, role, public_key, revoked_idx FROM keys"
        reads = [
            ("SELECT subject_ref, partner_id, erasure_requested_idx, erased_idx FROM subjects", "subject_ref", refs),
            ("SELECT consent_id, partner_id, subject_ref, kind FROM consents", "consent_id", consent_ids),
            ("SELECT leaf_hash FROM entries", "leaf_hash", leaves),
            (key_select, "key_id", key_ids),
            (key_select, "identity", identities),
        ]
        if not self.pg:
            start = self._all(lock)[0][0]
            out = [self.select_in(*r) for r in reads]
        else:
            with self.raw.driver_connection.pipeline():
                cursors = [self.raw.cursor() for _ in range(len(reads) + 1)]
                cursors[0].execute(lock)
                for cur, (prefix, column, values) in zip(cursors[1:], reads):
                    # A semi-join on the unnested array, planned for each call (prepare=False): a cached generic
                    # plan for `= ANY($1)` may scan the whole table, comparing every row with every value.
                    kind = "bytea" if column == "leaf_hash" else "text"
                    cur.execute(f"{prefix} WHERE {column} IN (SELECT unnest(%s::{kind}[]))", (list(values),),
                                prepare=False)  # fmt: skip
                fetched = [cur.fetchall() for cur in cursors]
            for cur in cursors:
                cur.close()
            start, out = fetched[0][0][0], fetched[1:]
        keys = {row[0]: tuple(row) for row in out[3] + out[4]}
        return (start, out[0], out[1], out[2], list(keys.values()))

    def write(self, tables: list[tuple[str, tuple[str, ...], list[tuple]]], head: int) -> None:
        """Inserts rows into each table and sets the head; on PostgreSQL one pipeline of one INSERT per table."""
        if not self.pg:
            for table, columns, rows in tables:
                self.insert_rows(table, columns, rows)
            self.execute_many("UPDATE ledger_head SET tree_size = {} WHERE id = {}", [(head, 1)])
            return
        # Many rows go in by COPY (the least work for the server per row, one round trip per table); the rest,
        # and the head, in one pipeline of one INSERT per table (the rows as one array per column, unnested).
        many = [(t, c, r) for t, c, r in tables if len(r) >= COPY_FROM]
        for table, columns, rows in many:
            self.insert_rows(table, columns, rows)
        with self.raw.driver_connection.pipeline():
            cur = self.raw.cursor()
            for table, columns, rows in tables:
                if rows and len(rows) < COPY_FROM:
                    arrays = ", ".join(f"%b::{PG_TYPES[c]}[]" for c in columns)
                    cur.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays})",
                                [list(col) for col in zip(*rows)])  # fmt: skip
            cur.execute("UPDATE ledger_head SET tree_size = %s WHERE id = 1", (head,))
        cur.close()

    def select_in(self, prefix: str, column: str, values) -> list[tuple]:
        values = list(values)
        if not values:
            return []
        out: list[tuple] = []  # SQLite only (PostgreSQL reads in lock_and_read's pipeline)
        for i in range(0, len(values), IN_CHUNK):
            chunk = values[i : i + IN_CHUNK]
            out += self._all(f"{prefix} WHERE {column} IN ({','.join('?' * len(chunk))})", chunk)
        return out

    def insert_rows(self, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
        if not rows:
            return
        cols = ", ".join(columns)
        if self.pg:
            with self.raw.driver_connection.cursor() as cur:
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types([PG_TYPES[c] for c in columns])
                    write = copy.write_row
                    for row in rows:
                        write(row)
            return
        cur = self.raw.cursor()
        try:
            cur.executemany(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(columns))})", rows)
        finally:
            cur.close()

    def execute_many(self, template: str, rows: list[tuple]) -> None:
        if not rows:
            return
        cur = self.raw.cursor()
        try:
            cur.executemany(template.format(*[self.ph] * template.count("{}")), rows)
        finally:
            cur.close()

    def frontier(self, size: int) -> dict[tuple[int, int], bytes]:
        """The perfect nodes whose fold is the root at `size`, in at most two statements (missing ones left out)."""
        out: dict[tuple[int, int], bytes] = {}
        wanted = merkle.frontier_nodes(size)
        leaves = [i for lv, i in wanted if lv == 0]
        upper = [(lv, i) for lv, i in wanted if lv > 0]
        for i in leaves:
            for idx, h in self._all(f"SELECT idx, leaf_hash FROM entries WHERE idx = {self.ph}", (i,)):
                out[(0, idx)] = bytes(h)
        if upper:
            cond = " OR ".join([f"(level = {self.ph} AND idx = {self.ph})"] * len(upper))
            params = [v for node in upper for v in node]
            for lv, idx, h in self._all(f"SELECT level, idx, hash FROM tree_nodes WHERE {cond}", params):
                out[(lv, idx)] = bytes(h)
        return out
