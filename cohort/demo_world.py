"""The demo's world before training: keys, a ledger, three platforms, and their users' consent decisions."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from client.data import SyntheticPlatforms
from cohort.keyring import init_keys, read_secret
from consent.keys import Identity
from consent.ledger import Ledger
from consent.partner import DEFAULT_NOTICE, PartnerDesk

PURPOSE = "churn_ltv_modelling"
CATEGORIES = ("behavioural", "transaction")


@dataclass
class ConsentStory:
    """What the demo's users decided, per partner: counts the demo prints and the tests check."""

    given: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    other_purpose: dict[str, int] = field(default_factory=dict)
    partial: dict[str, int] = field(default_factory=dict)
    withdrawn: dict[str, list[str]] = field(default_factory=dict)  # partner -> user ids
    erased: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class DemoWorld:
    out: Path
    ledger: Ledger
    operator: Identity
    coordinator: Identity
    auditor: Identity
    desks: dict[str, PartnerDesk]
    data: SyntheticPlatforms
    story: ConsentStory

    @property
    def db_path(self) -> Path:
        return self.out / "ledger.db"

    @property
    def keys_dir(self) -> Path:
        return self.out / "keys"


def build_world(out: Path, data: SyntheticPlatforms, seed: int = 7) -> DemoWorld:
    keys = out / "keys"
    init_keys(keys, list(data.partners), force=True)
    operator = Identity.load(keys, "operator")
    ledger = Ledger.open(str(out / "ledger.db"), operator)
    coordinator, auditor = Identity.load(keys, "coordinator"), Identity.load(keys, "auditor")
    ledger.register(coordinator)
    ledger.register(auditor)
    desks = {}
    for partner in data.partners:
        ident = Identity.load(keys, partner)
        ledger.register(ident)
        desks[partner] = PartnerDesk(ident, read_secret(keys / f"{partner}.hmac"), ledger)
        desks[partner].publish_notice(DEFAULT_NOTICE, [PURPOSE, "recommendation"])
    return DemoWorld(out, ledger, operator, coordinator, auditor, desks, data, ConsentStory())


def record_consents(world: DemoWorld, seed: int = 7) -> None:
    """Most users agree; some refuse, some allow only another purpose or only one category (both ineligible)."""
    rng = random.Random(seed)
    for partner, desk in world.desks.items():
        users = [str(u) for u in world.data.features(partner, CATEGORIES).user_ids]
        decisions, counts = [], {"given": 0, "refused": 0, "other": 0, "partial": 0}
        for user in users:
            roll = rng.random()
            if roll < 0.76:
                decisions.append(_decision(user, [PURPOSE, "recommendation"], CATEGORIES))
                counts["given"] += 1
            elif roll < 0.86:
                decisions.append(_decision(user, [PURPOSE], CATEGORIES, given=False))
                counts["refused"] += 1
            elif roll < 0.93:
                decisions.append(_decision(user, ["recommendation"], CATEGORIES))
                counts["other"] += 1
            else:
                decisions.append(_decision(user, [PURPOSE], ["behavioural"]))
                counts["partial"] += 1
        desk.record(decisions)
        world.story.given[partner] = counts["given"]
        world.story.refused[partner] = counts["refused"]
        world.story.other_purpose[partner] = counts["other"]
        world.story.partial[partner] = counts["partial"]


def exercise_rights(world: DemoWorld, withdraw_share: float = 0.05, seed: int = 11) -> None:
    """Between jobs: some users withdraw, and one asks for erasure. The next job must not see them."""
    rng = random.Random(seed)
    first = True
    for partner, desk in world.desks.items():
        consenting = [u for u, ref in desk.subject_refs(_users(world, partner), create=False).items()
                      if world.ledger.current_consent(ref) is not None]  # fmt: skip
        rng.shuffle(consenting)
        n = max(1, int(len(consenting) * withdraw_share))
        leaving = consenting[:n]
        for user in leaving:
            desk.withdraw(user)
        world.story.withdrawn[partner] = leaving
        world.story.erased[partner] = []
        if first:
            desk.erase(consenting[n])
            world.story.erased[partner] = [consenting[n]]
            first = False


def _users(world: DemoWorld, partner: str) -> list[str]:
    return [str(u) for u in world.data.features(partner, CATEGORIES).user_ids]


def _decision(user: str, purposes, categories, given: bool = True) -> dict:
    return {"user_id": user, "purposes": list(purposes), "data_categories": list(categories), "given": given}
