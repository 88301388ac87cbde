"""Durable storage of the ledger: SQLAlchemy tables, Alembic migrations, the append path and the side tables."""

from consent.store.engine import open_engine
from consent.rules import AppendError
from consent.store.log import LedgerStore

__all__ = ["AppendError", "LedgerStore", "open_engine"]
