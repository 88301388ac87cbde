"""Secure summation of the partners' updates: double masks that cancel in the sum, in fixed point mod 2^64.

The server of a ``secure`` job (``server.secure_aggregation``) must learn only the total of the partners' clipped,
noised gradient sums, never one partner's. As in Bonawitz et al.'s SecAgg (CCS 2017), with its double masking:

* each partner holds an X25519 key pair per job and sends its public key at preflight, signed with its ledger key;
  the server relays the roster's keys in every round;
* partners ``a`` and ``b`` derive the same pair key: HKDF-SHA256 over their X25519 shared secret, bound to the job and
  both partner ids; per round, ``round_key = HMAC-SHA256(pair_key, round)`` keys a ChaCha20 keystream of 64-bit words,
  the round's mask for that pair;
* a vector is encoded in fixed point (``SCALE_BITS`` fractional bits, two's complement in uint64); the partner that
  sorts first adds the pair's mask, the other subtracts it, all mod 2^64, so the masks cancel in the sum;
* each partner also adds a self mask: the keystream of a fresh 32-byte seed per round. It splits the seed with
  Shamir's scheme (Flower's ``shamir``, threshold ``share_threshold``) into one share per roster peer, each sealed
  for its peer (ChaCha20-Poly1305 under a key derived from the pair key, the round and the direction) and sent with
  the masked vector through the server, which cannot open them;
* after the round the server asks every survivor, once (``query.reveal``): for a peer it says survived, the
  survivor opens and hands over its share of that peer's seed; for a peer it says dropped, its ``round_key`` with
  that peer (that round only, never the pair key). The server rebuilds the survivors' seeds, removes their self
  masks and the dropped partners' pair masks, and is left with the sum.

A partner answers one reveal per round and names each peer either survived or dropped in it, never both. To read one
partner's vector the server needs every pair mask on it (each peer's round key: "dropped") and its self mask (shares
from ``share_threshold`` peers: "survived"), which no honest peer gives together: faking a dropout, or refusing a
reply at screening, leaves the vector under its self mask. Only a server colluding with ``share_threshold`` partners
can read a vector; every partner adds enough noise that its share alone keeps ``epsilon_if_colluding`` (see
``server.secure_aggregation``). Rounds whose pair masks were removed are listed in their manifest (``recovered``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares

SCALE_BITS = 24  # fixed-point resolution 2^-24 ≈ 6e-8, far below the DP noise (std >= ~1 per coordinate)
# Bounds that keep an honest sum from wrapping: MAX_PARTNERS * MAX_ABS * 2^SCALE_BITS = 2^62 < 2^63.
MAX_ABS = float(2**30)
MAX_PARTNERS = 2**8
SEED_BYTES = 32
SEALED_SHARE_BYTES = 4 + 48 + 16  # Flower's share of a padded 32-byte seed (index, 3 blocks) and the AEAD tag
_INFO = b"cohort-secure-sum/v1"


class SecureSumError(ValueError):
    """A vector that cannot be encoded, or a roster or reveal that does not fit the protocol."""


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def private_key_from(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def public_hex(key: X25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def pair_key(private: X25519PrivateKey, peer_public_hex: str, job_id: str, me: str, peer: str) -> bytes:
    """The 32-byte key ``me`` and ``peer`` share in ``job_id`` (the same on both sides)."""
    if me == peer:
        raise SecureSumError("a partner has no pair key with itself")
    try:
        peer_key = X25519PublicKey.from_public_bytes(bytes.fromhex(peer_public_hex))
    except ValueError as exc:
        raise SecureSumError(f"masking key of {peer!r} is not a 32-byte X25519 public key in hex") from exc
    shared = private.exchange(peer_key)
    first, second = sorted((me, peer))
    info = b"|".join((_INFO, job_id.encode(), first.encode(), second.encode()))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def round_key(key: bytes, server_round: int) -> bytes:
    """The key of one round's mask for a pair: revealing it exposes that round's mask only."""
    return hmac.new(key, b"round|%d" % int(server_round), hashlib.sha256).digest()


def share_key(key: bytes, server_round: int, sender: str, recipient: str) -> bytes:
    """The key that seals ``sender``'s seed share for ``recipient`` in one round: per direction, so the two shares a
    pair exchanges are never sealed under one key and nonce; unrelated to the round key a dropout reveals."""
    return hmac.new(key, b"|".join((b"share", b"%d" % int(server_round), sender.encode(), recipient.encode())),
                    hashlib.sha256).digest()  # fmt: skip


def new_seed() -> bytes:
    """A fresh self-mask seed (one per partner and round, never reused: it keys a ChaCha20 stream with nonce 0)."""
    return os.urandom(SEED_BYTES)


def split_seed(seed: bytes, peers: Sequence[str], threshold: int) -> dict[str, bytes]:
    """One Shamir share of ``seed`` per peer (peer -> share); any ``threshold`` of them rebuild it."""
    if not 1 <= threshold <= len(peers):
        raise SecureSumError(f"cannot split a seed {threshold}-of-{len(peers)}")
    return dict(zip(sorted(peers), create_shares(seed, threshold, len(peers))))


def join_seed(shares: Sequence[bytes], threshold: int, owner: str) -> bytes:
    """``owner``'s seed from its peers' shares (at least ``threshold``)."""
    if len(shares) < threshold:
        raise SecureSumError(f"{len(shares)} share(s) of {owner!r}'s self-mask seed, {threshold} needed")
    try:
        seed = combine_shares([bytes(s) for s in shares])
    except (ValueError, IndexError) as exc:
        raise SecureSumError(f"the shares of {owner!r}'s self-mask seed do not combine: {exc}") from exc
    if len(seed) != SEED_BYTES:
        raise SecureSumError(f"the shares of {owner!r}'s self-mask seed rebuild {len(seed)} bytes, not {SEED_BYTES}")
    return seed


def _share_aad(job_id: str, server_round: int, sender: str, recipient: str) -> bytes:
    return b"|".join((_INFO, job_id.encode(), b"%d" % int(server_round), sender.encode(), recipient.encode()))


def seal_share(key: bytes, job_id: str, server_round: int, sender: str, recipient: str, share: bytes) -> bytes:
    """``share`` sealed for ``recipient`` (``key``: their pair key); the server relays it unread."""
    aad = _share_aad(job_id, server_round, sender, recipient)
    return ChaCha20Poly1305(share_key(key, server_round, sender, recipient)).encrypt(b"\0" * 12, bytes(share), aad)


def open_share(key: bytes, job_id: str, server_round: int, sender: str, recipient: str, sealed: bytes) -> bytes:
    """The share ``sender`` sealed for ``recipient`` in this job and round; anything else is refused."""
    aad = _share_aad(job_id, server_round, sender, recipient)
    try:
        return ChaCha20Poly1305(share_key(key, server_round, sender, recipient)).decrypt(b"\0" * 12, bytes(sealed), aad)
    except InvalidTag as exc:
        raise SecureSumError(f"the seed share {sender!r} sealed for {recipient!r} in round {server_round} does not "
                             "open: altered, or not from this job and round") from exc  # fmt: skip


def mask_words(key: bytes, length: int) -> np.ndarray:
    """``length`` uint64 words of ChaCha20 keystream under a round key (nonce 0: each round key is used once)."""
    encryptor = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(encryptor.update(b"\0" * (8 * length)), dtype="<u8").astype(np.uint64)


def encode(vector: np.ndarray) -> np.ndarray:
    """Fixed point: ``round(v * 2^SCALE_BITS)`` as two's-complement uint64; NaN/Inf or ``|v| > MAX_ABS`` refused."""
    values = np.asarray(vector, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        raise SecureSumError(f"{int((~np.isfinite(values)).sum())} NaN/Inf value(s): refusing to encode the update")
    peak = float(np.abs(values).max(initial=0.0))
    if peak > MAX_ABS:
        raise SecureSumError(f"a value of magnitude {peak:.3g} exceeds the secure sum's range {MAX_ABS:.3g}")
    return np.rint(values * 2.0**SCALE_BITS).astype(np.int64).view(np.uint64)


def decode(total: np.ndarray) -> np.ndarray:
    """The float64 vector a (sum of) ``encode`` output(s) stands for."""
    return np.asarray(total, dtype=np.uint64).view(np.int64).astype(np.float64) / 2.0**SCALE_BITS


def mask_sign(me: str, peer: str) -> int:
    """+1 if ``me`` adds the pair's mask, -1 if it subtracts it: the partner id that sorts first adds."""
    return 1 if me < peer else -1


def _add_mask(words: np.ndarray, key: bytes, sign: int) -> np.ndarray:
    """``words`` plus (``sign`` > 0) or minus the mask of ``key``; uint64 arithmetic wraps: mod 2^64."""
    mask = mask_words(key, words.size)
    return words + mask if sign > 0 else words - mask


def masked(encoded: np.ndarray, me: str, round_keys: Mapping[str, bytes], seed: bytes | None = None) -> np.ndarray:
    """``encoded`` plus ``me``'s signed mask with every peer (``round_keys``: peer -> this round's key) and the self
    mask of ``seed``, mod 2^64."""
    out = np.array(encoded, dtype=np.uint64, copy=True)
    if seed is not None:
        out = _add_mask(out, seed, 1)
    for peer in sorted(round_keys):
        out = _add_mask(out, round_keys[peer], mask_sign(me, peer))
    return out


def check_roster(roster: Sequence[str], keys: Sequence[str], me: str, at_least: int = 2) -> dict[str, str]:
    """The peers' public keys from a round's roster (partner ids and keys, in the same order), ``me`` included.
    ``at_least``: the noise divisor; a smaller roster could not bring the sum its full noise, so it is refused."""
    if len(roster) != len(keys) or len(set(roster)) != len(roster):
        raise SecureSumError(f"malformed roster: {len(roster)} partner ids, {len(keys)} keys, duplicates or not")
    if len(roster) < max(2, at_least):
        raise SecureSumError(f"a roster of {len(roster)} partner(s) cannot carry the noise of {at_least} shares: "
                             "refusing to contribute")  # fmt: skip
    if me not in roster:
        raise SecureSumError(f"partner {me!r} is not in this round's roster {sorted(roster)}")
    if len(roster) > MAX_PARTNERS:
        raise SecureSumError(f"a roster of {len(roster)} partners exceeds the secure sum's {MAX_PARTNERS}")
    return {p: k for p, k in zip(roster, keys) if p != me}


def sum_words(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """The mod-2^64 sum of masked vectors (what the server adds up)."""
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.uint64))
    for v in vectors:
        total = total + np.asarray(v, dtype=np.uint64)
    return total


def remove_masks(
    total: np.ndarray, revealed: Mapping[tuple[str, str], bytes], seeds: Sequence[bytes] = ()
) -> np.ndarray:
    """``total`` without the survivors' self masks (``seeds``) and the pair masks survivors revealed: ``(survivor,
    dropped) -> round key``. The survivor's vector in the total carries ``mask_sign(survivor, dropped) * mask``;
    that is taken off again."""
    out = np.array(total, dtype=np.uint64, copy=True)
    for seed in seeds:
        out = _add_mask(out, seed, -1)
    for (survivor, dropped), key in sorted(revealed.items()):
        out = _add_mask(out, key, -mask_sign(survivor, dropped))
    return out
