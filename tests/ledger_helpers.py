"""Builders shared by the ledger tests: a ledger with registered parties and a few consents."""

from __future__ import annotations

from dataclasses import dataclass

from consent.keys import Identity
from consent.ledger import Ledger
from consent.partner import PartnerDesk

CHURN = "churn_ltv_modelling"


@dataclass
class World:
    ledger: Ledger
    operator: Identity
    coordinator: Identity
    auditor: Identity
    partners: dict[str, PartnerDesk]


def make_world(url: str, partners=("partner-a", "partner-b")) -> World:
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
    return World(ledger, operator, coordinator, auditor, desks)


def consent(user_id: str, purposes=(CHURN,), categories=("behavioural", "transaction"), given=True, **extra) -> dict:
    return {"user_id": user_id, "purposes": list(purposes), "data_categories": list(categories), "given": given, **extra}
