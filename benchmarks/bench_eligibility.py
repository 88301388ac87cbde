"""Eligibility at a checkpoint for one partner with 1,000,000 consents: Ledger.eligible_set, with peak memory.

Uses the cached log of bench_ledger_verify.py (1,000,000 consent.given entries of distinct subjects by
partner-a, a withdrawal per 200, 2% past their valid_until, a mix of purposes and categories), built on first
use. Each measurement runs in a fresh process, so its peak RSS is its own.

    python benchmarks/bench_eligibility.py [--quick] [--consents N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import ledger_fixtures as fx

PURPOSE, CATEGORIES, DAY = "churn_ltv_modelling", ["behavioural"], "2026-03-01"


def measure(path: str) -> dict:
    import resource

    from consent import eligibility
    from consent.keys import Identity
    from consent.ledger import Ledger
    from consent.store.log import LedgerStore

    ledger = Ledger(LedgerStore.open(path, migrate=False), Identity.generate("operator", "operator"))
    try:
        cp = ledger.latest_checkpoint()
        t0, c0 = time.perf_counter(), time.process_time()
        eligible = ledger.eligible_set("partner-a", PURPOSE, CATEGORIES, tree_size=cp.tree_size, day=DAY)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        t1 = time.perf_counter()
        root = eligibility.eligible_root(eligible.subject_refs)
        root_seconds = time.perf_counter() - t1
        assert root == eligible.root
    finally:
        ledger.close()
    return {
        "tree_size": cp.tree_size,
        "count": eligible.count,
        "root": eligible.root.hex(),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "root_seconds": root_seconds,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a 50,000-consent log instead of 1,000,000")
    ap.add_argument("--consents", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # internal: one measurement, JSON out
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return

    n = args.consents or (50_000 if args.quick else 1_000_000)
    print(f"machine: {fx.machine()}")
    path, facts = fx.big_log(n)
    print(f"log: {path}: {facts['tree_size']} entries, {facts['consents']} consents of partner-a "
          f"({facts['withdrawals']} withdrawn)")  # fmt: skip
    for _ in range(args.repeat):
        before = fx.load()
        out = subprocess.run([sys.executable, __file__, "--measure", path], check=True, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"eligible_set(partner-a, {PURPOSE}, {CATEGORIES}) at checkpoint {r['tree_size']}: {r['count']} "
              f"eligible in {r['seconds']:.2f} s, {r['cpu_seconds']:.2f} s CPU (commitment root alone {r['root_seconds']:.2f} s); "
              f"peak RSS {r['rss_mib']:.0f} MiB; root {r['root'][:16]}…  [before: {before}; after: {fx.load()}]",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
