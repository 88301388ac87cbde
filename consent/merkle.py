"""Pure RFC 9162 §2.1 (Certificate Transparency v2 / RFC 6962) Merkle tree core.

No I/O and no project imports: bytes in, bytes out.  HASH is SHA-256.

Tree hash, for an ordered list of n entries D[0:n]::

    MTH({})     = HASH()                                  (SHA-256 of b"")
    MTH({d})    = HASH(0x00 || d)                         (leaf hash)
    MTH(D[0:n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))   for n > 1,
                  k = largest power of two strictly less than n.

Inclusion proof (audit path) for 0 <= m < n, sibling hashes leaf-to-root::

    PATH(0, {d})    = []
    PATH(m, D[0:n]) = PATH(m, D[0:k]) : MTH(D[k:n])         if m < k
                    = PATH(m-k, D[k:n]) : MTH(D[0:k])       if m >= k

Consistency proof for 0 < m < n is SUBPROOF(m, D[0:n], true)::

    SUBPROOF(m, D[0:m], true)  = []
    SUBPROOF(m, D[0:m], false) = [MTH(D[0:m])]
    SUBPROOF(m, D[0:n], b)     = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])         if m <= k
                               = SUBPROOF(m-k, D[k:n], false) : MTH(D[0:k])   if m > k

and is empty for m == 0 and m == n.  Verification uses the iterative
bit-walking algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2 (no recomputation).

Node oracle.  Node (level, index) is the *perfect* subtree over the leaves
[index * 2^level, (index + 1) * 2^level); its hash is MTH of those leaves, so
node(0, i) = leaf hash i and node(l+1, i) = HASH(0x01 || node(l, 2i) || node(l, 2i+1)).
Every subtree visited by the recursions above is either perfect or a right
edge D[lo:n].  A range D[lo:hi] of size s whose start is a multiple of the
largest power of two <= s (true for every such right edge and for lo = 0)
is covered by one perfect node per set bit of s, most significant first, and

    MTH(D[lo:hi]) = HASH(0x01 || N1 || HASH(0x01 || N2 || ... HASH(0x01 || Nj-1 || Nj)))

(right-to-left fold).  For lo = 0 these nodes are the *frontier* of a tree of
size n.  So a root costs popcount(n) node reads and a proof O(log n) reads.
Appending leaf i completes node (l, i >> l) for every l with the low l bits of
i all set; its left sibling at each level is read from the store.
"""

import hashlib
from operator import index as _as_index

__all__ = [
    "EMPTY_ROOT", "leaf_hash", "node_hash", "root_hash", "inclusion_proof",
    "consistency_proof", "verify_inclusion", "verify_consistency",
    "new_nodes_for_append", "new_nodes_for_batch", "root_from_nodes",
    "inclusion_proof_from_nodes", "consistency_proof_from_nodes",
    "frontier_nodes", "root_from_frontier",
]

_sha = hashlib.sha256
HASH_SIZE = 32
EMPTY_ROOT = _sha(b"").digest()


# --------------------------------------------------------------------------
# Hashing primitives.
# --------------------------------------------------------------------------

def leaf_hash(data):
    """SHA-256(0x00 || data)."""
    return _sha(b"\x00" + data).digest()


def node_hash(left, right):
    """SHA-256(0x01 || left || right)."""
    return _sha(b"\x01" + left + right).digest()


