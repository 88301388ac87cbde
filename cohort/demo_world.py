"""The demo's world: the consortium of ``server.world`` (keys, ledger, partners, consents), and the users who later
withdraw or ask for erasure."""

from __future__ import annotations

import random
from pathlib import Path

from client.data import PartnerData
from models.data.cdnow import CDNOW_CATEGORIES  # CDNOW logs purchases only: profile + transaction columns
from server import world as consortium
from server.world import CATEGORIES, PURPOSE, ConsentStory, World, partner_users, record_consents

DemoWorld = World

__all__ = ["CATEGORIES", "CDNOW_CATEGORIES", "PURPOSE", "ConsentStory", "DemoWorld", "build_world",
           "exercise_rights", "record_consents"]  # fmt: skip


def build_world(out: Path, data: PartnerData, seed: int = 7, categories: tuple[str, ...] = CATEGORIES) -> World:
    """``server.world.build_world`` for the demo's purpose; ``seed`` is accepted for symmetry with the other steps
    (keys are always fresh randomness)."""
    return consortium.build_world(out, data, categories=categories)


def exercise_rights(world: World, withdraw_share: float = 0.05, seed: int = 11) -> None:
    """Between jobs: some users who had granted the job's purpose and categories (so earlier jobs used them)
    withdraw, and one asks for erasure. The next job must not see them."""
    rng = random.Random(seed)
    first = True
    for partner, desk in world.desks.items():
        granted = world.story.granted.get(partner) or partner_users(world, partner)
        consenting = [u for u, ref in desk.subject_refs(granted, create=False).items()
                      if world.ledger.current_consent(ref) is not None]  # fmt: skip
        rng.shuffle(consenting)
        n = max(1, int(len(consenting) * withdraw_share))
        leaving = consenting[:n]
        for user in leaving:
            desk.withdraw(user)
        world.story.withdrawn[partner] = leaving
        world.story.erased[partner] = []
        world.story.left_refs[partner] = list(desk.subject_refs(leaving, create=False).values())
        if first:
            world.story.left_refs[partner].append(desk.erase(consenting[n]))
            world.story.erased[partner] = [consenting[n]]
            first = False
