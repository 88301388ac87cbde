"""Milliseconds per privacy-budget charge of one partner's round (BudgetBook.charge), SQLite and PostgreSQL.

After every round the server charges each eligible subject of each partner that round's ε (``server.ledger_hooks``),
on the ServerApp's thread: a secure job of hundreds of one-step rounds charges the same ~8,000 CDNOW subjects a
partner every round. Measured: the first charge of a job (the subjects' rows are new) and the later ones (updates).

    python benchmarks/bench_budget_charge.py [--subjects 7900] [--rounds 20] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ledger_fixtures as fx

from consent.store.budget import BudgetBook
from consent.store.engine import open_engine


def measure(url: str, subjects: int, rounds: int) -> tuple[float, float]:
    """(ms of the first charge, median ms of the next ``rounds``) for one partner of ``subjects`` subjects."""
    engine = open_engine(url)
    try:
        book = BudgetBook(engine)
        refs = [os.urandom(16).hex() for _ in range(subjects)]
        book.charge("other-job", 1, "partner-b", refs[: subjects // 2], 0.5)  # another partner's rows in the table
        t0 = time.perf_counter()
        book.charge("job", 1, "partner-a", refs, 0.1)
        first = (time.perf_counter() - t0) * 1e3
        later = []
        for r in range(2, rounds + 2):
            t0 = time.perf_counter()
            book.charge("job", r, "partner-a", refs, 0.01)
            later.append((time.perf_counter() - t0) * 1e3)
        spent = book.spent("partner-a", refs[:3])
        expected = 0.1 + 0.01 * rounds
        assert all(abs(v - expected) < 1e-9 for v in spent.values()) and len(spent) == 3, spent
        return first, statistics.median(later)
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=7900, help="eligible subjects of the partner (CDNOW: ~7,900)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--backends", default="sqlite,postgres")
    args = ap.parse_args()
    for backend, url in fx.each_fresh_database(args.backends):
        first, later = measure(url, args.subjects, args.rounds)
        print(f"{backend}: {args.subjects} subjects, first charge {first:.1f} ms, later charges {later:.1f} ms "
              f"(median of {args.rounds})")  # fmt: skip


if __name__ == "__main__":
    main()
