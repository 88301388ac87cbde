"""A Flower grid that looks for replies at a short interval.

Flower's ``send_and_receive`` pushes the messages, pulls once, then sleeps between pulls: 3 s on the gRPC grid of a
deployment (``flwr.superlink.grid.http_grid``) and 0.1 s on the simulation's in-memory grid. A round waits out at
least one of those sleeps per exchange, and a secure round makes two (train, reveal): 6 s a round in a deployment
for sleeping alone. ``PromptGrid`` wraps the grid the ServerApp is given and does the same push-then-pull with its
own interval; everything else goes to the wrapped grid.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

IN_MEMORY_INTERVAL = 0.01  # s: a pull reads in-process state
REMOTE_INTERVAL = 0.1  # s: a pull is one small gRPC call to the SuperLink


class PromptGrid(Grid):
    def __init__(self, inner: Grid, interval: float | None = None) -> None:
        self.inner = inner
        self.interval = interval if interval is not None else (
            IN_MEMORY_INTERVAL if isinstance(inner, InMemoryGrid) else REMOTE_INTERVAL)  # fmt: skip

    def set_run(self, run) -> None:
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # fmt: skip
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self):
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's contract: the replies that arrived, once all have or ``timeout`` seconds have passed."""
        waiting = set(self.inner.push_messages(messages))
        end = time.monotonic() + timeout if timeout is not None else None
        replies: list[Message] = []
        while waiting:
            got = list(self.inner.pull_messages(waiting))
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            # The SuperLink's "your message expired before a reply came" is no reply from the node: left out, the
            # node counts as not answering within the round's timeout (pulling this often, one can land at the TTL).
            replies.extend(m for m in got if not _expired(m))
            if not waiting or (end is not None and time.monotonic() >= end):
                break
            time.sleep(self.interval if end is None else max(0.0, min(self.interval, end - time.monotonic())))
        return replies


def _expired(msg: Message) -> bool:
    return msg.has_error() and msg.error.code == ErrorCode.MESSAGE_UNAVAILABLE


def prompt(grid: Grid) -> Grid:
    return grid if isinstance(grid, PromptGrid) else PromptGrid(grid)
