"""Tests for consent.merkle: published RFC 6962 vectors, properties, node oracle."""

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consent.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    consistency_proof_from_nodes,
    frontier_nodes,
    inclusion_proof,
    inclusion_proof_from_nodes,
    leaf_hash,
    new_nodes_for_append,
    new_nodes_for_batch,
    node_hash,
    root_from_frontier,
    root_from_nodes,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rfc6962.json").read_text())
LEAVES = [bytes.fromhex(x) for x in VECTORS["leaves"]]
ROOTS = [bytes.fromhex(x) for x in VECTORS["roots"]]
NODES = {(lvl, i): bytes.fromhex(h)
         for lvl, row in enumerate(VECTORS["node_hashes"]) for i, h in enumerate(row)}
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _hx(proof):
    return [bytes.fromhex(x) for x in proof]


# ----------------------------------------------------------------------------
# Independent, naive recursive reference straight from RFC 9162 §2.1.
# ----------------------------------------------------------------------------

def _sha(b):
    return hashlib.sha256(b).digest()


def _k(n):
    p = 1
    while p * 2 < n:
        p *= 2
    return p


def ref_mth(d):
    if not d:
        return _sha(b"")
    if len(d) == 1:
        return _sha(b"\x00" + d[0])
    k = _k(len(d))
    return _sha(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m, d):
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m, d, b):
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_consistency(m, d):
    return ref_subproof(m, d, True) if 0 < m < len(d) else []


def make_leaves(n, salt=b""):
    # Distinct entries: with duplicate leaves, a proof can legitimately verify
    # for a mirrored index (H(x, x) is symmetric), which would blur the tests.
    return [salt + b"entry-%d" % i for i in range(n)]


def flip(b, bit):
    b = bytearray(b)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


# ----------------------------------------------------------------------------
# Published vectors.
# ----------------------------------------------------------------------------

def test_primitives():
    assert EMPTY_ROOT == _sha(b"") == ROOTS[0]
    assert root_hash([]) == EMPTY_ROOT
    assert leaf_hash(b"") == NODES[(0, 0)]
    assert node_hash(NODES[(0, 0)], NODES[(0, 1)]) == NODES[(1, 0)]


@pytest.mark.parametrize("n", range(9))
def test_vector_roots(n):
    assert root_hash(LEAVES[:n]) == ROOTS[n]
    assert root_hash(LEAVES[:n]) == ref_mth(LEAVES[:n])


def test_vector_node_hashes():
    for (lvl, i), h in NODES.items():
        assert root_hash(LEAVES[i << lvl:(i + 1) << lvl]) == h


@pytest.mark.parametrize("n", range(9))
def test_vector_frontiers(n):
    expected = [tuple(x) for x in VECTORS["frontiers"][n]]
    assert frontier_nodes(n) == expected
    assert root_from_frontier([NODES[x] for x in expected]) == ROOTS[n]
    assert root_from_nodes(n, lambda lvl, i: NODES[(lvl, i)]) == ROOTS[n]


@pytest.mark.parametrize("tc", VECTORS["inclusion_proofs"],
                         ids=lambda t: f"{t['index']}:{t['tree_size']}")
