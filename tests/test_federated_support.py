"""Test doubles for the federated tests (a consent ledger fake, fault-injecting ClientApps) and their own checks.

The fake stands in for ``consent``'s ledger behind ``client.eligibility.Ledger`` until the lead wires the real one:
each partner's users get a random-looking 128-bit subject_ref, and a fixed share of them (chosen by hash) consent.
It is a plain picklable object, so it travels to the Ray actors with the ClientApp; ``open_fake_ledger`` rebuilds it
from a JSON file for runs whose ClientApps live in other processes (``flwr run``, SuperNodes).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

from client.app import make_client_app
from client.data import SyntheticPlatforms
from client.eligibility import EligibleSet, Ledger, eligible_subjects
from client.protocol import ARRAYS, REVEAL
from consent.keys import Identity

CATEGORIES = ("behavioural", "transaction")
PURPOSE = "churn_ltv_modelling"


def subject_ref(partner_id: str, user_id: str) -> str:
    return hashlib.sha256(f"{partner_id}/{user_id}".encode()).hexdigest()[:32]


@dataclass
class FakeLedger:
    """Consent state frozen at one checkpoint: ``refs[partner][user_id]`` and the consenting refs per partner."""

    tree_size: int
    refs: dict[str, dict[str, str]]
    consenting: dict[str, list[str]]
    purpose: str = PURPOSE
    categories: tuple[str, ...] = CATEGORIES
    calls: list = field(default_factory=list, compare=False)

    def eligible_subjects(self, partner_id, purpose, categories, tree_size) -> EligibleSet:
        if tree_size != self.tree_size:
            raise ValueError(f"fake ledger only knows tree size {self.tree_size}, asked {tree_size}")
        if purpose != self.purpose or not set(categories) <= set(self.categories):
            return EligibleSet.of([])
        return EligibleSet.of(self.consenting.get(partner_id, []))

    def subject_refs_for(self, partner_id, user_ids):
        known = self.refs.get(partner_id, {})
        return {u: known[u] for u in user_ids if u in known}

    # client.peer_keys.KeyBook: each partner's ledger key is derived from its id (the fake has no keys dir)
    def sign_as(self, partner_id, message) -> bytes:
        return fake_partner_identity(partner_id).sign(message)

    def partner_key(self, partner_id) -> str | None:
        return fake_partner_identity(partner_id).public_b64 if partner_id in self.refs else None

    def to_json(self) -> str:
        return json.dumps({"tree_size": self.tree_size, "refs": self.refs, "consenting": self.consenting})


def fake_partner_identity(partner_id: str) -> Identity:
    """The fake ledger's key for ``partner_id``: an Ed25519 key seeded by the id, the same in every process."""
    seed = hashlib.sha256(f"fake-ledger-key/{partner_id}".encode()).digest()
    return Identity(partner_id, "partner", Ed25519PrivateKey.from_private_bytes(seed))


def fake_ledger_for(data: SyntheticPlatforms, consent_share: float = 0.8, tree_size: int = 42) -> FakeLedger:
    """Every user of every partner gets a ref; ``consent_share`` of them (by hash) consent."""
    refs, consenting = {}, {}
    for partner in data.partners:
        users = [str(u) for u in data.features(partner, CATEGORIES).user_ids]
        refs[partner] = {u: subject_ref(partner, u) for u in users}
        consenting[partner] = sorted(
            ref for ref in refs[partner].values() if int(ref[:8], 16) < consent_share * 16**8
        )
    return FakeLedger(tree_size=tree_size, refs=refs, consenting=consenting)


def open_fake_ledger(url: str) -> FakeLedger:
    """Opener for ``ledger-url = "py:test_federated_support:open_fake_ledger?path=/x/ledger.json"``."""
    path = parse_qs(urlparse(url.replace("py:", "py://", 1)).query)["path"][0]
    state = json.loads(Path(path).read_text())
    return FakeLedger(tree_size=state["tree_size"], refs=state["refs"], consenting=state["consenting"])


