"""The round manifest: what one round did, in a form the ledger can append and an auditor can check.

One manifest per completed round: the job and its fixed checkpoint, each contributing partner's part (eligible-set
commitment root + count, DP parameters, epsilon spent, data and code hashes), the updates refused or failed and the
partners that did not answer in time, and the hashes of the global model before and after the round.

``model_hash`` is SHA-256 over, for each array in order: its name, dtype, shape and C-order bytes, each followed by
a NUL, so the same weights give the same hash on any machine.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord

from client.manifest import ManifestPart, source_hash
from server.job import Job
from server.screening import Refusal

SERVER_CODE_PACKAGES = ("server", "client", "models")


@dataclass(frozen=True)
class RoundManifest:
    job_id: str
    server_round: int
    tree_size: int
    purpose: str
    categories: tuple[str, ...]
    strategy: str
    target_epsilon: float
    delta: float
    partners: tuple[ManifestPart, ...]
    refused: tuple[Refusal, ...]
    failed: tuple[Refusal, ...]
    missing_nodes: tuple[int, ...]
    model_in_hash: str
    model_out_hash: str
    server_code_hash: str
    aggregation: dict | None = None  # secure jobs: the trust statement of server.secure_aggregation
    closed_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def epsilon_max(self) -> float:
        """The worst (largest) cumulative epsilon of any partner after this round: what the job has spent."""
        return max((p.epsilon for p in self.partners), default=0.0)

    @property
    def epsilon_by_partner(self) -> dict[str, float]:
        return {p.partner_id: p.epsilon for p in self.partners}

    def to_dict(self) -> dict:
        """Plain JSON-able dict (sorted lists), the body of a ``round.manifest`` ledger entry."""
        return {
            "job_id": self.job_id,
            "round": self.server_round,
            "tree_size": self.tree_size,
            "purpose": self.purpose,
            "categories": list(self.categories),
            "strategy": self.strategy,
            "dp": {"target_epsilon": self.target_epsilon, "delta": self.delta, "epsilon_max": self.epsilon_max},
            "partners": [p.to_dict() for p in sorted(self.partners, key=lambda p: p.partner_id)],
            "refused": [r.to_dict() for r in self.refused],
            "failed": [r.to_dict() for r in self.failed],
            "missing_nodes": sorted(self.missing_nodes),
            "model_in_hash": self.model_in_hash,
            "model_out_hash": self.model_out_hash,
            "server_code_hash": self.server_code_hash,
            "closed_at": self.closed_at,
        } | ({"aggregation": dict(self.aggregation)} if self.aggregation else {})


def round_manifest(
    job: Job,
    server_round: int,
    parts: list[ManifestPart],
    refused: list[Refusal],
    failed: list[Refusal],
    missing_nodes: list[int],
    model_in: ArrayRecord,
    model_out: ArrayRecord,
    aggregation: dict | None = None,
) -> RoundManifest:
    return RoundManifest(
        job_id=job.job_id,
        server_round=server_round,
        tree_size=job.tree_size,
        purpose=job.purpose,
        categories=tuple(sorted(job.categories)),
        strategy=job.strategy,
        target_epsilon=job.target_epsilon,
        delta=job.delta,
        partners=tuple(parts),
        refused=tuple(refused),
        failed=tuple(failed),
        missing_nodes=tuple(sorted(missing_nodes)),
        model_in_hash=model_hash(model_in),
        model_out_hash=model_hash(model_out),
        server_code_hash=server_code_hash(),
        aggregation=aggregation,
    )


def model_hash(arrays: ArrayRecord) -> str:
    digest = hashlib.sha256()
    for name, array in arrays.items():
        values = np.ascontiguousarray(array.numpy())
        digest.update(f"{name}\0{values.dtype.str}\0{values.shape}\0".encode())
        digest.update(values.tobytes() + b"\0")
    return digest.hexdigest()


def server_code_hash() -> str:
    """SHA-256 over the ``*.py`` of the packages the coordinator runs."""
    return source_hash(SERVER_CODE_PACKAGES)
