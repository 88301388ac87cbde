"""The ServerApp's embedded ledger: what a bare ``flwr run .`` uses when the run config names no ledger at all.

With no ``ledger-target``, ``ledger-db`` or ``ledger-url`` and no fixed ``tree-size``, the ServerApp sets up the
same self-contained world ``cohort demo`` does, on its own filesystem:

* ``<output-dir>/`` (or a fresh ``$TMPDIR/cohort-flwr-run-*/`` without ``output-dir``) receives ``ledger.db`` (SQLite,
  WAL) and ``keys/`` (operator, coordinator, auditor and one Ed25519 key + HMAC secret per partner);
* one partner per SuperNode Flower started: SuperNode ``partition-id`` i is partner i of the run config's
  ``partners`` list (``client.partner``), so the ledger gets exactly the first N of them, N = the number of nodes on
  the grid; their synthetic users (``users-per-platform``, ``data-seed``) record their consents as in the demo
  (most agree; some refuse, some allow only another purpose, some only one data category);
* the coordinator's ledger hooks (``server.ledger_hooks.LedgerBinding``) are wired as for ``ledger-db``, and the
  partners learn where the ledger is from the round config (``Job.ledger_link`` -> ``RoundConfig.ledger_link``):
  simulated SuperNodes share the ServerApp's filesystem. A SuperNode's own ``ledger-url`` still wins.

An ``output-dir`` that already holds an embedded ledger is continued (a new job on the same ledger, consents as they
are); a job id that already started there is refused. Deployments name their ledger explicitly instead.

World building and consent recording are ``server.world``'s, shared with ``cohort demo``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from flwr.serverapp import Grid

from client.consent_link import link_url
from client.partner import data_from_run_config
from consent.keys import Identity
from consent.ledger import Ledger
from server.job import Job, NotEnoughPartners, PreflightError
from server.ledger_hooks import LedgerBinding
from server.partners import connected_partners
from server.runner import JobHooks, JobResult
from server.world import LedgerDir, build_world, other_purpose, record_consents

log = logging.getLogger(__name__)

LEDGER_KEYS = ("ledger-target", "ledger-db", "ledger-url")
SETTLE_S = 1.0  # the node count must hold this long before the world is built (simulation registers nodes one by one)


# ---- the ServerApp's side ------------------------------------------------------------------------------------------


def wants_embedded_ledger(run_config: Mapping[str, Any]) -> bool:
    """True when the run config names no ledger and does not fix the checkpoint itself (a bare ``flwr run .``)."""
    if any(str(run_config.get(key, "") or "") for key in LEDGER_KEYS):
        return False
    return int(run_config.get("tree-size", 0) or 0) == 0


@dataclass
class EmbeddedLedger(LedgerDir):
    """What the ServerApp set up: where it is, and the job and hooks that use it."""

    out: Path
    partners: tuple[str, ...]
    job: Job
    hooks: JobHooks
    binding: LedgerBinding  # the coordinator's side of the ledger (binding.ledger: the open consent.ledger.Ledger)
    continued: bool  # an existing ledger in output-dir, not a new one

    def summary(self, result: JobResult) -> str:
        return (f"Cohort: job {result.job.job_id} finished: {len(result.manifests)} round manifest(s) appended to the "
                f"embedded ledger {self.db_path}; result.json and model.npz in {self.out}. "
                f"Verify it: cohort ledger verify --db {self.db_path}")  # fmt: skip


def embedded_ledger(grid: Grid, job: Job, run_config: Mapping[str, Any], say=print) -> EmbeddedLedger:
    """Wait for the SuperNodes, build (or continue) the ledger world for them, and wire it into ``job`` and hooks.

    ``say`` receives the human-readable lines (where the ledger is, how to verify it); the ServerApp's output is
    what ``flwr run --stream`` / ``flwr log`` show."""
    n_nodes = count_nodes(grid, job)
    source = data_from_run_config(run_config)
    partners = source.partners[:n_nodes]
    if n_nodes > len(source.partners):
        log.warning("embedded ledger: %d SuperNodes but only %d partners %s; partition-id >= %d will not be ready",
                    n_nodes, len(source.partners), list(source.partners), len(source.partners))  # fmt: skip
    data = replace(source, partners=tuple(partners))
    out_dir = str(run_config.get("output-dir", "") or "")
    out = Path(out_dir).expanduser().resolve() if out_dir else Path(tempfile.mkdtemp(prefix="cohort-flwr-run-"))
    out.mkdir(parents=True, exist_ok=True)
    continued = (out / "ledger.db").exists() and (out / "keys" / "operator.key").exists()
    if continued:
        operator = Identity.load(out / "keys", "operator")
        ledger = Ledger.open(str(out / "ledger.db"), operator)
        coordinator = Identity.load(out / "keys", "coordinator")
        started = {e.get("job_id") for _, e in _bodies(ledger, "job.started")}
        if job.job_id in started:
            ledger.close()
            raise PreflightError(
                f"job {job.job_id}: already started in the embedded ledger {out / 'ledger.db'}; give this run "
                "another job-id (--run-config \"job-id='...'\") or another output-dir"
            )
        partners = [p for p in partners if (out / "keys" / f"{p}.hmac").exists()]
        say(f"Cohort: continuing the embedded consent ledger {out / 'ledger.db'} (keys {out / 'keys'}); partners "
            f"{', '.join(partners)}")
    else:
        world = build_world(out, data, purposes=(job.purpose, other_purpose(job.purpose)), categories=job.categories)
        record_consents(world, seed=int(run_config.get("data-seed", 7)), purpose=job.purpose)
        ledger, coordinator = world.ledger, world.coordinator
        s = world.story
        say(f"Cohort: no ledger configured, so this run uses an embedded consent ledger: {world.db_path} "
            f"(keys {world.keys_dir}); {len(partners)} partner(s), one per SuperNode: "
            + ", ".join(f"{p} ({s.given[p]} of {s.users(p)} users consent)" for p in partners))
    cap = float(run_config.get("lifetime-epsilon", 0.0) or 0.0)
    lifetime = cap if cap > 0 else None
    day = dt.date.today().isoformat()
    binding = LedgerBinding(ledger, coordinator, lifetime_epsilon=lifetime, day=day)
    link = link_url(str(out / "ledger.db"), str(out / "keys"), lifetime, job.target_epsilon, day)
    job = replace(job, ledger_link=link, expected_partners=job.expected_partners or min(n_nodes, len(partners)))
    hooks = binding.hooks()
    finish, stop = hooks.on_finish, hooks.on_stop

    def seal() -> None:
        ledger.checkpoint()  # sign the final state: job.started, every round manifest, model.published / job.stopped
        ledger.close()

    def on_finish(result: JobResult) -> None:
        if finish is not None:
            finish(result)
        seal()

    def on_stop(stopped_job: Job, manifests: list, error: Exception) -> None:
        try:
            if stop is not None:
                stop(stopped_job, manifests, error)
        finally:
            seal()
            say(f"Cohort: job {stopped_job.job_id} stopped after {len(manifests)} round(s): {error}. "
                f"Embedded ledger: {out / 'ledger.db'}")  # fmt: skip

    hooks = replace(hooks, on_finish=on_finish, on_stop=on_stop)
    return EmbeddedLedger(out, tuple(partners), job, hooks, binding, continued)


def count_nodes(grid: Grid, job: Job, settle_s: float = SETTLE_S) -> int:
    """How many SuperNodes are connected: at least ``min_partners`` (waited for up to the preflight timeout), then
    until the count has held for ``settle_s``."""
    try:
        nodes = connected_partners(grid, job.min_partners, job.preflight_timeout_s, want=job.expected_partners,
                                   what="embedded ledger")  # fmt: skip
    except NotEnoughPartners as exc:
        raise PreflightError(
            f"job {job.job_id}: {exc} (a local simulation starts 2 SuperNodes unless told otherwise: "
            "flwr run . --federation-config 'num-supernodes=3')"
        ) from exc
    count, since = len(nodes), time.monotonic()
    deadline = since + 10 * settle_s
    while time.monotonic() - since < settle_s and time.monotonic() < deadline:
        time.sleep(0.1)
        now = len(grid.get_node_ids())
        if now != count:
            count, since = now, time.monotonic()
    return count


def _bodies(ledger: Ledger, entry_type: str):
    for index, data in ledger.store.find_by_type(entry_type):
        yield index, json.loads(data)["body"]