def _split(n):
    """Largest power of two strictly less than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth_of_hashes(level):
    """MTH from a non-empty list of leaf hashes, bottom-up.

    Pairing neighbours level by level and carrying an odd last node up
    unchanged yields exactly the RFC tree (its perfect left subtrees are
    aligned, and the ragged right edge is folded last)."""
    sha = _sha
    while len(level) > 1:
        it = iter(level)
        nxt = [sha(b"\x01" + a + b).digest() for a, b in zip(it, it)]
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _mth(entries):
    """MTH of raw entries."""
    if not entries:
        return EMPTY_ROOT
    sha = _sha
    return _mth_of_hashes([sha(b"\x00" + d).digest() for d in entries])


def _check_size(value, name):
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, not bool")
    try:
        value = _as_index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


# --------------------------------------------------------------------------
# Proof skeletons shared by the list-based and the node-oracle variants.
# `subtree(lo, hi)` must return MTH(D[lo:hi]).
# --------------------------------------------------------------------------

def _inclusion_path(index, size, subtree):
    proof = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            proof.append(subtree(mid, hi))
            hi = mid
        else:
            proof.append(subtree(lo, mid))
            lo = mid
    proof.reverse()
    return proof


def _consistency_path(old_size, size, subtree):
    if old_size == 0 or old_size == size:
        return []
    proof = []
    lo, hi, m, complete = 0, size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                proof.append(subtree(lo, hi))
            break
        k = _split(n)
        if m <= k:
            proof.append(subtree(lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree(lo, lo + k))
            lo += k
            m -= k
            complete = False
    proof.reverse()
    return proof


# --------------------------------------------------------------------------
# List-based API (raw entries in memory).
# --------------------------------------------------------------------------

def root_hash(leaves):
    """MTH(leaves); the empty list gives SHA-256(b"")."""
    return _mth(list(leaves))


def inclusion_proof(leaves, index):
    """RFC 9162 inclusion proof for leaves[index] in the tree of all leaves."""
    leaves = list(leaves)
    index = _check_size(index, "index")
    if index >= len(leaves):
        raise ValueError(f"index {index} out of range for tree size {len(leaves)}")
    return _inclusion_path(index, len(leaves), lambda lo, hi: _mth(leaves[lo:hi]))


def consistency_proof(leaves, old_size):
    """RFC 9162 consistency proof from the first old_size leaves to all leaves."""
    leaves = list(leaves)
    old_size = _check_size(old_size, "old_size")
    if old_size > len(leaves):
        raise ValueError(f"old_size {old_size} exceeds tree size {len(leaves)}")
    return _consistency_path(old_size, len(leaves), lambda lo, hi: _mth(leaves[lo:hi]))


# --------------------------------------------------------------------------
# Verifiers (RFC 9162 §2.1.3.2, §2.1.4.2).  False for any invalid proof;
# ValueError only for arguments of the wrong type or negative sizes.
# --------------------------------------------------------------------------

_BYTES = (bytes, bytearray, memoryview)


def _check_hash(value, name):
    if not isinstance(value, _BYTES):
        raise ValueError(f"{name} must be bytes, not {type(value).__name__}")
    return bytes(value)


def _check_proof(proof):
    if not isinstance(proof, (list, tuple)):
        raise ValueError(f"proof must be a list of bytes, not {type(proof).__name__}")
    return [_check_hash(p, "proof element") for p in proof]


def verify_inclusion(leaf_hash, index, tree_size, proof, root):
    """True iff `proof` shows leaf hash `leaf_hash` at `index` in the tree of
    size `tree_size` with root `root`."""
    leaf_hash = _check_hash(leaf_hash, "leaf_hash")
    index = _check_size(index, "index")
    tree_size = _check_size(tree_size, "tree_size")
    proof = _check_proof(proof)
    root = _check_hash(root, "root")
    if index >= tree_size or len(leaf_hash) != HASH_SIZE or len(root) != HASH_SIZE:
        return False
    if any(len(p) != HASH_SIZE for p in proof):
        return False
    sha = _sha
    fn, sn, r = index, tree_size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = sha(b"\x01" + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size, new_size, old_root, new_root, proof):
    """True iff `proof` shows the tree (old_size, old_root) is a prefix of
    (new_size, new_root).  old_size == new_size: valid iff the proof is empty
    and the roots are equal.  old_size == 0: valid iff the proof is empty
    (the empty tree is consistent with every tree; old_root is not checked)."""
    old_size = _check_size(old_size, "old_size")
    new_size = _check_size(new_size, "new_size")
    old_root = _check_hash(old_root, "old_root")
    new_root = _check_hash(new_root, "new_root")
    proof = _check_proof(proof)
    if len(old_root) != HASH_SIZE or len(new_root) != HASH_SIZE:
        return False
    if any(len(p) != HASH_SIZE for p in proof):
        return False
    if old_size > new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    if not proof:
        return False
    if old_size & (old_size - 1) == 0:  # exact power of two
        proof = [old_root] + proof
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    sha = _sha
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = sha(b"\x01" + c + fr).digest()
            sr = sha(b"\x01" + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = sha(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


# --------------------------------------------------------------------------
# Node-oracle API: everything from perfect-subtree hashes, get_node(level, index).
# --------------------------------------------------------------------------

def _range_nodes(lo, hi):
    """Perfect nodes (level, index) covering [lo, hi), left to right.
    Requires lo to be a multiple of the largest power of two <= hi - lo."""
    s = hi - lo
    nodes = []
    for level in range(s.bit_length() - 1, -1, -1):
        if s >> level & 1:
            nodes.append((level, lo >> level))
            lo += 1 << level
    return nodes


def frontier_nodes(n):
    """The perfect nodes (level, index), left to right, whose right-to-left
    fold is the root of a tree of size n: one per set bit of n."""
    return _range_nodes(0, _check_size(n, "n"))


def root_from_frontier(hashes):
    """Root of a tree from its frontier hashes (left to right); [] -> EMPTY_ROOT."""
    if not hashes:
        return EMPTY_ROOT
    sha = _sha
    r = hashes[-1]
    for i in range(len(hashes) - 2, -1, -1):
        r = sha(b"\x01" + hashes[i] + r).digest()
    return r


def _range_hash(lo, hi, get_node):
    return root_from_frontier([get_node(l, i) for l, i in _range_nodes(lo, hi)])


def root_from_nodes(tree_size, get_node):
    """Root of the tree of size tree_size from its popcount(tree_size) frontier nodes."""
    tree_size = _check_size(tree_size, "tree_size")
    return root_from_frontier([get_node(l, i) for l, i in _range_nodes(0, tree_size)])


def inclusion_proof_from_nodes(index, tree_size, get_node):
    """Same as inclusion_proof(leaves[:tree_size], index), from O(log n) node reads."""
    index = _check_size(index, "index")
    tree_size = _check_size(tree_size, "tree_size")
    if index >= tree_size:
        raise ValueError(f"index {index} out of range for tree size {tree_size}")
    return _inclusion_path(index, tree_size, lambda lo, hi: _range_hash(lo, hi, get_node))


def consistency_proof_from_nodes(old_size, new_size, get_node):
    """Same as consistency_proof(leaves[:new_size], old_size), from O(log n) node reads."""
    old_size = _check_size(old_size, "old_size")
    new_size = _check_size(new_size, "new_size")
    if old_size > new_size:
        raise ValueError(f"old_size {old_size} exceeds new_size {new_size}")
    return _consistency_path(old_size, new_size, lambda lo, hi: _range_hash(lo, hi, get_node))


def new_nodes_for_append(leaf_index, leaf_hash_value, get_node):
    """Perfect nodes completed by appending leaf `leaf_index` (the tree had
    leaf_index leaves before): [(0, leaf_index, leaf_hash_value), (1, ...), ...],
    bottom-up.  Left siblings are read with get_node(level, index)."""
    i = _check_size(leaf_index, "leaf_index")
    if len(leaf_hash_value) != HASH_SIZE:
        raise ValueError("leaf_hash_value must be a 32-byte hash")
    sha = _sha
    h, level = leaf_hash_value, 0
    out = [(0, i, h)]
    while i & 1:
        h = sha(b"\x01" + get_node(level, i - 1) + h).digest()
        level += 1
        i >>= 1
        out.append((level, i, h))
    return out


def new_nodes_for_batch(start_index, leaf_hashes, get_node):
    """new_nodes_for_append for consecutive leaves start_index, start_index+1, ...
    Nodes completed inside the batch are reused directly; get_node is only
    called for left siblings completed before the batch (at most one per level).
    Returns all new nodes in creation order."""
    start = _check_size(start_index, "start_index")
    leaf_hashes = list(leaf_hashes)
    sha = _sha
    depth = (start + len(leaf_hashes)).bit_length() + 1
    # Per level, the most recent even-indexed node made in this batch (a left
    # sibling waiting for its right sibling).
    pend_idx = [-1] * depth
    pend_hash = [b""] * depth
    out = []
    append = out.append
    i = start
    for h in leaf_hashes:
        if len(h) != HASH_SIZE:
            raise ValueError("leaf hashes must be 32 bytes")
        append((0, i, h))
        j, level = i, 0
        while j & 1:
            if pend_idx[level] == j - 1:
                left = pend_hash[level]
            else:
                left = get_node(level, j - 1)
            h = sha(b"\x01" + left + h).digest()
            level += 1
            j >>= 1
            append((level, j, h))
        pend_idx[level] = j
        pend_hash[level] = h
        i += 1
    return out
