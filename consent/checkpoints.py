"""Signed checkpoints: (origin, tree size, root, time) signed by the ledger operator, co-signed by witnesses.

The signed bytes are canonical JSON, so a verifier in any language rebuilds them from the four values.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consent.canonical import canonical_bytes, parse_canonical
from consent.entries import now_iso
from consent.keys import Identity


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    tree_size: int
    root: bytes
    ts: str
    key_id: str
    signature: bytes
    witnesses: dict[str, bytes] = field(default_factory=dict)  # key_id -> signature over the same body

    @property
    def body(self) -> bytes:
        return checkpoint_body(self.origin, self.tree_size, self.root, self.ts)

    def to_json(self) -> dict:
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "root": self.root.hex(),
            "ts": self.ts,
            "key_id": self.key_id,
            "signature": base64.b64encode(self.signature).decode(),
            "witnesses": {k: base64.b64encode(v).decode() for k, v in sorted(self.witnesses.items())},
        }

    @classmethod
    def from_json(cls, obj: dict) -> "Checkpoint":
        return cls(
            origin=obj["origin"],
            tree_size=int(obj["tree_size"]),
            root=bytes.fromhex(obj["root"]),
            ts=obj["ts"],
            key_id=obj["key_id"],
            signature=base64.b64decode(obj["signature"]),
            witnesses={k: base64.b64decode(v) for k, v in obj.get("witnesses", {}).items()},
        )

    @classmethod
    def from_body(cls, body: bytes, key_id: str, signature: bytes, witnesses=None) -> "Checkpoint":
        obj = parse_canonical(body)
        return cls(
            origin=obj["origin"],
            tree_size=obj["tree_size"],
            root=bytes.fromhex(obj["root"]),
            ts=obj["ts"],
            key_id=key_id,
            signature=signature,
            witnesses=dict(witnesses or {}),
        )


def checkpoint_body(origin: str, tree_size: int, root: bytes, ts: str) -> bytes:
    return canonical_bytes({"origin": origin, "tree_size": tree_size, "root": root.hex(), "ts": ts})


def sign_checkpoint(operator: Identity, origin: str, tree_size: int, root: bytes, ts: str | None = None) -> Checkpoint:
    ts = ts or now_iso()
    sig = operator.sign(checkpoint_body(origin, tree_size, root, ts))
    return Checkpoint(origin, tree_size, root, ts, operator.key_id, sig)


def cosign(witness: Identity, checkpoint: Checkpoint) -> bytes:
    """A witness (e.g. a partner) signs the same body after checking consistency with what it saw before."""
    return witness.sign(checkpoint.body)


def verify_checkpoint_signature(checkpoint: Checkpoint, public_key: Ed25519PublicKey, signature=None) -> bool:
    try:
        public_key.verify(checkpoint.signature if signature is None else signature, checkpoint.body)
        return True
    except InvalidSignature:
        return False