def test_vector_inclusion(tc):
    i, n, proof = tc["index"], tc["tree_size"], _hx(tc["proof"])
    lh, root = leaf_hash(LEAVES[i]), ROOTS[n]
    assert inclusion_proof(LEAVES[:n], i) == proof
    assert inclusion_proof_from_nodes(i, n, lambda lvl, j: NODES[(lvl, j)]) == proof
    assert verify_inclusion(lh, i, n, proof, root)
    # Corruptions from transparency-dev/merkle proof/verify_test.go.
    bad = [
        (lh, i + 1, n, proof, root), (lh, i ^ 2, n, proof, root),
        (lh, i, n * 2, proof, root), (lh, i, n // 2, proof, root),
        (b"WrongLeaf", i, n, proof, root), (lh, i, n, proof, EMPTY_ROOT),
        (lh, i, n, proof, SOME_HASH), (lh, i, n, proof + [b""], root),
        (lh, i, n, proof + [root], root), (lh, i, n, [b""] + proof, root),
        (lh, i, n, [root] + proof, root),
    ]
    if i > 0:
        bad.append((lh, i - 1, n, proof, root))
    if proof:
        bad.append((lh, i, n, proof[:-1], root))
    if len(proof) > 1:
        bad.append((lh, i, n, [proof[0], SOME_HASH] + proof[1:], root))
    for e in range(len(proof)):  # every single-bit flip of every element
        for bit in range(256):
            bad.append((lh, i, n, proof[:e] + [flip(proof[e], bit)] + proof[e + 1:], root))
    for args in bad:
        assert verify_inclusion(*args) is False, args[1:3]


@pytest.mark.parametrize("tc", VECTORS["consistency_proofs"],
                         ids=lambda t: f"{t['old_size']}:{t['new_size']}")
def test_vector_consistency(tc):
    m, n, proof = tc["old_size"], tc["new_size"], _hx(tc["proof"])
    r1, r2 = ROOTS[m], ROOTS[n]
    assert consistency_proof(LEAVES[:n], m) == proof
    assert consistency_proof_from_nodes(m, n, lambda lvl, j: NODES[(lvl, j)]) == proof
    assert verify_consistency(m, n, r1, r2, proof)
    if not proof:
        return
    bad = [
        (m - 1, n, r1, r2, proof), (m + 1, n, r1, r2, proof), (m ^ 2, n, r1, r2, proof),
        (m, n * 2, r1, r2, proof), (m, n // 2, r1, r2, proof),
        (m, n, SOME_HASH, r2, proof), (m, n, r1, SOME_HASH, proof), (m, n, r2, r1, proof),
        (m, n, r1, r2, []), (m, n, r1, r2, proof + [b""]), (m, n, r1, r2, proof + [r1]),
        (m, n, r1, r2, proof + [r2]), (m, n, r1, r2, [b""] + proof),
        (m, n, r1, r2, [r1] + proof), (m, n, r1, r2, [r2] + proof),
        (m, n, r1, r2, [proof[0]] + proof), (m, n, r1, r2, proof[:-1]),
    ]
    for e in range(len(proof)):
        for bit in range(256):
            bad.append((m, n, r1, r2, proof[:e] + [flip(proof[e], bit)] + proof[e + 1:]))
    for args in bad:
        assert verify_consistency(*args) is False, args[:2]


def test_consistency_edge_cases():
    r1, r2 = _sha(b"don't care 1"), _sha(b"don't care 2")
    assert verify_consistency(0, 0, r1, r1, [])
    assert not verify_consistency(0, 0, r1, r2, [])
    assert verify_consistency(0, 1, r1, r2, [])          # empty tree vs anything
    assert verify_consistency(5, 5, r2, r2, [])
    assert not verify_consistency(1, 1, r1, r2, [])
    assert not verify_consistency(1, 0, r1, r2, [])      # time travel
    assert not verify_consistency(2, 1, r1, r2, [])
    assert not verify_consistency(1, 2, r1, r2, [])      # empty proof
    for m, n in [(0, 0), (0, 1), (1, 1)]:                # roots ok, proof not empty
        assert not verify_consistency(m, n, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])


def test_inclusion_edge_cases():
    h = leaf_hash(b"data")
    assert verify_inclusion(h, 0, 1, [], h)
    assert not verify_inclusion(h, 0, 1, [], b"")
    assert not verify_inclusion(b"", 0, 1, [], h)
    for i, n in [(0, 0), (1, 0), (1, 1), (2, 1), (10**30, 5)]:
        assert not verify_inclusion(SOME_HASH, i, n, [], EMPTY_ROOT)


def test_invalid_arguments():
    h = SOME_HASH
    for args in [("x", 0, 1, [], h), (h, -1, 1, [], h), (h, 0, -1, [], h), (h, 0.0, 1, [], h),
                 (h, True, 2, [h], h), (h, 0, 2, "proof", h), (h, 0, 2, [h, 3], h),
                 (h, 0, 1, [], None), (None, 0, 1, [], h), (h, 0, 2, None, h)]:
        with pytest.raises(ValueError):
            verify_inclusion(*args)
    for args in [(-1, 1, h, h, []), (0, -1, h, h, []), (1.0, 2, h, h, [h]), (1, 2, "h", h, [h]),
                 (1, 2, h, 7, [h]), (1, 2, h, h, h), (1, 2, h, h, [None]), (None, 2, h, h, [h])]:
        with pytest.raises(ValueError):
            verify_consistency(*args)
    with pytest.raises(ValueError):
        inclusion_proof(LEAVES, 8)
    with pytest.raises(ValueError):
        consistency_proof(LEAVES, 9)
    with pytest.raises(ValueError):
        inclusion_proof_from_nodes(3, 3, NODES.__getitem__)


_junk = st.one_of(st.none(), st.integers(-3, 2**70), st.booleans(), st.floats(), st.text(max_size=3),
                  st.binary(max_size=40), st.lists(st.binary(min_size=31, max_size=33), max_size=4))


@FAST
@given(_junk, _junk, _junk, _junk, _junk)
def test_verifiers_only_raise_value_error(a, b, c, d, e):
    for fn, args in [(verify_inclusion, (a, b, c, d, e)), (verify_consistency, (a, b, c, d, e))]:
        try:
            assert fn(*args) in (True, False)
        except ValueError:
            pass


# ----------------------------------------------------------------------------
# Properties over random trees.
# ----------------------------------------------------------------------------

@st.composite
def tree_and_index(draw, min_size=1, max_size=300):
    n = draw(st.integers(min_size, max_size))
    return n, draw(st.integers(0, n - 1)), draw(st.binary(max_size=4))


@FAST
@given(tree_and_index(), st.data())
def test_inclusion_property(case, data):
    n, i, salt = case
    leaves = make_leaves(n, salt)
    root, lh = root_hash(leaves), leaf_hash(leaves[i])
    proof = inclusion_proof(leaves, i)
    assert root == ref_mth(leaves)
    assert proof == ref_path(i, leaves)
    assert verify_inclusion(lh, i, n, proof, root)
    assert verify_inclusion(bytearray(lh), i, n, tuple(proof), memoryview(root))
    for e in range(len(proof)):  # one random bit flip in every element
        bit = data.draw(st.integers(0, 255))
        assert not verify_inclusion(lh, i, n, proof[:e] + [flip(proof[e], bit)] + proof[e + 1:], root)
    j = data.draw(st.integers(0, n + 2).filter(lambda x: x != i))
    assert not verify_inclusion(lh, j, n, proof, root)
    assert not verify_inclusion(leaf_hash(leaves[i] + b"x"), i, n, proof, root)
    # A root is only meaningful together with its size (signed tree head), so a
    # wrong size is paired with that size's real root. (Reusing the original
    # root can verify when both sizes give the leaf the same path shape; that
    # is inherent to RFC 9162, e.g. index 0 at sizes 5 and 6.)
    for m in {n - 1, n + 1, 2 * n, n // 2, data.draw(st.integers(0, 400))} - {n}:
        other = make_leaves(m, salt)
        assert not verify_inclusion(lh, i, m, proof, root_hash(other))
    assert not verify_inclusion(lh, i, n, proof, flip(root, data.draw(st.integers(0, 255))))
    if proof:
        assert not verify_inclusion(lh, i, n, proof[:-1], root)
        assert not verify_inclusion(lh, i, n, proof[1:], root)
    assert not verify_inclusion(lh, i, n, proof + [SOME_HASH], root)
    assert not verify_inclusion(lh, i, n, proof + [root], root)
    assert not verify_inclusion(lh, i, n, [lh] + proof, root)


@st.composite
def two_sizes(draw, max_size=300):
    n = draw(st.integers(0, max_size))
    return draw(st.integers(0, n)), n, draw(st.binary(max_size=4))


@FAST
@given(two_sizes(), st.data())
def test_consistency_property(case, data):
    m, n, salt = case
    leaves = make_leaves(n, salt)
    r1, r2 = root_hash(leaves[:m]), root_hash(leaves)
    proof = consistency_proof(leaves, m)
    assert proof == ref_consistency(m, leaves)
    assert verify_consistency(m, n, r1, r2, proof)
    if m == n or m == 0:
        assert proof == []
        assert not verify_consistency(m, n, r1, r2, [SOME_HASH])
        return
    for e in range(len(proof)):
        bit = data.draw(st.integers(0, 255))
        assert not verify_consistency(m, n, r1, r2, proof[:e] + [flip(proof[e], bit)] + proof[e + 1:])
    assert not verify_consistency(m, n, flip(r1, 0), r2, proof)
    assert not verify_consistency(m, n, r1, flip(r2, 255), proof)
    assert not verify_consistency(m, n, r2, r1, proof)
    assert not verify_consistency(n, m, r2, r1, proof)
    assert not verify_consistency(m, n, r1, r2, [])
    assert not verify_consistency(m, n, r1, r2, proof[:-1])
    assert not verify_consistency(m, n, r1, r2, proof[1:])
    assert not verify_consistency(m, n, r1, r2, proof + [SOME_HASH])
    assert not verify_consistency(m, n, r1, r2, [r1] + proof)
    assert not verify_consistency(m, n, r1, r2, [proof[0]] + proof)
    # Wrong sizes, each paired with the real root of the claimed size (see above).
    full = make_leaves(2 * n + 2, salt)
    for m2 in {m - 1, m + 1, m ^ 2, data.draw(st.integers(1, n))} - {m}:
        if 0 < m2 <= n:
            assert not verify_consistency(m2, n, root_hash(full[:m2]), r2, proof)
    for n2 in {n - 1, n + 1, 2 * n, data.draw(st.integers(m, 2 * n + 2))} - {n}:
        if n2 >= m:
            assert not verify_consistency(m, n2, r1, root_hash(full[:n2]), proof)


# ----------------------------------------------------------------------------
# Node oracle: incremental store in a dict.
# ----------------------------------------------------------------------------

def build_store(leaf_hashes, cuts):
    """Append leaf_hashes through new_nodes_for_append / new_nodes_for_batch
    (batches split at `cuts`), checking get_node is only asked for stored nodes
    completed before the current call."""
    store, calls = {}, []
    bounds = sorted({0, len(leaf_hashes), *(c for c in cuts if 0 < c < len(leaf_hashes))})
    for a, b in zip(bounds, bounds[1:]):
        def get_node(level, idx, a=a):
            assert ((idx + 1) << level) <= a, "looked up a node not completed before the batch"
            calls.append((level, idx))
            return store[(level, idx)]
        if b - a == 1:
            nodes = new_nodes_for_append(a, leaf_hashes[a], get_node)
        else:
            nodes = new_nodes_for_batch(a, leaf_hashes[a:b], get_node)
        for level, idx, h in nodes:
            assert (level, idx) not in store
            store[(level, idx)] = h
    n = len(leaf_hashes)
    assert len(store) == sum(n >> lvl for lvl in range(n.bit_length() + 1))
    return store, calls


def test_oracle_vectors():
    hashes = [leaf_hash(x) for x in LEAVES]
    store = {}
    for i, h in enumerate(hashes):
        for level, idx, nh in new_nodes_for_append(i, h, lambda lvl, j: store[(lvl, j)]):
            store[(level, idx)] = nh
    assert store == NODES
    assert {(lvl, j): h for lvl, j, h in new_nodes_for_batch(0, hashes, None)} == NODES


@FAST
@given(st.integers(0, 300), st.lists(st.integers(0, 300), max_size=8), st.data())
def test_oracle_matches_list_based(n, cuts, data):
    leaves = make_leaves(n)
    store, _ = build_store([leaf_hash(x) for x in leaves], cuts)
    reads = []

    def get_node(level, idx):
        reads.append((level, idx))
        return store[(level, idx)]

    for m in range(n + 1):
        assert root_from_nodes(m, get_node) == root_hash(leaves[:m])
        assert root_from_frontier([store[x] for x in frontier_nodes(m)]) == root_hash(leaves[:m])
    if n == 0:
        return
    budget = 2 * (n.bit_length() + 1)
    for _ in range(3):
        size = data.draw(st.integers(1, n))
        i = data.draw(st.integers(0, size - 1))
        old = data.draw(st.integers(0, size))
        reads.clear()
        assert inclusion_proof_from_nodes(i, size, get_node) == inclusion_proof(leaves[:size], i)
        assert len(reads) <= budget
        reads.clear()
        assert consistency_proof_from_nodes(old, size, get_node) == consistency_proof(leaves[:size], old)
        assert len(reads) <= budget


def test_batch_reads_at_most_one_node_per_level():
    entries = [b"%d" % i for i in range(1000)]
    hashes = [leaf_hash(x) for x in entries]
    store, _ = build_store(hashes[:777], [])
    reads = []

    def get_node(level, idx):
        reads.append((level, idx))
        return store[(level, idx)]

    for level, idx, h in new_nodes_for_batch(777, hashes[777:], get_node):
        store[(level, idx)] = h
    assert len(reads) == len(set(reads)) <= (1000).bit_length()
    assert all(((i + 1) << lvl) <= 777 for lvl, i in reads)
    assert root_from_nodes(1000, lambda lvl, i: store[(lvl, i)]) == root_hash(entries)
