"""``column IN (values)`` for value lists of any length, as SQLAlchemy where-clauses.

SQLite: chunks of ``IN_CHUNK`` bound values (its bound-parameter limit). PostgreSQL: one clause, a semi-join on
the values sent as one array (``IN (SELECT unnest(:values))``), as the append path's reads do
(``consent.store.sql``). Why: psycopg prepares a statement once a connection has run it 5 times, and the server's
generic plan for an ``IN`` list of 500 parameters, made while the table was small, compares every row with every
parameter; it stays in use as the table grows. A partner's 7,900 users looked up in 16 such lists took 2.3 s after
registering them in batches, 167 ms after ``ANALYZE``; as one array 49 ms and 54 ms
(``benchmarks/bench_subject_lookup.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sqlalchemy import ColumnElement, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY

from consent.store.sql import chunks


def member_clauses(dialect: str, column, values: Iterable) -> Iterator[ColumnElement[bool]]:
    """Where-clauses that between them select the rows whose ``column`` is in ``values``: run one statement per
    clause and join the results. None for no values."""
    values = list(values)
    if not values:
        return
    if dialect == "postgresql":
        array = bindparam(None, values, type_=ARRAY(column.type))
        yield column.in_(select(func.unnest(array)))
        return
    for chunk in chunks(values):
        yield column.in_(chunk)
