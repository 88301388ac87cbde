"""A partner's part of a round manifest: what it committed to using, under which DP parameters, with which code.

The part travels in the train reply as a ConfigRecord; the server checks it and folds it into the round manifest
that is appended to the ledger. Hashes are hex SHA-256:

* ``data_hash`` over the exact training matrix: the sorted subject_refs trained on, then X, churn and ltv as
  little-endian float32/float64 bytes in row order (rows ordered by subject_ref), so a partner can show later what
  it trained on without revealing it;
* ``code_hash`` over the client and model code that touched the rows (``client/`` and ``models/`` ``*.py``,
  path-sorted, path and content), so every partner can see they ran the same code.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord

from client.data import EligibleRows
from client.privacy import PrivateRound
from client.protocol import RoundConfig, from_config_record, to_config_record

CODE_PACKAGES = ("client", "models")


@dataclass(frozen=True)
class ManifestPart:
    """One partner's entry in a round manifest."""

    partner_id: str
    job_id: str
    server_round: int
    tree_size: int
    purpose: str
    categories: tuple[str, ...]
    eligible_root: str
    eligible_count: int
    num_examples: int
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    epsilon: float
    epsilon_round: float
    data_hash: str
    code_hash: str

    def to_record(self) -> ConfigRecord:
        return to_config_record(self)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> ManifestPart:
        return from_config_record(cls, record)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["categories"] = list(self.categories)
        return out


def manifest_part(partner_id: str, job: RoundConfig, rows: EligibleRows, spent: PrivateRound) -> ManifestPart:
    report = spent.report
    return ManifestPart(
        partner_id=partner_id,
        job_id=job.job_id,
        server_round=job.server_round,
        tree_size=job.tree_size,
        purpose=job.purpose,
        categories=tuple(job.categories),
        eligible_root=rows.eligible.root,
        eligible_count=rows.eligible.count,
        num_examples=int(report.n_rows),
        noise_multiplier=float(report.noise_multiplier),
        max_grad_norm=float(report.max_grad_norm),
        sample_rate=float(report.sample_rate),
        steps=int(report.steps),
        delta=float(report.delta),
        accountant=str(report.accountant),
        epsilon=spent.epsilon,
        epsilon_round=spent.epsilon_round,
        data_hash=data_hash(rows),
        code_hash=code_hash(),
    )


def data_hash(rows: EligibleRows) -> str:
    """SHA-256 of the training rows, ordered by subject_ref (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update("\n".join(rows.train_refs).encode("utf-8"))
    for column, dtype in ((rows.train.X, "<f4"), (rows.train.churn, "<f8"), (rows.train.ltv, "<f8")):
        digest.update(np.ascontiguousarray(np.asarray(column), dtype=dtype).tobytes())
    return digest.hexdigest()


def code_hash() -> str:
    """SHA-256 over the ``*.py`` files of the packages that touch a partner's rows."""
    return source_hash(CODE_PACKAGES)


@functools.lru_cache(maxsize=8)
def source_hash(packages: tuple[str, ...]) -> str:
    """SHA-256 over the ``*.py`` files of ``packages`` (path-sorted; relative path and content, NUL-separated)."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
