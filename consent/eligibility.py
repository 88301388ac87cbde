"""Eligibility at a checkpoint, and the commitment a round manifest makes to it.

A subject of partner P is eligible for (purpose, categories) at tree size n when the latest consent decision
(`consent.given` / `consent.refused`) among the first n entries is a `given` that names the purpose and every
category, has not been withdrawn or expired, is still valid on the checkpoint's day, and the subject has not asked
for erasure. The eligible set is committed to as an RFC 9162 Merkle root over the SORTED 16-byte subject_refs plus
the count; two adjacent leaves whose refs straddle a subject prove the subject was not in the set.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from consent import merkle


@dataclass(frozen=True)
class EligibleSet:
    partner_id: str
    purpose: str
    categories: tuple[str, ...]
    tree_size: int
    subject_refs: list[str]  # sorted
    root: bytes

    @property
    def count(self) -> int:
        return len(self.subject_refs)

    def commitment(self) -> dict:
        return {"partner_id": self.partner_id, "eligible_root": self.root.hex(), "eligible_count": self.count}

    def __contains__(self, subject_ref: str) -> bool:
        i = bisect.bisect_left(self.subject_refs, subject_ref)
        return i < len(self.subject_refs) and self.subject_refs[i] == subject_ref


_NOT = object()  # in fold_eligible: the subject's standing decision does not allow the use


def fold_eligible(events: Iterable[tuple], purpose: str, categories: Iterable[str], day: str | None) -> list[str]:
    """Replays consent events (subject_ref, kind, consent_id, purposes, categories, valid_until) in log order.

    Per subject only the standing decision matters: a `given` that allows the use holds its consent_id (a later
    withdrawal or expiry of that consent_id revokes it), anything else is _NOT. Whether a `given` allows
    (purpose, categories) depends only on its purposes and categories strings, of which a partner has a handful
    of combinations: each is judged once."""
    need_cats = set(categories)
    allows: dict[tuple[str, str], bool] = {}
    current: dict[str, object] = {}  # subject_ref -> consent_id of an allowing standing consent, or _NOT
    erased: set[str] = set()
    no = _NOT
    for ref, kind, consent_id, purposes, cats, valid_until in events:
        if kind == "given":
            ok = allows.get((purposes, cats))
            if ok is None:
                ok = allows[(purposes, cats)] = purpose in purposes.split(",") and need_cats <= set(cats.split(","))
            if ok and day is not None and valid_until is not None and valid_until < day:
                ok = False
            current[ref] = consent_id if ok else no
        elif kind == "refused":
            current[ref] = no
        elif kind == "withdrawn" or kind == "expired":
            held = current.get(ref, no)
            if held is not no and held == consent_id:
                current[ref] = no
        elif kind == "erasure":
            erased.add(ref)
    if erased:
        return sorted(ref for ref, held in current.items() if held is not no and ref not in erased)
    return sorted(ref for ref, held in current.items() if held is not no)


def commitment_leaves(subject_refs: list[str]) -> list[bytes]:
    return [bytes.fromhex(r) for r in subject_refs]


def eligible_root(subject_refs: list[str]) -> bytes:
    return merkle.root_hash(commitment_leaves(subject_refs))


@dataclass(frozen=True)
class NonMembershipProof:
    """Neighbours of an absent subject in the sorted set, each with its inclusion proof (None at the ends)."""

    subject_ref: str
    count: int
    left: tuple[int, str, list[bytes]] | None
    right: tuple[int, str, list[bytes]] | None

    def to_json(self) -> dict:
        def side(s):
            return None if s is None else {"index": s[0], "subject_ref": s[1], "proof": [p.hex() for p in s[2]]}

        return {"subject_ref": self.subject_ref, "count": self.count, "left": side(self.left), "right": side(self.right)}


def prove_absent(eligible: EligibleSet, subject_ref: str) -> NonMembershipProof:
    if subject_ref in eligible:
        raise ValueError(f"subject {subject_ref} IS in the eligible set; no non-membership proof exists")
    refs = eligible.subject_refs
    leaves = commitment_leaves(refs)
    pos = bisect.bisect_left(refs, subject_ref)
    left = (pos - 1, refs[pos - 1], merkle.inclusion_proof(leaves, pos - 1)) if pos > 0 else None
    right = (pos, refs[pos], merkle.inclusion_proof(leaves, pos)) if pos < len(refs) else None
    return NonMembershipProof(subject_ref, len(refs), left, right)


def verify_absent(proof: NonMembershipProof, root: bytes, count: int) -> bool:
    """True iff the proof shows proof.subject_ref is not among `count` sorted refs committed to by `root`."""
    if proof.count != count:
        return False
    target = proof.subject_ref
    if count == 0:
        return root == merkle.root_hash([]) and proof.left is None and proof.right is None
    if proof.left is None and proof.right is None:
        return False
    if proof.left is not None:
        i, ref, path = proof.left
        if not (ref < target) or not merkle.verify_inclusion(merkle.leaf_hash(bytes.fromhex(ref)), i, count, path, root):
            return False
    if proof.right is not None:
        j, ref, path = proof.right
        if not (target < ref) or not merkle.verify_inclusion(merkle.leaf_hash(bytes.fromhex(ref)), j, count, path, root):
            return False
    if proof.left is None:
        return proof.right[0] == 0
    if proof.right is None:
        return proof.left[0] == count - 1
    return proof.right[0] == proof.left[0] + 1
