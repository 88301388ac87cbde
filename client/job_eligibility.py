"""The eligible set a partner uses for a whole job: asked of the ledger once, then kept for every round.

Consent is fixed by the job's checkpoint, but the lifetime privacy budget is charged after every round
(``server.ledger_hooks``). Asked again in round 2, a ledger applying the lifetime cap would count the job's own
round-1 charge on top of the job's whole ε, drop the subjects closest to their cap, and so change mid-job the rows,
the noise calibration (``client.privacy`` plans for one fixed set) and the eligible root the manifests commit to.
So the first answer in a job (normally preflight's, before any charge) is kept in the node's ``Context.state`` and,
with a state dir, in ``<state_dir>/<job_id>.eligible.json``, so a restarted SuperNode keeps it too.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from flwr.app import ConfigRecord, RecordDict

from client.eligibility import EligibilityError, EligibleSet, Ledger, eligible_subjects
from client.protocol import RoundConfig
from client.state_files import job_file, write_json

STATE_KEY = "eligible-set"


def job_eligible_set(
    ledger: Ledger, partner_id: str, job: RoundConfig, state: RecordDict, state_dir: str | None = None
) -> EligibleSet:
    """``partner_id``'s eligible set for ``job`` at its checkpoint, the same answer in every round of the job."""
    key = f"{job.job_id}|{partner_id}|{job.tree_size}"
    record = state.config_records.get(STATE_KEY)
    if record is not None and record.get("key") == key:
        return _checked(record["subject-refs"], record["root"], key)
    eligible = _read(state_dir, job.job_id, key)
    if eligible is None:
        eligible = eligible_subjects(ledger, partner_id, job.purpose, job.categories, job.tree_size)
        _write(state_dir, job.job_id, key, eligible)
    state[STATE_KEY] = ConfigRecord({"key": key, "subject-refs": "\n".join(eligible.subject_refs),
                                     "root": eligible.root})  # fmt: skip
    return eligible


@functools.lru_cache(maxsize=8)  # the same kept set every round: its root is recomputed once per process
def _checked(joined: str, root: str, key: str) -> EligibleSet:
    eligible = EligibleSet.of([r for r in joined.split("\n") if r])
    if eligible.root != root:
        raise EligibilityError(f"the kept eligible set for {key} does not match its root")
    return eligible


def _path(state_dir: str, job_id: str) -> Path:
    return job_file(state_dir, job_id, "eligible")


def _read(state_dir: str | None, job_id: str, key: str) -> EligibleSet | None:
    if not state_dir or not _path(state_dir, job_id).exists():
        return None
    saved = json.loads(_path(state_dir, job_id).read_text())
    if saved.get("key") != key:
        return None
    return _checked("\n".join(saved["subject_refs"]), saved["root"], key)


def _write(state_dir: str | None, job_id: str, key: str, eligible: EligibleSet) -> None:
    if not state_dir:
        return
    kept = {"key": key, "subject_refs": list(eligible.subject_refs), "root": eligible.root}
    write_json(_path(state_dir, job_id), kept)
