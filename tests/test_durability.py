"""Crash durability: every Append the server acknowledged survives a SIGKILL under load, and the log verifies.

The server runs as its own process (`python -m consent.service.server`), several client threads append through
it, the whole process group is SIGKILLed mid-load, and a fresh server on the same database must hold every
acknowledged entry, byte for byte, at its acknowledged index.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from consent import merkle
from consent.client import LedgerClient, LedgerRPCError
from consent.entries import make_entry
from consent.partner import DEFAULT_NOTICE, PartnerDesk
from test_service_support import CATEGORIES, PURPOSE, Env, database, decisions, make_keys

REPO = Path(__file__).resolve().parent.parent
LOAD_SECONDS = 2.5


class ServerProcess:
    def __init__(self, url: str, keys_dir: Path, log_path: Path):
        self.log = open(log_path, "ab")
        cmd = [sys.executable, "-m", "consent.service.server", "--db", url, "--port", "0", "--keys", str(keys_dir),
               "--insecure"]  # fmt: skip
        # Own session: the SIGKILL below takes the server and any worker processes it forked, like a host crash.
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=60).decode()
        except queue.Empty:
            self.kill()
            raise RuntimeError(f"ledger server did not start; see {log_path}") from None
        assert "listening on" in line, line
        self.address = line.split("listening on ", 1)[1].split()[0]

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.log.close()

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        finally:
            self.kill()


def _load(env: Env, address: str, stop: threading.Event):
    """Client threads appending until the server goes away; returns [(index, entry bytes)] acknowledged."""
    acked: list[tuple[int, bytes]] = []
    lock = threading.Lock()
    errors: list[str] = []

    def partner(name: str, tag: str):
        with LedgerClient(address, env.keys[name], timeout=10) as client:
            desk = PartnerDesk(env.keys[name], f"secret-of-{name}".encode(), client)
            k = 0
            while not stop.is_set():
                try:
                    entries = desk.consent_entries(decisions(f"{tag}-{k}-", 1 + k % 5))
                    indices = client.append(entries)
                except LedgerRPCError as exc:
                    errors.append(exc.code)
                    return
                with lock:
                    acked.extend(zip(indices, (e.data for e in entries)))
                k += 1

    def coordinator():
        ident = env.keys["coordinator"]
        with LedgerClient(address, ident, timeout=10) as client:
            k = 0
            while not stop.is_set():
                body = {"job_id": f"job-{k}", "purpose": PURPOSE, "data_categories": CATEGORIES,
                        "checkpoint": {"tree_size": k, "root": ""}, "rounds": 1, "target_epsilon": 1.0,
                        "delta": 1e-5}  # fmt: skip
                entry = make_entry("job.started", body, ident)
                try:
                    [index] = client.append([entry])
                except LedgerRPCError as exc:
                    errors.append(exc.code)
                    return
                with lock:
                    acked.append((index, entry.data))
                k += 1

    def guarded(fn):
        def run(*args):
            try:
                fn(*args)
            except Exception as exc:  # anything but a refused call is a test failure, not a quiet thread death
                errors.append(repr(exc))

        return run

    partner, coordinator = guarded(partner), guarded(coordinator)
    threads = [threading.Thread(target=partner, args=(p, f"{p}-{t}")) for p in ("partner-a", "partner-b")
               for t in range(3)]  # fmt: skip
    threads.append(threading.Thread(target=coordinator))
    for t in threads:
        t.start()
    return threads, acked, errors


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_acknowledged_appends_survive_sigkill(tmp_path, kind):
    keys_dir = tmp_path / "keys"
    keys = make_keys(keys_dir)
    with database(kind, tmp_path) as url:
        env = Env(server=None, url=url, keys=keys, keys_dir=keys_dir)
        first = ServerProcess(url, keys_dir, tmp_path / "server.log")
        stop = threading.Event()
        try:
            for name in ("partner-a", "partner-b"):  # the consents below cite DEFAULT_NOTICE
                with LedgerClient(first.address, keys[name], timeout=10) as client:
                    PartnerDesk(keys[name], b"-", client).publish_notice(DEFAULT_NOTICE, [PURPOSE])
            threads, acked, errors = _load(env, first.address, stop)
            time.sleep(LOAD_SECONDS)
        finally:
            first.kill()  # mid-load: appends are in flight in several threads
        for t in threads:
            t.join(30)
        stop.set()
        assert not any(t.is_alive() for t in threads)
        jobs = sum(b'"job.started"' in data for _, data in acked)
        print(f"{kind}: {len(acked)} entries acknowledged before the kill ({jobs} job.started)")
        assert len(acked) - jobs >= 50 and jobs >= 10, f"too little load to mean anything: {len(acked)}, {jobs}"
        assert set(errors) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}, errors

        second = ServerProcess(url, keys_dir, tmp_path / "server.log")
        try:
            with LedgerClient(second.address, keys["auditor"]) as auditor, \
                 LedgerClient(second.address, keys["coordinator"]) as coordinator:  # fmt: skip
                size = auditor.tree_size()
                stored = dict(auditor.entries(0, size))
                assert len(stored) == size >= max(i for i, _ in acked) + 1
                lost = [i for i, data in acked if stored.get(i) != data]
                assert not lost, f"{len(lost)} acknowledged entries missing or changed, e.g. {lost[:5]}"
                checkpoint = coordinator.checkpoint()  # the store's root, from its stored subtree hashes
                assert checkpoint.tree_size == size
                assert merkle.root_hash([stored[i] for i in range(size)]) == checkpoint.root
                # The log keeps going after the crash.
                job = {"job_id": "after-crash", "purpose": PURPOSE, "data_categories": CATEGORIES,
                       "checkpoint": {"tree_size": size, "root": ""}, "rounds": 1, "target_epsilon": 1.0,
                       "delta": 1e-5}  # fmt: skip
                assert coordinator.append([make_entry("job.started", job, keys["coordinator"])]) == [size]
        finally:
            second.terminate()
        from consent.verify import verify_ledger

        report = verify_ledger(url, workers=0)
        assert report.ok, report.problems[:5]
        assert report.tree_size == size + 1
