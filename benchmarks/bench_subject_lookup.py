"""Milliseconds per subject-ref lookup of one partner's users (``SubjectVault.subject_refs``), SQLite and PostgreSQL.

Every round each partner maps its users' HMACs to subject_refs afresh (``client.consent_link``: an erasure between
rounds takes the user out at once), so a CDNOW partner asks for ~7,900 HMACs a round. The users are registered
in batches of 500 first, as partners record consents, with the lookup each registration starts with; then the
lookup is timed, and again after ``ANALYZE``. The form before ``consent.store.members`` (``IN`` lists of 500) runs
beside it. On PostgreSQL that form is slow after such a start: psycopg prepares a statement run 5 times on a
connection, and the generic plan the server made while the table was small (a scan comparing every row with each of
the 500 parameters) stays in use as the table grows.

    python benchmarks/bench_subject_lookup.py [--users 7900] [--repeat 10] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import statistics
import time

import ledger_fixtures as fx
from sqlalchemy import select, text

from consent.store import tables as t
from consent.store.engine import open_engine
from consent.store.vault import SubjectVault, user_hmac

PARTNERS = ("partner-a", "partner-b", "partner-c")


def chunked_lookup(engine, partner_id: str, hmacs: list[str], chunk: int = 500) -> dict[str, str]:
    """The lookup as it was: one ``IN`` list of ``chunk`` HMACs per statement."""
    out = {}
    with engine.begin() as conn:
        for i in range(0, len(hmacs), chunk):
            q = select(t.subject_map.c.user_hmac, t.subject_map.c.subject_ref).where(
                t.subject_map.c.partner_id == partner_id, t.subject_map.c.user_hmac.in_(hmacs[i : i + chunk]))
            out.update({r[0]: r[1] for r in conn.execute(q)})
    return out


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(url: str, users: int, repeat: int) -> dict[str, float]:
    engine = open_engine(url)
    try:
        vault = SubjectVault(engine)
        hmacs = [user_hmac(b"bench-secret", f"user-{i}") for i in range(users)]
        for p in PARTNERS:
            for i in range(0, users, 500):
                chunked_lookup(engine, p, hmacs[i : i + 500])  # what registering a batch asked first, before
                vault.subject_refs(p, hmacs[i : i + 500], create=True)
        expected = vault.subject_refs(PARTNERS[0], hmacs, create=False)
        assert len(expected) == users and chunked_lookup(engine, PARTNERS[0], hmacs) == expected
        out = {}
        for stats in ("after registering", "after ANALYZE"):
            if stats == "after ANALYZE":
                with engine.begin() as conn:
                    conn.execute(text("ANALYZE"))
            out[f"{stats}, one statement"] = median_ms(lambda: vault.subject_refs(PARTNERS[0], hmacs, create=False),
                                                       repeat)  # fmt: skip
            out[f"{stats}, IN lists of 500"] = median_ms(lambda: chunked_lookup(engine, PARTNERS[0], hmacs), repeat)
        return out
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=7900, help="users of each of 3 partners (CDNOW: ~7,900)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--backends", default="sqlite,postgres")
    args = ap.parse_args()
    for backend, url in fx.each_fresh_database(args.backends):
        figures = measure(url, args.users, args.repeat)
        for name, ms in figures.items():
            print(f"{backend}: {args.users} users, {name}: {ms:.1f} ms (median of {args.repeat})")


if __name__ == "__main__":
    main()
