"""Signed, durable appends per second through the store API (Ledger.append), SQLite and PostgreSQL.

Pre-signed consent.given entries (~880 bytes, distinct subjects, one partner) are appended in batches of 1, 100
and 1000 to a fresh ledger; every append returns only after its commit is durable (SQLite WAL synchronous=FULL,
PostgreSQL synchronous_commit=on). Client-side signing is measured separately.

    python benchmarks/bench_ledger_append.py [--quick] [--backends sqlite,postgres] [--batches 1,100,1000] [--grpc]

With --grpc it also appends through the ConsentLedger gRPC service (`python -m consent.service.server`, plaintext
on loopback, in its own process) with consent.client.LedgerClient, one client, sequential calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import ledger_fixtures as fx

from consent.entries import make_entry
from consent.keys import Identity
from consent.ledger import Ledger

SIZES = {1: 1_000, 100: 20_000, 1000: 50_000}
QUICK = {1: 200, 100: 2_000, 1000: 10_000}


def signing_cost(partner: Identity, n: int = 2000) -> tuple[float, float]:
    """(µs per make_entry incl. canonical JSON and Ed25519 sign, µs per bare Ed25519 sign of ~800 bytes)."""
    import os

    bodies = [fx.consent_body(partner.name, i, os.urandom(48)) for i in range(n)]
    t0 = time.perf_counter()
    for b in bodies:
        make_entry("consent.given", b, partner)
    per_entry = (time.perf_counter() - t0) / n * 1e6
    msg = os.urandom(800)
    t0 = time.perf_counter()
    for _ in range(n):
        partner.sign(msg)
    return per_entry, (time.perf_counter() - t0) / n * 1e6


def _proc_cpu(pids) -> float:
    """User+system CPU seconds of the given processes so far (Linux /proc)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def _cpu_now(url: str) -> tuple[float, float, float]:
    """(this process, its signature workers, the PostgreSQL backends of this database) CPU seconds so far."""
    try:
        from consent import sigcheck

        workers = [w.proc.pid for w in sigcheck.POOL._procs]
    except ImportError:  # a version of the store without signature workers
        workers = []
    server = 0.0
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            name = url.rsplit("/", 1)[1]
            pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> "
                                               "pg_backend_pid()", (name,))]  # fmt: skip
        server = _proc_cpu(pids)
    return time.process_time(), _proc_cpu(workers), server


def run_once(backend: str, batch: int, entries: list[bytes], operator: Identity, partner: Identity, tmp: Path):
    """(appends/s, median batch latency, CPU µs per append: this process, signature workers, PostgreSQL server)."""
    with fx.fresh_database(backend, tmp) as url:
        ledger = Ledger.open(url, operator)
        try:
            ledger.register(partner)
            fx.publish_notice(ledger, partner)
            latencies = []
            cpu0 = _cpu_now(url)
            t0 = time.perf_counter()
            for i in range(0, len(entries), batch):
                t1 = time.perf_counter()
                ledger.append(entries[i : i + batch])
                latencies.append(time.perf_counter() - t1)
            elapsed = time.perf_counter() - t0
            cpu = [(b - a) / len(entries) * 1e6 for a, b in zip(cpu0, _cpu_now(url))]
            assert ledger.tree_size() == len(entries) + 3
        finally:
            ledger.close()
    return len(entries) / elapsed, statistics.median(latencies), cpu


