"""The round audit (``consent.audit.audit_rounds``) of a ledger with long secure jobs: every round re-derived from
the log, with each job's consent fold and non-membership proofs worked out once (``reuse``), against working every
round out afresh (``reuse=False``, what the audit did before).

    python benchmarks/bench_round_audit.py [--db LEDGER] [--rounds 150] [--doc]

Without ``--db`` it first runs ``cohort demo --data cdnow --aggregation secure`` (``--rounds`` a job) into a
temporary directory and audits that ledger: two secure jobs on the real CDNOW partners (~6,000 eligible subjects
each).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_federated_cdnow import load_average, machine, update_subsection  # noqa: E402


def secure_demo_ledger(out: Path, rounds: int) -> tuple[Path, float]:
    """The demo's ledger, and the demo's own wall time (its closing audit included)."""
    from rich.console import Console

    from cohort.demo import quiet_flower, run_demo

    quiet_flower()
    demo = run_demo(out, rounds=rounds, data="cdnow", aggregation="secure", console=Console(quiet=True))
    return out / "ledger.db", demo.seconds


def timed_audit(db: Path, reuse: bool) -> tuple[float, object]:
    from consent.audit import audit_rounds
    from consent.store.log import LedgerStore

    store = LedgerStore.open(str(db), migrate=False)
    started = time.perf_counter()
    report = audit_rounds(store, reuse=reuse)
    seconds = time.perf_counter() - started
    store.close()
    return seconds, report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, help="an existing SQLite ledger (default: run the CDNOW secure demo)")
    parser.add_argument("--rounds", type=int, default=150, help="rounds per job of the demo it runs")
    parser.add_argument("--doc", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cohort-bench-audit-") as tmp:
        db, demo_seconds = (args.db, None) if args.db else secure_demo_ledger(Path(tmp), args.rounds)
        fast, report = timed_audit(db, reuse=True)
        slow, fresh = timed_audit(db, reuse=False)
    if report != fresh:
        raise SystemExit("the reusing audit's report differs from a fresh audit's: a bug")
    source = (f"`--db {args.db}`" if args.db else f"the ledger of `cohort demo --data cdnow --aggregation secure "
              f"--rounds {args.rounds}`, which took {demo_seconds:.0f} s, its own closing audit included")
    text = "\n".join([
        f"Command: `python benchmarks/bench_round_audit.py{'' if args.db else f' --rounds {args.rounds}'}`; {source}.",
        "",
        f"Machine: {machine()}; load average {load_average()}.",
        "",
        "| audit | partner-rounds | non-membership proofs counted | problems | seconds |",
        "|---|---|---|---|---|",
        f"| each job's fold and proofs once (`audit_rounds`) | {len(report.rounds)} | "
        f"{sum(r.absent_proven for r in report.rounds):,} | {len(report.problems)} | {fast:.1f} |",
        f"| every round afresh (`reuse=False`, the audit before) | {len(fresh.rounds)} | "
        f"{sum(r.absent_proven for r in fresh.rounds):,} | {len(fresh.problems)} | {slow:.1f} |",
    ])  # fmt: skip
    print(text)
    if args.doc:
        update_subsection("Round audit of long secure jobs", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
