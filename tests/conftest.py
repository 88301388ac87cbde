"""Shared fixtures: ledgers on SQLite and on the machine's real PostgreSQL (a fresh database per use).

PostgreSQL: tests.ledger_helpers.PG_URL (COHORT_TEST_PG, default the brief's database `test` on 127.0.0.1:5432);
each use creates a database of its own from there and drops it afterwards. A server that is down fails the test.
"""

from __future__ import annotations

import pytest

from tests.ledger_helpers import fresh_pg_database


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database, dropped afterwards. Fails (never skips) when PostgreSQL is down."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path):
    """The same test runs on the embedded SQLite store and on the deployment PostgreSQL store."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def operator():
    from consent.keys import Identity

    return Identity.generate("operator", "operator")
