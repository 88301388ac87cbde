"""Builders shared by the ledger tests: a ledger with registered parties and a few consents, and the PostgreSQL
server the Postgres variants run on (a fresh database per use)."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass

import pytest

from consent.keys import Identity
from consent.ledger import Ledger
from consent.partner import DEFAULT_NOTICE, PartnerDesk

CHURN = "churn_ltv_modelling"

# The machine's PostgreSQL (trust auth) and the database the brief names. Each test gets a database of its own,
# created from a connection to this one and dropped afterwards. On a fresh server where `test` does not exist
# yet, the maintenance database `postgres` (always there) serves as the connection to create from.
PG_URL = os.environ.get("COHORT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PG_FALLBACK_DB = "postgres"


def _pg_base(url: str) -> str:
    return url.rsplit("/", 1)[0]


def pg_admin_connection():
    """An autocommit connection to PG_URL (or, if that database does not exist, to `postgres` on the same server).
    Fails the test, never skips it, when the server is down."""
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            pytest.fail(f"PostgreSQL is not reachable at {PG_URL}: {exc}")
    try:
        return psycopg.connect(f"{_pg_base(PG_URL)}/{PG_FALLBACK_DB}", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {_pg_base(PG_URL)}: {exc}")


@contextlib.contextmanager
def fresh_pg_database(prefix: str = "cohort_test"):
    """The URL of a new, empty database on the test server; dropped (with any sessions still on it) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with pg_admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{_pg_base(PG_URL)}/{name}"
    finally:
        with pg_admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class World:
    ledger: Ledger
    operator: Identity
    coordinator: Identity
    auditor: Identity
    partners: dict[str, PartnerDesk]


def make_world(url: str, partners=("partner-a", "partner-b")) -> World:
    """Operator, coordinator, auditor and partners registered; each partner has published DEFAULT_NOTICE (a consent
    must cite a published notice). Entries: 0 operator, 1 coordinator, 2 auditor, then per partner its key and
    its notice (3, 4 for the first partner, 5, 6 for the second); consents start at 3 + 2 * len(partners)."""
    operator = Identity.generate("operator", "operator")
    ledger = Ledger.open(url, operator)
    coordinator = Identity.generate("coordinator", "coordinator")
    auditor = Identity.generate("auditor", "auditor")
    ledger.register(coordinator)
    ledger.register(auditor)
    desks = {}
    for name in partners:
        ident = Identity.generate(name, "partner")
        ledger.register(ident)
        desks[name] = PartnerDesk(ident, secret=name.encode() * 4, ledger=ledger)
        desks[name].publish_notice(DEFAULT_NOTICE, [CHURN])
    return World(ledger, operator, coordinator, auditor, desks)


def consent(user_id: str, purposes=(CHURN,), categories=("behavioural", "transaction"), given=True, **extra) -> dict:
    return {"user_id": user_id, "purposes": list(purposes), "data_categories": list(categories), "given": given, **extra}
