"""fold_eligible (optimised) against a plain reference replay of the same rules, on random event histories."""

from __future__ import annotations

import random

import pytest

from consent import merkle
from consent.eligibility import eligible_root, fold_eligible


def reference_fold(events, purpose, categories, day):
    need_cats = set(categories)
    current: dict[str, tuple[str | None, bool]] = {}
    erased: set[str] = set()
    for ref, kind, consent_id, purposes, cats, valid_until in events:
        if kind == "given":
            ok = purpose in purposes.split(",") and need_cats <= set(cats.split(","))
            if ok and day is not None and valid_until is not None and valid_until < day:
                ok = False
            current[ref] = (consent_id, ok)
        elif kind == "refused":
            current[ref] = (consent_id, False)
        elif kind in ("withdrawn", "expired"):
            held = current.get(ref)
            if held is not None and held[0] == consent_id:
                current[ref] = (consent_id, False)
        elif kind == "erasure":
            erased.add(ref)
    return sorted(ref for ref, (_, ok) in current.items() if ok and ref not in erased)


PURPOSES = ["analytics", "churn_ltv_modelling", "analytics,churn_ltv_modelling", "recommendation"]
CATEGORIES = ["behavioural", "basic,behavioural,transaction", "behavioural,transaction", "transaction"]


def history(rng: random.Random, subjects: int, events: int):
    refs = [f"{rng.getrandbits(128):032x}" for _ in range(subjects)]
    issued: dict[str, list[str]] = {}
    out = []
    for _ in range(events):
        ref = rng.choice(refs)
        kind = rng.choices(["given", "refused", "withdrawn", "expired", "erasure"], [50, 10, 15, 5, 2])[0]
        if kind in ("given", "refused"):
            cid = f"{rng.getrandbits(128):032x}"
            issued.setdefault(ref, []).append(cid)
            until = rng.choice([None, None, "2020-01-01", "2026-06-01", "2030-01-01"]) if kind == "given" else None
            out.append((ref, kind, cid, rng.choice(PURPOSES), rng.choice(CATEGORIES), until))
        elif kind in ("withdrawn", "expired"):
            cid = rng.choice(issued.get(ref, ["0" * 32]))
            out.append((ref, kind, cid, None, None, None))
        else:
            out.append((ref, kind, None, None, None, None))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_fold_matches_the_reference_replay(seed):
    rng = random.Random(seed)
    events = history(rng, subjects=rng.choice([1, 5, 40, 300]), events=rng.choice([0, 10, 500, 3000]))
    for purpose in ("churn_ltv_modelling", "analytics", "recommendation"):
        for cats in (["behavioural"], ["behavioural", "transaction"], ["basic"]):
            for day in (None, "2026-03-01"):
                for n in (len(events), len(events) // 2):
                    want = reference_fold(events[:n], purpose, cats, day)
                    assert fold_eligible(iter(events[:n]), purpose, cats, day) == want


def test_eligible_root_is_the_rfc9162_root_of_the_sorted_refs():
    rng = random.Random(7)
    for n in (0, 1, 2, 3, 5, 8, 13, 64, 100, 1000, 4097):
        refs = sorted(f"{rng.getrandbits(128):032x}" for _ in range(n))
        assert eligible_root(refs) == merkle.root_hash([bytes.fromhex(r) for r in refs])


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 100, 257])
def test_set_proofs_equal_the_plain_rfc9162_proofs_and_verify(n):
    """Proofs from the cached node table are the RFC 9162 paths of `merkle.inclusion_proof` over the same leaves."""
    from consent.eligibility import (EligibleSet, commitment_leaves, prove_absent, prove_present, verify_absent,
                                     verify_present)  # fmt: skip

    rng = random.Random(n)
    refs = sorted({rng.randbytes(16).hex() for _ in range(n)})
    root = eligible_root(refs)
    eligible = EligibleSet("partner-a", "churn_ltv_modelling", ("behavioural",), 10, refs, root)
    leaves = commitment_leaves(refs)
    for i, ref in enumerate(refs):
        index, proof = prove_present(eligible, ref)
        assert index == i and proof == merkle.inclusion_proof(leaves, i)
        assert verify_present(ref, index, proof, root, len(refs))
        assert not verify_present(ref, index, proof, bytes([root[0] ^ 1]) + root[1:], len(refs))
        assert not verify_present(refs[i - 1], index, proof, root, len(refs)) or len(refs) == 1
        with pytest.raises(ValueError):
            prove_absent(eligible, ref)
    for _ in range(20):
        outsider = rng.randbytes(16).hex()
        proof = prove_absent(eligible, outsider)
        assert verify_absent(proof, root, len(refs))
        with pytest.raises(ValueError):
            prove_present(eligible, outsider)
