"""A self-contained consortium on one filesystem: keys, a SQLite ledger, partners and their users' consent decisions.

What ``cohort demo`` and a bare ``flwr run .`` (``server.embedded``) stand on. Everything is written under ``out/``:
``ledger.db`` and ``keys/`` (operator, coordinator, auditor, one Ed25519 key and HMAC secret per partner), and each
partner publishes its notice before recording consents (the ledger refuses consents citing an unpublished notice).
For a given seed, purpose and categories the consent decisions are always the same.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from client.data import PartnerData
from consent.keyring import init_keys, read_secret
from consent.keys import Identity
from consent.ledger import Ledger
from consent.partner import DEFAULT_NOTICE, PartnerDesk

PURPOSE = "churn_ltv_modelling"
OTHER_PURPOSE = "recommendation"  # what the users who consent to something else allow
CATEGORIES = ("behavioural", "transaction")


@dataclass
class ConsentStory:
    """What the users decided, per partner: counts the demo prints and the tests check, and who left later."""

    given: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    other_purpose: dict[str, int] = field(default_factory=dict)
    partial: dict[str, int] = field(default_factory=dict)
    granted: dict[str, list[str]] = field(default_factory=dict)  # partner -> users who granted the job's use
    withdrawn: dict[str, list[str]] = field(default_factory=dict)  # partner -> user ids
    erased: dict[str, list[str]] = field(default_factory=dict)
    # partner -> subject_refs of those who withdrew or were erased, kept so the demo can prove what happened to them
    # (an erased user id no longer resolves to its ref: that is the point of erasure).
    left_refs: dict[str, list[str]] = field(default_factory=dict)

    def users(self, partner: str) -> int:
        return self.given[partner] + self.refused[partner] + self.other_purpose[partner] + self.partial[partner]


class LedgerDir:
    """Where a consortium's files are: ``ledger.db`` and ``keys/`` under ``self.out``."""

    out: Path

    @property
    def db_path(self) -> Path:
        return self.out / "ledger.db"

    @property
    def keys_dir(self) -> Path:
        return self.out / "keys"


@dataclass
class World(LedgerDir):
    out: Path
    ledger: Ledger
    operator: Identity
    coordinator: Identity
    auditor: Identity
    desks: dict[str, PartnerDesk]
    data: PartnerData
    story: ConsentStory
    categories: tuple[str, ...] = CATEGORIES  # what the jobs use, so what the consenting users grant


def build_world(out: Path, data: PartnerData, purposes: Sequence[str] = (PURPOSE, OTHER_PURPOSE),
                categories: Sequence[str] = CATEGORIES) -> World:  # fmt: skip
    """Fresh keys, a SQLite ledger at ``out/ledger.db`` with every key registered, and each partner's notice
    published for ``purposes``."""
    out = Path(out)
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
        desks[partner].publish_notice(DEFAULT_NOTICE, list(dict.fromkeys(purposes)))
    return World(out, ledger, operator, coordinator, auditor, desks, data, ConsentStory(), tuple(categories))


def record_consents(world: World, seed: int = 7, purpose: str = PURPOSE) -> None:
    """Most users agree; some refuse, some allow only another purpose or only one category (both ineligible)."""
    rng = random.Random(seed)
    cats = world.categories
    other = other_purpose(purpose)
    for partner, desk in world.desks.items():
        users = partner_users(world, partner)
        decisions, counts, granted = [], {"given": 0, "refused": 0, "other": 0, "partial": 0}, []
        for user in users:
            roll = rng.random()
            if roll < 0.76:
                decisions.append(_decision(user, [purpose, other], cats))
                counts["given"] += 1
                granted.append(user)
            elif roll < 0.86:
                decisions.append(_decision(user, [purpose], cats, given=False))
                counts["refused"] += 1
            elif roll < 0.93:
                decisions.append(_decision(user, [other], cats))
                counts["other"] += 1
            else:
                decisions.append(_decision(user, [purpose], cats[:1]))  # one category of the two: not enough
                counts["partial"] += 1
        desk.record(decisions)
        world.story.given[partner] = counts["given"]
        world.story.refused[partner] = counts["refused"]
        world.story.other_purpose[partner] = counts["other"]
        world.story.partial[partner] = counts["partial"]
        world.story.granted[partner] = granted


def other_purpose(purpose: str) -> str:
    """The purpose the "consents to something else" users allow: never the job's own."""
    return OTHER_PURPOSE if purpose != OTHER_PURPOSE else "analytics"


def partner_users(world: World, partner: str) -> list[str]:
    return [str(u) for u in world.data.features(partner, world.categories).user_ids]


def _decision(user: str, purposes, categories, given: bool = True) -> dict:
    return {"user_id": user, "purposes": list(purposes), "data_categories": list(categories), "given": given}
