"""The partner's link to the consent ledger: the two questions the ClientApp asks, answered by `consent/`.

``ConsentLink`` implements ``client.eligibility.Ledger`` over a read-only ledger (a database URL: the embedded
SQLite file or PostgreSQL) or the gRPC ``LedgerClient``. The partner's user ids never leave it: they are HMAC'd
with the partner's own secret before the ledger is asked for their subject_refs.

Named by URL in the node or run config, so each Flower process opens its own connection::

    ledger-url = "py:client.consent_link:open_link?db=/abs/ledger.db&keys=/abs/keys&cap=10&job-epsilon=3"
    ledger-url = "py:client.consent_link:open_link?grpc=127.0.0.1:50051&keys=/abs/keys&ca=/abs/ca.pem&cap=10..."

Over gRPC each partner signs its requests with its own key (`<partner>.key` in the keys dir) and only ever sees
its own subjects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs

from client.eligibility import EligibleSet, open_ledger
from client.peer_keys import partner_key_in
from consent.store.vault import refs_by_user, user_hmac


class ConsentLink:
    def __init__(
        self,
        reader,
        secrets: dict[str, bytes],
        lifetime_epsilon: float | None = None,
        job_epsilon: float = 0.0,
        day: str | None = None,
        keys_dir: str | None = None,
    ):
        self.reader = reader
        self.secrets = secrets
        self.keys_dir = keys_dir
        self.lifetime_epsilon = lifetime_epsilon
        self.job_epsilon = job_epsilon
        self.day = day
        # partner -> (user ids, {hmac: user id}) of its last question: the same users every round of a job
        self._hmacs: dict[str, tuple[list[str], dict[str, str]]] = {}

    def eligible_subjects(self, partner_id: str, purpose: str, categories: Sequence[str], tree_size: int) -> EligibleSet:
        found = self.reader.eligible_set(
            partner_id, purpose, list(categories), tree_size=tree_size, day=self.day or dt.date.today().isoformat(),
            lifetime_epsilon=self.lifetime_epsilon, job_epsilon=self.job_epsilon,
        )  # fmt: skip
        return EligibleSet(subject_refs=tuple(found.subject_refs), count=found.count, root=found.root.hex())

    def consenting_count(self, partner_id: str, purpose: str, categories: Sequence[str], tree_size: int) -> int:
        """How many subjects consent at ``tree_size``, before the lifetime cap (preflight explains a refusal)."""
        found = self.reader.eligible_set(partner_id, purpose, list(categories), tree_size=tree_size,
                                         day=self.day or dt.date.today().isoformat())  # fmt: skip
        return int(found.count)

    def subject_refs_for(self, partner_id: str, user_ids: Sequence[str]) -> dict[str, str]:
        secret = self.secrets.get(partner_id)
        if secret is None:
            raise KeyError(f"no HMAC secret for partner {partner_id!r} (expected {partner_id}.hmac in the keys dir)")
        users = [str(u) for u in user_ids]
        last = self._hmacs.get(partner_id)
        if last is not None and last[0] == users:
            by_hmac = last[1]
        else:
            by_hmac = {user_hmac(secret, u): u for u in users}
            self._hmacs[partner_id] = (users, by_hmac)
        # The refs themselves are asked every round: an erasure between rounds takes the user out at once.
        return refs_by_user(self.reader.subject_refs, partner_id, by_hmac)

    # client.peer_keys.KeyBook: a secure job's masking keys are signed with the partner's own ledger key
    def sign_as(self, partner_id: str, message: bytes) -> bytes:
        from consent.keys import Identity

        if self.keys_dir is None:
            raise KeyError(f"no keys dir: cannot sign as partner {partner_id!r}")
        return Identity.load(self.keys_dir, partner_id).sign(message)

    def partner_key(self, partner_id: str) -> str | None:
        return partner_key_in(self.reader, partner_id)


def load_secrets(keys_dir: str | Path) -> dict[str, bytes]:
    return {p.stem: bytes.fromhex(p.read_text().strip()) for p in Path(keys_dir).glob("*.hmac")}


def link_url(db: str, keys_dir: str, lifetime_epsilon: float | None = None, job_epsilon: float = 0.0,
             day: str | None = None) -> str:  # fmt: skip
    query = f"db={db}&keys={keys_dir}&job-epsilon={job_epsilon}"
    if lifetime_epsilon is not None:
        query += f"&cap={lifetime_epsilon}"
    if day:
        query += f"&day={day}"
    return f"py:client.consent_link:open_link?{query}"


def link_query(url: str) -> dict[str, str]:
    """The ``key=value`` settings of a ledger URL (the part after ``?``)."""
    return {k: v[0] for k, v in parse_qs(url.split("?", 1)[1] if "?" in url else "").items()}


def open_link(url: str) -> ConsentLink:
    query = link_query(url)
    if "keys" not in query or ("db" not in query and "grpc" not in query):
        raise ValueError(f"ledger URL {url!r} needs keys=... and either db=... or grpc=host:port")
    if "grpc" in query:
        reader = PartnerClients(query["grpc"], query["keys"], query.get("ca"))
    else:
        from consent.ledger import LedgerReader

        reader = LedgerReader.open_readonly(query["db"])
    cap = float(query["cap"]) if "cap" in query else None
    return ConsentLink(
        reader, load_secrets(query["keys"]), lifetime_epsilon=cap,
        job_epsilon=float(query.get("job-epsilon", 0.0)), day=query.get("day"), keys_dir=query["keys"],
    )  # fmt: skip


class PartnerClients:
    """The ledger over gRPC, one signed client per partner this process speaks for (a SuperNode: exactly one)."""

    def __init__(self, target: str, keys_dir: str, ca: str | None = None):
        self.target, self.keys_dir, self.ca = target, keys_dir, ca
        self._clients: dict = {}

    def _client(self, partner_id: str):
        from consent.client import LedgerClient
        from consent.keys import Identity

        if partner_id not in self._clients:
            self._clients[partner_id] = LedgerClient(self.target, Identity.load(self.keys_dir, partner_id), self.ca)
        return self._clients[partner_id]

    def eligible_set(self, partner_id: str, purpose: str, categories, tree_size=None, day=None,
                     lifetime_epsilon=None, job_epsilon=0.0):  # fmt: skip
        return self._client(partner_id).eligible_set(partner_id, purpose, categories, tree_size=tree_size, day=day,
                                                     lifetime_epsilon=lifetime_epsilon, job_epsilon=job_epsilon)  # fmt: skip

    def subject_refs(self, partner_id: str, hmacs, create: bool = False) -> dict[str, str]:
        return self._client(partner_id).subject_refs(partner_id, hmacs, create=create)

    def active_key(self, identity: str):
        """Any of this process's partner clients may look a key up: keys are public. Before any is open, the one of
        the keys dir's partner identity (a ``<name>.key`` whose ``<name>.pub`` says ``partner``)."""
        if not self._clients:
            self._client(self._own_partner())
        return next(iter(self._clients.values())).active_key(identity)

    def _own_partner(self) -> str:
        from consent.keys import names_with_role

        names = names_with_role(self.keys_dir, "partner")
        if not names:
            raise LookupError(f"no partner key in {self.keys_dir}: cannot ask the ledger for a key over gRPC")
        return names[0]


