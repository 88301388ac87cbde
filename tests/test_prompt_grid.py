"""server.prompt_grid: Flower's push-then-pull contract of send_and_receive, with a short interval of its own."""

from __future__ import annotations

import time
from types import SimpleNamespace

from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from server.prompt_grid import IN_MEMORY_INTERVAL, REMOTE_INTERVAL, PromptGrid, prompt


class SlowNodes(Grid):
    """Node ``n`` replies ``n`` pulls after its message was pushed; node 0 never does; node -1 never does either, and
    its message expires at the third pull."""

    def __init__(self) -> None:
        self.pulls, self.due = 0, {}

    def set_run(self, run) -> None: ...

    @property
    def run(self):
        return "the run"

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return SimpleNamespace(dst=dst_node_id)

    def get_node_ids(self):
        return [0, 1, 2, 3]

    def push_messages(self, messages):
        ids = []
        for m in messages:
            ids.append(f"msg-{m.dst}")
            self.due[ids[-1]] = m.dst
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        ready = [i for i in message_ids if 0 < self.due[i] <= self.pulls]
        got = [reply(i) for i in ready]
        if self.pulls == 3:  # what a SuperLink says of a message whose TTL ran out before its node answered
            got += [reply(i, ErrorCode.MESSAGE_UNAVAILABLE) for i in message_ids if self.due[i] < 0]
        return got

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("PromptGrid must not fall back to the wrapped grid's send_and_receive")


def reply(message_id: str, error_code: int | None = None):
    error = SimpleNamespace(code=error_code, reason="expired") if error_code is not None else None
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=message_id), error=error,
                           has_error=lambda: error is not None)  # fmt: skip


def replies_to(got) -> list[str]:
    return sorted(m.metadata.reply_to_message_id for m in got)


def test_every_reply_comes_back_and_pulls_stop_when_the_last_one_has():
    inner = SlowNodes()
    grid = PromptGrid(inner, interval=0.001)
    got = grid.send_and_receive([SimpleNamespace(dst=n) for n in (1, 2, 3)], timeout=10.0)
    assert replies_to(got) == ["msg-1", "msg-2", "msg-3"] and inner.pulls == 3
    assert grid.run == "the run" and list(grid.get_node_ids()) == [0, 1, 2, 3]


def test_an_expired_message_is_no_reply_so_its_node_counts_as_not_answering():
    inner = SlowNodes()
    got = PromptGrid(inner, interval=0.001).send_and_receive([SimpleNamespace(dst=n) for n in (-1, 5)], timeout=10.0)
    assert replies_to(got) == ["msg-5"] and inner.pulls == 5  # node -1's expiry (pull 3) ended the wait for it


def test_the_timeout_returns_the_replies_that_arrived():
    inner = SlowNodes()
    started = time.monotonic()
    got = PromptGrid(inner, interval=0.01).send_and_receive([SimpleNamespace(dst=n) for n in (0, 1)], timeout=0.2)
    assert replies_to(got) == ["msg-1"]  # node 0 never answers: the round goes on with the others
    assert time.monotonic() - started >= 0.2 and 5 <= inner.pulls <= 25  # it kept looking, about every 10 ms


def test_the_interval_follows_the_grid_and_wrapping_is_done_once():
    remote = PromptGrid(SlowNodes())
    assert remote.interval == REMOTE_INTERVAL and prompt(remote) is remote
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    in_memory = PromptGrid(InMemoryGrid.__new__(InMemoryGrid))  # only its type matters here
    assert in_memory.interval == IN_MEMORY_INTERVAL < REMOTE_INTERVAL
