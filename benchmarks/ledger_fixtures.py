"""Shared pieces of the consent-ledger benchmarks: realistic pre-signed entries, fresh databases, machine facts.

Not a benchmark itself; `bench_ledger_append.py`, `bench_ledger_verify.py` and `bench_eligibility.py` import it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import sys
import uuid
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from consent.entries import make_entry  # noqa: E402
from consent.keys import Identity  # noqa: E402
from consent.partner import DEFAULT_NOTICE  # noqa: E402

PG_ADMIN = os.environ.get("COHORT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CACHE = Path(os.environ.get("COHORT_BENCH_CACHE", "/tmp/cohort-bench"))

NOTICE = DEFAULT_NOTICE.ref()  # every consent cites a notice its partner published first (publish_notice)
PURPOSE_MIX = (
    ["churn_ltv_modelling"],
    ["churn_ltv_modelling", "recommendation"],
    ["analytics", "churn_ltv_modelling"],
    ["recommendation"],
)
CATEGORY_MIX = (["behavioural", "transaction"], ["basic", "behavioural", "transaction"], ["behavioural"])


def publish_notice(ledger, partner: Identity) -> int:
    """The `notice.published` entry the ledger requires before it accepts consents citing NOTICE."""
    body = {"partner_id": partner.name, "notice_id": DEFAULT_NOTICE.notice_id, "version": DEFAULT_NOTICE.version,
            "sha256": DEFAULT_NOTICE.sha256, "purposes": sorted({p for mix in PURPOSE_MIX for p in mix})}  # fmt: skip
    return ledger.append([make_entry("notice.published", body, partner)])[0]


def consent_body(partner_id: str, i: int, rnd: bytes) -> dict:
    """A consent.given body shaped like PartnerDesk.consent_entries makes (about 880 bytes once signed)."""
    return {
        "consent_id": rnd[:16].hex(),
        "supersedes": None,
        "partner_id": partner_id,
        "subject_ref": rnd[16:32].hex(),
        "purposes": PURPOSE_MIX[i % len(PURPOSE_MIX)],
        "data_categories": CATEGORY_MIX[i % len(CATEGORY_MIX)],
        "legal_basis": "consent",
        "notice": NOTICE,
        "collection_method": "app",
        "jurisdiction": "CN",
        "indicated_at": "2026-01-15",
        "valid_until": "2020-01-01" if i % 50 == 7 else None,  # 2% expired by date
        "recipients": ["cohort-consortium"],
        "cross_border": False,
        "evidence_commitment": hashlib.sha256(rnd[32:]).hexdigest(),
    }


def _sign_range(args) -> list[bytes]:
    identity_pem, name, start, end = args
    from cryptography.hazmat.primitives import serialization

    ident = Identity(name, "partner", serialization.load_pem_private_key(identity_pem, password=None))
    out = []
    for i in range(start, end):
        out.append(make_entry("consent.given", consent_body(name, i, os.urandom(48)), ident).data)
    return out


def signed_consents(partner: Identity, n: int, processes: int = 1) -> list[bytes]:
    """n pre-signed consent.given entries of distinct subjects (bytes as a client sends them)."""
    if processes <= 1 or n < 20_000:
        return _sign_range((_pem(partner), partner.name, 0, n))
    step = 50_000
    jobs = [(_pem(partner), partner.name, a, min(a + step, n)) for a in range(0, n, step)]
    with get_context("fork").Pool(processes) as pool:
        out: list[bytes] = []
        for part in pool.imap(_sign_range, jobs):
            out.extend(part)
    return out


def signed_consent_chunks(partner: Identity, n: int, chunk: int = 20_000, processes: int = 2):
    """Yields lists of pre-signed consent.given entries, n in all, signed in `processes` worker processes."""
    jobs = [(_pem(partner), partner.name, a, min(a + chunk, n)) for a in range(0, n, chunk)]
    with get_context("fork").Pool(processes) as pool:
        yield from pool.imap(_sign_range, jobs)


def _pem(ident: Identity) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return ident.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def each_fresh_database(backends: str):
    """(backend, URL of an empty ledger database) for each of a comma-separated ``--backends`` list, after printing
    the machine; each database is dropped before the next is made."""
    import tempfile

    print(f"{cpu_model()}, {os.cpu_count()} cores")
    for backend in backends.split(","):
        with tempfile.TemporaryDirectory() as d, fresh_database(backend, Path(d)) as url:
            yield backend, url


@contextmanager
def fresh_database(backend: str, tmpdir: Path):
    """Yields a URL for an empty ledger database; drops it afterwards."""
    if backend == "sqlite":
        path = tmpdir / f"bench-{uuid.uuid4().hex[:8]}.db"
        try:
            yield str(path)
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        return
    import psycopg

    name = f"cohort_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine() -> str:
    return f"{os.cpu_count()} cores (nproc), {cpu_model()}, Python {platform.python_version()}"


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def peak_rss_mib() -> tuple[float, float]:
    """Peak resident set size (MiB) of this process and of its largest waited-for child."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, kids