def faulty_client_app(
    ledger: Ledger, data, faults: dict[tuple[int, int], str], state_root: str | None = None
) -> ClientApp:
    """The real ClientApp, except that partition ``p`` in round ``r`` misbehaves as ``faults[(p, r)]`` says:
    ``nan`` / ``inf`` (poisoned arrays), ``shape`` (a layer of the wrong shape), ``crash`` (raises),
    ``slow:<seconds>`` (answers after that long), ``no-reveal`` (trains, then raises at the secure round's
    ``query.reveal``). ``state_root`` as for ``make_client_app``."""
    real = make_client_app(ledger=ledger, data=data, state_root=state_root)
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        fault = faults.get((int(context.node_config["partition-id"]), int(msg.content["config"]["server-round"])))
        if fault == "crash":
            raise RuntimeError("partner crashed mid-round")
        if fault and fault.startswith("slow:"):
            time.sleep(float(fault.split(":", 1)[1]))
        reply = real(msg, context)
        if fault in ("nan", "inf", "shape"):
            reply.content[ARRAYS] = _poisoned(reply.content[ARRAYS], fault)
        return reply

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return real(msg, context)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return real(msg, context)

    @app.query(REVEAL)
    def reveal(msg: Message, context: Context) -> Message:
        fault = faults.get((int(context.node_config["partition-id"]), int(msg.content["config"]["server-round"])))
        if fault == "no-reveal":
            raise RuntimeError("partner crashed before its reveal")
        return real(msg, context)

    return app


class InProcessGrid:
    """A stand-in for Flower's Grid that hands each message straight to a real ClientApp in this process (no Ray):
    node ``FIRST_NODE + p`` is partition ``p``, each with its own Context kept across messages. Nodes in ``silent``
    are connected but never answer; ``sent`` keeps every message the server sent."""

    FIRST_NODE = 100

    def __init__(self, app: ClientApp, num_partners: int, silent: set[int] | None = None) -> None:
        self.app = app
        self.contexts = {
            self.FIRST_NODE + p: Context(run_id=1, node_id=self.FIRST_NODE + p, node_config={"partition-id": p},
                                         state=RecordDict(), run_config={})  # fmt: skip
            for p in range(num_partners)
        }
        self.silent = set(silent or ())
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # what a real grid does when it sends
            self.sent.append(msg)
            if msg.metadata.dst_node_id not in self.silent:
                replies.append(self.app(msg, self.contexts[msg.metadata.dst_node_id]))
        return replies


def as_server_app(monkeypatch) -> None:
    """Flower builds a server's messages from the identity of the running ServerApp task; give it one."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _poisoned(arrays: ArrayRecord, fault: str) -> ArrayRecord:
    out = ArrayRecord()
    for i, (name, array) in enumerate(arrays.items()):
        values = array.numpy().copy()
        if i == 0 and fault == "shape":
            values = np.zeros((values.shape[0] + 1, *values.shape[1:]), dtype=values.dtype)
        elif i == 0:
            values.flat[0] = np.nan if fault == "nan" else np.inf
        out[name] = Array(values)
    return out


# --- checks of the doubles themselves (fast, no Flower run) ---------------------------------------------------------


def test_fake_ledger_answers_like_the_ledger_interface(tmp_path):
    data = SyntheticPlatforms(users_per_platform=120, seed=1)
    ledger = fake_ledger_for(data, consent_share=0.5)
    eligible = eligible_subjects(ledger, "content", PURPOSE, CATEGORIES, 42)
    assert 0 < eligible.count < 120 and list(eligible.subject_refs) == sorted(eligible.subject_refs)
    assert eligible_subjects(ledger, "content", "third_party_marketing", CATEGORIES, 42).count == 0
    (tmp_path / "ledger.json").write_text(ledger.to_json())
    reopened = open_fake_ledger(f"py:test_federated_support:open_fake_ledger?path={tmp_path / 'ledger.json'}")
    assert reopened.eligible_subjects("content", PURPOSE, CATEGORIES, 42) == eligible
