"""Shared fixtures: ledgers on SQLite and on the machine's real PostgreSQL (a fresh database per use)."""

from __future__ import annotations

import os
import uuid

import pytest

PG_ADMIN = os.environ.get("COHORT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN.replace("postgresql://", "postgresql://", 1), connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database, dropped afterwards. Fails (never skips) when PostgreSQL is down."""
    import psycopg

    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN}; start it (see .ci/run)")
    name = f"cohort_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


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