class LinkByURL:
    """A picklable stand-in for ConsentLink: opened on first use in whichever process (Ray actor) it lands in."""

    def __init__(self, url: str):
        self.url = url
        self._link: ConsentLink | None = None

    def __getstate__(self):
        return {"url": self.url, "_link": None}

    def _open(self) -> ConsentLink:
        # Flower's simulation unpickles a fresh copy with every message: one link a process (``open_ledger``), not
        # a new database connection (or gRPC channel) and a cold HMAC memo every round.
        if self._link is None:
            self._link = open_ledger(self.url)
        return self._link

    def eligible_subjects(self, partner_id: str, purpose: str, categories: Sequence[str], tree_size: int) -> EligibleSet:
        return self._open().eligible_subjects(partner_id, purpose, categories, tree_size)

    def consenting_count(self, partner_id: str, purpose: str, categories: Sequence[str], tree_size: int) -> int:
        return self._open().consenting_count(partner_id, purpose, categories, tree_size)

    def subject_refs_for(self, partner_id: str, user_ids: Sequence[str]) -> dict[str, str]:
        return self._open().subject_refs_for(partner_id, user_ids)

    def sign_as(self, partner_id: str, message: bytes) -> bytes:
        return self._open().sign_as(partner_id, message)

    def partner_key(self, partner_id: str) -> str | None:
        return self._open().partner_key(partner_id)
