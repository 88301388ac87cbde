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


class _CommittedTree:
    """Every perfect node of one eligible set's Merkle tree, so each proof is O(log n) lookups instead of rehashing
    the whole set (an audit proves thousands of subjects absent from each round's set)."""

    def __init__(self, subject_refs: list[str]):
        level = [merkle.leaf_hash(leaf) for leaf in commitment_leaves(subject_refs)]
        self.levels = [level]
        while len(level) > 1:
            level = [merkle.node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            self.levels.append(level)
        self.size = len(subject_refs)

    def proof(self, index: int) -> list[bytes]:
        return merkle.inclusion_proof_from_nodes(index, self.size, lambda lvl, i: self.levels[lvl][i])


_TREES: dict[tuple[bytes, int], _CommittedTree] = {}
_TREES_KEPT = 8


def _tree(eligible: EligibleSet) -> _CommittedTree:
    # Keyed by (root, count): the root commits to the exact sorted refs, so one tree serves every EligibleSet
    # object of the same set.
    key = (eligible.root, eligible.count)
    tree = _TREES.get(key)
    if tree is None:
        if len(_TREES) >= _TREES_KEPT:
            _TREES.pop(next(iter(_TREES)))
        tree = _TREES[key] = _CommittedTree(eligible.subject_refs)
    return tree


def prove_present(eligible: EligibleSet, subject_ref: str) -> tuple[int, list[bytes]]:
    """(index, inclusion proof) of a subject IN the set, against the set's root and count."""
    i = bisect.bisect_left(eligible.subject_refs, subject_ref)
    if i == eligible.count or eligible.subject_refs[i] != subject_ref:
        raise ValueError(f"subject {subject_ref} is NOT in the eligible set; no inclusion proof exists")
    return i, _tree(eligible).proof(i)


def verify_present(subject_ref: str, index: int, proof: list[bytes], root: bytes, count: int) -> bool:
    return merkle.verify_inclusion(merkle.leaf_hash(bytes.fromhex(subject_ref)), index, count, proof, root)


def prove_absent(eligible: EligibleSet, subject_ref: str) -> NonMembershipProof:
    if subject_ref in eligible:
        raise ValueError(f"subject {subject_ref} IS in the eligible set; no non-membership proof exists")
    refs = eligible.subject_refs
    pos = bisect.bisect_left(refs, subject_ref)
    tree = _tree(eligible) if refs else None
    left = (pos - 1, refs[pos - 1], tree.proof(pos - 1)) if pos > 0 else None
    right = (pos, refs[pos], tree.proof(pos)) if pos < len(refs) else None
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
