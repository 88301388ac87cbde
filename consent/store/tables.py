"""The ledger's tables. The log tables are append-only; the side tables (mapping, keys, evidence, budget) are
mutable on purpose: erasure deletes from them, and they never feed a Merkle hash."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# ---- the append-only log ------------------------------------------------------------------------------------
head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("tree_size", BigInteger, nullable=False),
)

entries = Table(
    "entries",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("leaf_hash", LargeBinary(32), nullable=False, unique=True),
    Column("data", LargeBinary, nullable=False),
    Column("entry_type", String(40), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("partner_id", String(64)),
    Column("subject_ref", String(32)),
    Index("ix_entries_subject", "subject_ref"),
    Index("ix_entries_type", "entry_type"),
)

# Hashes of perfect subtrees above the leaves (level >= 1): an append adds O(1) amortised rows and a proof reads
# O(log n) of them, so nothing ever rehashes the whole log.
tree_nodes = Table(
    "tree_nodes",
    metadata,
    Column("level", Integer, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("body", LargeBinary, nullable=False),  # canonical JSON {origin, tree_size, root, ts}
    Column("key_id", String(32), nullable=False),
    Column("signature", LargeBinary, nullable=False),
)

witness_signatures = Table(
    "witness_signatures",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("key_id", String(32), primary_key=True),
    Column("signature", LargeBinary, nullable=False),
)

# ---- indexes derived from the log (rebuildable from entries) --------------------------------------------------
keys = Table(
    "keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("identity", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("public_key", String(64), nullable=False),
    Column("registered_idx", BigInteger),  # null only for the operator's bootstrap key
    Column("revoked_idx", BigInteger),
)

subjects = Table(
    "subjects",
    metadata,
    Column("subject_ref", String(32), primary_key=True),
    Column("partner_id", String(64), nullable=False),
    Column("first_idx", BigInteger, nullable=False),
    Column("erasure_requested_idx", BigInteger),
    Column("erased_idx", BigInteger),
)

consents = Table(
    "consents",
    metadata,
    Column("consent_id", String(32), primary_key=True),
    Column("partner_id", String(64), nullable=False),
    Column("subject_ref", String(32), nullable=False),
    Column("kind", String(32), nullable=False),  # the entry type: consent.given ... consent.withdrawn
    Column("idx", BigInteger, nullable=False),
)

# One row per consent-relevant entry, in log order: eligibility at tree size n folds the rows with idx < n.
consent_events = Table(
    "consent_events",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("partner_id", String(64), nullable=False),
    Column("subject_ref", String(32), nullable=False),
    Column("kind", String(16), nullable=False),  # given | refused | withdrawn | expired | erasure
    Column("consent_id", String(32)),
    Column("purposes", Text),  # comma-joined, sorted
    Column("categories", Text),
    Column("valid_until", String(10)),
    Index("ix_consent_events_partner", "partner_id", "idx"),
)

# ---- mutable side tables (personal-data-adjacent; erasure deletes from them) --------------------------------
subject_map = Table(
    "subject_map",
    metadata,
    Column("partner_id", String(64), primary_key=True),
    Column("user_hmac", String(64), primary_key=True),
    Column("subject_ref", String(32), nullable=False, unique=True),
)

subject_keys = Table(
    "subject_keys",
    metadata,
    Column("subject_ref", String(32), primary_key=True),
    Column("aes_key", LargeBinary(32), nullable=False),
)

evidence = Table(
    "evidence",
    metadata,
    Column("consent_id", String(32), primary_key=True),
    Column("subject_ref", String(32), nullable=False, index=True),
    Column("nonce", LargeBinary(12), nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
)

budget = Table(
    "privacy_budget",
    metadata,
    Column("partner_id", String(64), primary_key=True),
    Column("subject_ref", String(32), primary_key=True),
    Column("epsilon_spent", Float, nullable=False),
)

budget_charges = Table(
    "privacy_budget_charges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(64), nullable=False),
    Column("round", Integer, nullable=False),
    Column("partner_id", String(64), nullable=False),
    Column("epsilon", Float, nullable=False),
    Column("subject_count", BigInteger, nullable=False),
)
