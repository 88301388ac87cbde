"""The partners (Flower nodes) a round is sent to: every connected one, waited for up to a deadline, never forever.

Flower's own ``sample_nodes`` waits without a deadline for the minimum number of nodes; a consortium job must
instead stop with a clear error when too few partners are there. Once preflight has run, only the nodes it found
ready count (``among``): a node that connects later was never checked against the ledger.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from server.job import NotEnoughPartners

log = logging.getLogger(__name__)

POLL_S = 0.5


def connected_partners(
    grid: Grid,
    at_least: int,
    timeout_s: float,
    want: int = 0,
    what: str = "round",
    among: Collection[int] | None = None,
) -> list[int]:
    """Node ids of connected partners (only those in ``among`` if given): as soon as ``want`` (>= ``at_least``) are
    there, or at the deadline if at least ``at_least`` are; otherwise ``NotEnoughPartners``."""
    want = max(want, at_least)
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(n for n in grid.get_node_ids() if among is None or n in among)
        if len(nodes) >= want:
            return nodes
        if time.monotonic() >= deadline:
            if len(nodes) >= at_least:
                return nodes
            raise NotEnoughPartners(
                f"{what}: only {len(nodes)} {'preflighted ' if among is not None else ''}partner(s) connected after "
                f"{timeout_s:g} s, need at least {at_least}"
            )
        log.info("%s: %d partner(s) connected, waiting for %d", what, len(nodes), want)
        time.sleep(POLL_S)


def messages_to(nodes: list[int], content: RecordDict, message_type: str, ttl_s: float) -> list[Message]:
    """One message per node with the same content; the TTL keeps a late node from working on a closed round."""
    return [Message(content, dst_node_id=node, message_type=message_type, ttl=ttl_s) for node in nodes]