# ---- a large cached log, shared by bench_ledger_verify.py and bench_eligibility.py -----------------------------

BIG_VERSION = 2  # bump when the generated log changes shape


def big_log(n_consents: int, withdraw_every: int = 200, checkpoint_every: int = 100_000, batch: int = 1000,
            log=print) -> tuple[str, dict]:  # fmt: skip
    """A SQLite ledger with `n_consents` consent.given entries of distinct subjects by partner-a (plus one
    withdrawal per `withdraw_every` consents, and a checkpoint every `checkpoint_every` entries), built through
    Ledger.append and cached under CACHE; returns (path, facts). Rebuilt only if missing or of another shape."""
    import json
    import time

    from consent.ledger import Ledger

    CACHE.mkdir(parents=True, exist_ok=True)
    name = f"ledger-{n_consents}-w{withdraw_every}-v{BIG_VERSION}"
    path, meta_path = CACHE / f"{name}.db", CACHE / f"{name}.json"
    if path.exists() and meta_path.exists():
        return str(path), json.loads(meta_path.read_text())
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    t0 = time.perf_counter()
    operator = Identity.generate("operator", "operator")
    partner = Identity.generate("partner-a", "partner")
    ledger = Ledger.open(str(path), operator)
    ledger.register(partner)
    publish_notice(ledger, partner)
    ledger.register(Identity.generate("coordinator", "coordinator"))
    ledger.register(Identity.generate("partner-b", "partner"))
    done = withdrawals = 0
    next_cp = checkpoint_every
    for chunk in signed_consent_chunks(partner, n_consents):
        for i in range(0, len(chunk), batch):
            ledger.append(chunk[i : i + batch])
        ended = []
        for data in chunk[::withdraw_every]:
            body = json.loads(data)["body"]
            ended.append(make_entry("consent.withdrawn", {"consent_id": body["consent_id"], "partner_id": partner.name,
                                                          "subject_ref": body["subject_ref"],
                                                          "indicated_at": "2026-02-01"}, partner))  # fmt: skip
        if ended:
            ledger.append(ended)
            withdrawals += len(ended)
        done += len(chunk)
        if ledger.tree_size() >= next_cp:
            ledger.checkpoint()
            next_cp += checkpoint_every
        log(f"  built {done}/{n_consents} consents ({time.perf_counter() - t0:.0f} s, {load()})")
    ledger.checkpoint()
    facts = {"tree_size": ledger.tree_size(), "consents": n_consents, "withdrawals": withdrawals,
             "partner": partner.name, "build_seconds": round(time.perf_counter() - t0, 1),
             "bytes": path.stat().st_size}  # fmt: skip
    ledger.close()
    meta_path.write_text(json.dumps(facts))
    return str(path), facts
