"""Shared helpers for the ConsentLedger service tests (no tests here): parties, databases, forged entries."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from consent.canonical import canonical_bytes
from consent.client import LedgerClient
from consent.entries import now_iso
from consent.keys import Identity
from consent.partner import DEFAULT_NOTICE, PartnerDesk
from tests.ledger_helpers import fresh_pg_database

PARTY_ROLES = {
    "operator": "operator",
    "coordinator": "coordinator",
    "auditor": "auditor",
    "partner-a": "partner",
    "partner-b": "partner",
}
PURPOSE = "churn_ltv_modelling"
CATEGORIES = ["behavioural", "transaction"]


def make_keys(directory: Path) -> dict[str, Identity]:
    """A key directory as `cohort keys init` lays it out; the server registers every .pub in it at start."""
    out = {}
    for name, role in PARTY_ROLES.items():
        out[name] = Identity.generate(name, role)
        out[name].save(directory)
    return out


@contextlib.contextmanager
def postgres_database():
    """A fresh database per use (created and dropped here), so runs never see each other's rows."""
    with fresh_pg_database("cohort_svc") as url:
        yield url


@contextlib.contextmanager
def database(kind: str, tmp_dir: Path):
    if kind == "sqlite":
        yield str(tmp_dir / "ledger.db")
    else:
        with postgres_database() as url:
            yield url


@dataclass
class Env:
    """A running server, the parties' keys and one signed client per party."""

    server: object
    url: str
    keys: dict[str, Identity]
    keys_dir: Path
    clients: dict[str, LedgerClient] = field(default_factory=dict)

    def client(self, name: str) -> LedgerClient:
        if name not in self.clients:
            self.clients[name] = LedgerClient(self.server.address, self.keys[name], timeout=20)
        return self.clients[name]

    def desk(self, partner: str) -> PartnerDesk:
        return PartnerDesk(self.keys[partner], f"secret-of-{partner}".encode(), self.client(partner))

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


PARTNERS = tuple(name for name, role in PARTY_ROLES.items() if role == "partner")


@contextlib.contextmanager
def running_env(kind: str, tmp_dir: Path, publish_notices: bool = True, **serve_kwargs):
    """A server on a fresh database whose key directory holds every party. Log: 0 the operator's bootstrap, 1-4
    the other parties' keys (registered at start, in file name order), then (publish_notices) each partner's
    notice.published of DEFAULT_NOTICE, which every consent the desks record cites."""
    from consent.service.server import serve

    keys_dir = tmp_dir / "keys"
    keys = make_keys(keys_dir)
    with database(kind, tmp_dir) as url:
        server = serve(url, 0, keys_dir, **serve_kwargs)
        env = Env(server, url, keys, keys_dir)
        try:
            if publish_notices:
                for partner in PARTNERS:
                    env.desk(partner).publish_notice(DEFAULT_NOTICE, [PURPOSE])
            yield env
        finally:
            env.close()
            server.stop(grace=1)


def decisions(prefix: str, n: int, given: bool = True) -> list[dict]:
    return [{"user_id": f"{prefix}{i}", "purposes": [PURPOSE], "data_categories": CATEGORIES, "given": given}
            for i in range(n)]  # fmt: skip


def forge(entry_type: str, body: dict, signer: Identity, ts: str | None = None, sign_with: Identity | None = None):
    """Entry bytes built WITHOUT make_entry's checks, to put bad input in front of the service."""
    unsigned = {"v": 1, "type": entry_type, "signer": signer.name, "key_id": signer.key_id, "ts": ts or now_iso(),
                "nonce": os.urandom(12).hex(), "body": body}  # fmt: skip
    sig = (sign_with or signer).sign(canonical_bytes(unsigned))
    return canonical_bytes(dict(unsigned, sig=base64.b64encode(sig).decode()))


def consent_body(partner_id: str, subject_ref: str, commitment: str = "0" * 64, **changes) -> dict:
    body = {
        "consent_id": os.urandom(16).hex(), "supersedes": None, "partner_id": partner_id, "subject_ref": subject_ref,
        "purposes": [PURPOSE], "data_categories": sorted(CATEGORIES), "legal_basis": "consent",
        "notice": DEFAULT_NOTICE.ref(), "collection_method": "app", "jurisdiction": "CN",
        "indicated_at": dt.date.today().isoformat(), "valid_until": None, "recipients": ["cohort-consortium"],
        "cross_border": False, "evidence_commitment": commitment,
    }  # fmt: skip
    body.update(changes)
    return body


def future_ts(minutes: float) -> str:
    t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=minutes)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
