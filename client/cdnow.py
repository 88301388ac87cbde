"""CDNOW split into partners: a ``PartnerData`` source for federated benchmarks on the standard LTV data set.

CDNOW is one retailer's purchase log, so partners are made with ``models.data.partition.partition_noniid`` (by
calibration spend tier or by acquisition cohort, i.e. first event before the calibration end, which on this
purchase-only log is the first purchase; seeded, with a share of users mixed across partners). The
feature table is ``models.features.build_features`` over the 39-week calibration window with the CDNOW
categories (basic + transaction: the log has purchases only), exactly as the centralized quality benchmark
(``models.quality.cdnow_data``) builds it; every feature is a per-user fixed transform, so building the table once
and handing each partner its own users' rows is the same as each partner building it from its own events.

Customers are split into ``folds`` seeded folds as in ``models.quality`` (``permutation(n) % folds`` with
``split_seed``); fold ``test_fold`` is held out and never shown to any partner: ``features`` returns only the
partner's training customers, ``test_rows`` the held-out ones for scoring outside the federation.

Feature tables are cached per process (``functools.lru_cache``), so each Ray actor builds them once per job.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

CDNOW_PARTNERS = ("A", "B", "C")


@dataclass(frozen=True)
class CDNOWPartners:
    """CDNOW customers split into ``len(partners)`` non-IID partners; each sees only its training customers.

    ``by``: ``"spend_tier"`` (A = lowest calibration spenders) or ``"cohort"`` (A = earliest acquisition = first
    calibration-window purchase on CDNOW).
    ``mixing``: share of customers reassigned to a random partner (``partition_noniid``).
    """

    partners: tuple[str, ...] = CDNOW_PARTNERS
    by: str = "spend_tier"
    partition_seed: int = 0
    mixing: float = 0.2
    folds: int = 5
    test_fold: int | None = 0  # None: no fold is held out (every customer is a training customer: the demo)
    split_seed: int = 0

    def features(self, partner_id: str, categories: tuple[str, ...]):
        """The partner's TRAINING customers (held-out fold excluded), only the columns of the job's ``categories``
        (CDNOW has basic + transaction columns; a job must not read a category its subjects did not grant)."""
        return _partner_table(self, partner_id, train=True).with_categories(categories)

    def test_rows(self, partner_id: str):
        """The partner's held-out customers (never trained on by anyone)."""
        return _partner_table(self, partner_id, train=False)

    def all_rows(self):
        """(full feature table, boolean train mask, partner index per row)."""
        return _full(self.folds, self.test_fold, self.split_seed) + (_assignment(self),)


@functools.lru_cache(maxsize=4)
def _full(folds: int, test_fold: int | None, split_seed: int):
    from models.quality import cdnow_data

    table, _ = cdnow_data()
    if test_fold is None:
        return table, np.ones(len(table), dtype=bool)
    fold = np.random.default_rng(split_seed).permutation(len(table)) % folds
    return table, fold != test_fold


@functools.lru_cache(maxsize=8)
def _assignment(source: CDNOWPartners) -> np.ndarray:
    """Partner index (0..k-1) of every row of the full table."""
    from models.data.cdnow import CDNOW_CALIBRATION_END, load_cdnow
    from models.data.partition import partition_noniid, partner_names

    table, _ = _full(source.folds, source.test_fold, source.split_seed)
    names = partner_names(len(source.partners))
    parts = partition_noniid(load_cdnow(), len(source.partners), by=source.by, seed=source.partition_seed,
                             mixing=source.mixing, calibration_end=CDNOW_CALIBRATION_END)  # fmt: skip
    index = {}
    for k, name in enumerate(names):
        for user in parts[name]["user_id"].astype(str).unique():
            index[user] = k
    return np.array([index[str(u)] for u in table.user_ids], dtype=np.int64)


@functools.lru_cache(maxsize=16)
def _partner_table(source: CDNOWPartners, partner_id: str, train: bool):
    if partner_id not in source.partners:
        raise KeyError(f"no CDNOW partner {partner_id!r}; have {list(source.partners)}")
    table, train_mask = _full(source.folds, source.test_fold, source.split_seed)
    mine = _assignment(source) == source.partners.index(partner_id)
    return table.select(np.flatnonzero(mine & (train_mask if train else ~train_mask)))