def run_grpc(backend: str, batch: int, n: int, tmp: Path) -> tuple[float, float]:
    """Appends/s through LedgerClient -> gRPC -> server process -> Ledger.append, and the median call latency."""
    import socket
    import subprocess
    import sys

    from consent.keyring import init_keys
    from consent.client import LedgerClient

    keys = Path(tempfile.mkdtemp(prefix=f"keys-{backend}-", dir=tmp))
    made = {i.name: i for i in init_keys(keys, ["partner-a"])}
    partner = made["partner-a"]
    entries = fx.signed_consents(partner, n, processes=2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with fx.fresh_database(backend, tmp) as url:
        server = subprocess.Popen([sys.executable, "-m", "consent.service.server", "--db", url, "--port", str(port),
                                   "--keys", str(keys), "--insecure"], cwd=fx.ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            client = LedgerClient(f"127.0.0.1:{port}", partner)
            for _ in range(300):
                try:
                    client.tree_size()
                    break
                except Exception:
                    time.sleep(0.1)
            fx.publish_notice(client, partner)
            client.append(entries[:batch])  # warm-up: caches the partner key, starts the signature workers
            latencies = []
            t0 = time.perf_counter()
            for i in range(batch, n, batch):
                t1 = time.perf_counter()
                client.append(entries[i : i + batch])
                latencies.append(time.perf_counter() - t1)
            elapsed = time.perf_counter() - t0
            client.close()
        finally:
            server.terminate()
            server.wait(30)
    return (n - batch) / elapsed, statistics.median(latencies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer entries per run (smoke test)")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--batches", default="1,100,1000")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is reported")
    ap.add_argument("--tmpdir", default=None, help="where SQLite files go (default: a temp dir under /tmp)")
    ap.add_argument("--grpc", action="store_true", help="also append through the gRPC service (batch 1000)")
    args = ap.parse_args()
    sizes = QUICK if args.quick else SIZES
    batches = [int(b) for b in args.batches.split(",")]
    backends = [b for b in args.backends.split(",") if b]

    print(f"machine: {fx.machine()}")
    operator = Identity.generate("operator", "operator")
    partner = Identity.generate("partner-a", "partner")
    per_entry, per_sign = signing_cost(partner)
    print(f"client signing: make_entry {per_entry:.0f} µs/entry (canonical JSON + Ed25519), "
          f"bare Ed25519 sign {per_sign:.0f} µs  [{fx.load()}]")  # fmt: skip
    n_max = max(sizes.get(b, 10 * b) for b in batches)
    t0 = time.perf_counter()
    entries = fx.signed_consents(partner, n_max, processes=2)
    print(f"pre-signed {len(entries)} entries of {statistics.mean(map(len, entries[:1000])):.0f} bytes "
          f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="cohort-bench-", dir=args.tmpdir) as tmp:
        # Warm-up (not reported): starts the store's signature worker processes, as a running service has them.
        run_once("sqlite", 1000, entries[:2000], operator, partner, Path(tmp))
        for backend in backends:
            for batch in batches:
                n = sizes.get(batch, 10 * batch)
                rates, lats, cpus, loads = [], [], [], []
                for _ in range(args.repeat):
                    rate, lat, cpu = run_once(backend, batch, entries[:n], operator, partner, Path(tmp))
                    rates.append(rate)
                    lats.append(lat)
                    cpus.append(cpu)
                    loads.append(fx.load())
                cpu = [statistics.median(c[k] for c in cpus) for k in range(3)]
                print(f"{backend:8s} batch {batch:5d}: {statistics.median(rates):8.0f} appends/s "
                      f"(runs {', '.join(f'{r:.0f}' for r in rates)}; {n} entries/run; "
                      f"median batch latency {statistics.median(lats) * 1e3:.1f} ms; CPU/append {cpu[0]:.0f} µs here "
                      f"+ {cpu[1]:.0f} µs sig workers + {cpu[2]:.0f} µs PostgreSQL)  [{loads[-1]}]",
                      flush=True)  # fmt: skip
        if args.grpc:
            for backend in backends:
                n = sizes[1000]
                rates = [run_grpc(backend, 1000, n, Path(tmp)) for _ in range(args.repeat)]
                latency = statistics.median(lat for _, lat in rates) * 1e3
                print(f"{backend:8s} gRPC batch 1000: {statistics.median(r for r, _ in rates):8.0f} appends/s "
                      f"(runs {', '.join(f'{r:.0f}' for r, _ in rates)}; {n} entries/run; median call latency "
                      f"{latency:.1f} ms)  [{fx.load()}]", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
