"""A partner's training rows: its feature table, cut down to the subjects eligible at the job's checkpoint.

Where the events come from is a ``PartnerData`` source: the seeded synthetic platforms (simulation, demo, tests)
or whatever a deployment plugs in. Feature tables are cached per process, since they do not change during a job;
the ClientApp hands in the job's eligible set, asked of the ledger once per job (``client.job_eligibility``).

Rows are split into a training part and a local evaluation part by a hash of the subject_ref, so the split is the
same in every round and on every run, and a subject never moves between the two.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from client.eligibility import EligibleSet, Ledger, eligible_subjects, subject_refs_for
from client.protocol import RoundConfig

DEFAULT_PLATFORMS = ("content", "group_buy", "loyal")


class FeatureRows(Protocol):
    """What the client needs of ``models.features.FeatureTable``."""

    user_ids: Any
    X: np.ndarray
    churn: np.ndarray
    ltv: np.ndarray
    feature_names: Sequence[str]

    def select(self, idx: np.ndarray) -> FeatureRows: ...


class PartnerData(Protocol):
    """A source of partners' feature tables. Must be picklable (it travels with the ClientApp to Ray actors)."""

    partners: tuple[str, ...]

    def features(self, partner_id: str, categories: tuple[str, ...]) -> FeatureRows: ...


@dataclass(frozen=True)
class SyntheticPlatforms:
    """The seeded synthetic social-commerce platforms of ``models.data.generator``, one partner per platform."""

    partners: tuple[str, ...] = DEFAULT_PLATFORMS
    users_per_platform: int = 2000
    seed: int = 7

    def features(self, partner_id: str, categories: tuple[str, ...]) -> FeatureRows:
        return _synthetic_features(self, partner_id, tuple(sorted(categories)))


@functools.lru_cache(maxsize=16)
def _synthetic_features(source: SyntheticPlatforms, partner_id: str, categories: tuple[str, ...]) -> FeatureRows:
    from models.features import build_features

    from models.data.generator import generate_platforms

    if partner_id not in source.partners:
        raise KeyError(f"no synthetic platform {partner_id!r}; have {list(source.partners)}")
    # A platform's events depend only on the seed and its name, so a partner generates just its own.
    events = generate_platforms(platforms=(partner_id,), users_per_platform=source.users_per_platform, seed=source.seed)
    platform = events[partner_id]
    windows = platform.attrs["windows"]
    return build_features(
        platform, windows.calibration_end, windows.holdout_end, categories=categories, start=windows.start
    )


@dataclass(frozen=True)
class EligibleRows:
    """A partner's rows for one round: only subjects eligible at the checkpoint, split train / local evaluation."""

    eligible: EligibleSet
    train: FeatureRows
    train_refs: tuple[str, ...]
    evaluation: FeatureRows
    n_features: int
    feature_names: tuple[str, ...]
    skipped_unmapped: int  # rows whose user has no subject_ref (never recorded, or erased): not used


def load_eligible_rows(
    ledger: Ledger, data: PartnerData, partner_id: str, job: RoundConfig, eligible: EligibleSet | None = None
) -> EligibleRows:
    """Feature rows of ``partner_id`` whose subject is in ``eligible`` (default: the ledger's eligible set at
    ``job.tree_size``, asked now)."""
    table = data.features(partner_id, tuple(job.categories))
    if eligible is None:
        eligible = eligible_subjects(ledger, partner_id, job.purpose, job.categories, job.tree_size)
    user_ids = [str(u) for u in np.asarray(table.user_ids)]
    refs = subject_refs_for(ledger, partner_id, user_ids)
    allowed = set(eligible.subject_refs)
    # Rows ordered by subject_ref, so the data hash does not depend on how the partner stores its table.
    kept = sorted((refs[u], i) for i, u in enumerate(user_ids) if refs.get(u) in allowed)
    train = [(ref, i) for ref, i in kept if not _is_evaluation(ref, job.eval_fraction)]
    evaluation = [i for ref, i in kept if _is_evaluation(ref, job.eval_fraction)]
    return EligibleRows(
        eligible=eligible,
        train=table.select(np.array([i for _, i in train], dtype=np.int64)),
        train_refs=tuple(ref for ref, _ in train),
        evaluation=table.select(np.array(evaluation, dtype=np.int64)),
        n_features=int(np.asarray(table.X).shape[1]),
        feature_names=tuple(table.feature_names),
        skipped_unmapped=sum(1 for u in user_ids if u not in refs),
    )


def consenting_count(ledger: Ledger, partner_id: str, job: RoundConfig, eligible: EligibleSet) -> int:
    """Subjects consenting at the checkpoint before any lifetime-budget cap: with ``eligible.count`` == 0 it tells
    "nobody consents" from "everyone consenting is over budget". A ledger link without a cap has nothing to add."""
    ask = getattr(ledger, "consenting_count", None)
    if ask is None:
        return eligible.count
    return int(ask(partner_id, job.purpose, list(job.categories), job.tree_size))


def _is_evaluation(subject_ref: str, fraction: float) -> bool:
    if fraction <= 0:
        return False
    bucket = int.from_bytes(hashlib.sha256(b"eval-split:" + subject_ref.encode()).digest()[:4], "big")
    return bucket < fraction * 2**32


def feature_schema_digest(feature_names: Sequence[str]) -> str:
    """Short digest of the feature names in order; every partner must agree on it to train one model."""
    return hashlib.sha256("\n".join(feature_names).encode()).hexdigest()[:16]
