"""Between the ledger's own values (Checkpoint, EligibleSet, NonMembershipProof) and their protobuf messages.

Shared by the servicer and `consent.client`, so both ends agree on one mapping and a round trip is lossless.
"""

from __future__ import annotations

from dataclasses import dataclass

from consent.checkpoints import Checkpoint
from consent.eligibility import EligibleSet, NonMembershipProof
from protos import ledger_pb2 as pb


def checkpoint_to_proto(cp: Checkpoint) -> pb.Checkpoint:
    return pb.Checkpoint(
        origin=cp.origin, tree_size=cp.tree_size, root=cp.root, ts=cp.ts, key_id=cp.key_id, signature=cp.signature,
        witnesses=[pb.Witness(key_id=k, signature=s) for k, s in sorted(cp.witnesses.items())],
    )  # fmt: skip


def checkpoint_from_proto(msg: pb.Checkpoint) -> Checkpoint:
    return Checkpoint(
        origin=msg.origin, tree_size=msg.tree_size, root=bytes(msg.root), ts=msg.ts, key_id=msg.key_id,
        signature=bytes(msg.signature), witnesses={w.key_id: bytes(w.signature) for w in msg.witnesses},
    )  # fmt: skip


def pack_refs(subject_refs: list[str]) -> bytes:
    # 16 raw bytes per ref halves the wire size of hex strings, so ~200k refs fit in one 4 MiB message.
    return b"".join(bytes.fromhex(r) for r in subject_refs)


def unpack_refs(packed: bytes) -> list[str]:
    if len(packed) % 16:
        raise ValueError("packed subject_refs are not a multiple of 16 bytes")
    return [packed[i : i + 16].hex() for i in range(0, len(packed), 16)]


@dataclass(frozen=True)
class RemoteEligibleSet(EligibleSet):
    """An EligibleSet as the service answered it, with the day and budget cap it was computed for."""

    day: str | None = None
    lifetime_epsilon: float | None = None


@dataclass(frozen=True)
class EligibleCommitment:
    """What a caller who may not see the refs (an auditor, another partner) learns: the count and the root."""

    partner_id: str
    purpose: str
    categories: tuple[str, ...]
    tree_size: int
    count: int
    root: bytes
    day: str | None = None
    lifetime_epsilon: float | None = None

    def commitment(self) -> dict:
        return {"partner_id": self.partner_id, "eligible_root": self.root.hex(), "eligible_count": self.count}


def proof_to_proto(proof: NonMembershipProof, root: bytes, tree_size: int) -> pb.NonMembershipProof:
    msg = pb.NonMembershipProof(subject_ref=proof.subject_ref, count=proof.count, root=root, tree_size=tree_size)
    if proof.left is not None:
        msg.left.CopyFrom(pb.Neighbour(index=proof.left[0], subject_ref=proof.left[1], path=proof.left[2]))
    if proof.right is not None:
        msg.right.CopyFrom(pb.Neighbour(index=proof.right[0], subject_ref=proof.right[1], path=proof.right[2]))
    return msg


def proof_from_proto(msg: pb.NonMembershipProof) -> NonMembershipProof:
    def side(name: str):
        if not msg.HasField(name):
            return None
        n = getattr(msg, name)
        return (n.index, n.subject_ref, [bytes(p) for p in n.path])

    return NonMembershipProof(msg.subject_ref, msg.count, side("left"), side("right"))
