"""Full `cohort ledger verify` (consent.verify.verify_ledger) of a large SQLite log, with peak memory.

The log (1,000,000 consent.given entries by one partner, a withdrawal per 200 consents, a signed checkpoint per
100,000 entries) is built once through Ledger.append from pre-signed entries and cached under
/tmp/cohort-bench (COHORT_BENCH_CACHE); reruns reuse it. Each verification runs in a fresh process so its peak
RSS (and that of its worker processes) is its own.

    python benchmarks/bench_ledger_verify.py [--quick] [--consents N] [--workers W] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import ledger_fixtures as fx


def measure(path: str, workers: int) -> dict:
    import resource

    from consent.verify import verify_ledger

    t0 = time.perf_counter()
    report = verify_ledger(path, workers=workers)
    seconds = time.perf_counter() - t0
    return {
        "ok": report.ok,
        "problems": report.problems[:3],
        "entries": report.entries_checked,
        "signatures": report.signatures_checked,
        "checkpoints": report.checkpoints_checked,
        "seconds": seconds,
        "rss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_children_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "cpu_self_s": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),
        "cpu_children_s": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 50,000-consent log instead of 1,000,000")
    ap.add_argument("--consents", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2, help="signature worker processes (as `cohort ledger verify`)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: verify PATH, print JSON
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.workers)))
        return

    n = args.consents or (50_000 if args.quick else 1_000_000)
    print(f"machine: {fx.machine()}")
    path, facts = fx.big_log(n)
    print(f"log: {path}: {facts['tree_size']} entries ({facts['consents']} consent.given, {facts['withdrawals']} "
          f"withdrawals), {facts['bytes'] / 2**20:.0f} MiB; built in {facts['build_seconds']} s")  # fmt: skip
    for _ in range(args.repeat):
        before = fx.load()
        out = subprocess.run([sys.executable, __file__, "--measure", path, "--workers", str(args.workers)],
                             check=True, capture_output=True, text=True)  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        status = "OK" if r["ok"] else f"NOT OK {r['problems']}"
        print(f"verify {status}: {r['entries']} entries, {r['signatures']} signatures, {r['checkpoints']} checkpoints "
              f"in {r['seconds']:.1f} s ({r['entries'] / r['seconds']:.0f} entries/s, workers={args.workers}); "
              f"CPU {r['cpu_self_s']:.0f} s main + {r['cpu_children_s']:.0f} s workers; peak RSS "
              f"{r['rss_self_mib']:.0f} MiB main, {r['rss_children_mib']:.0f} MiB largest worker  "
              f"[before: {before}; after: {fx.load()}]", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
