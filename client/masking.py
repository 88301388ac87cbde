"""A partner's side of the secure sum (``client.secure_sum``): its masking key, its masked update, its reveals.

The X25519 key pair is made at preflight and kept in the node's ``Context.state`` for the job; its private half
never leaves the node. The public half goes to the server in the readiness reply, signed with the partner's ledger
key (``client.peer_keys``), and a partner masks only with peer keys whose signatures check out against the ledger.
With a state dir (the partner's ``state-dir``) it is also written to ``<state_dir>/<job_id>.secure-sum.json`` (mode
0600, with the last round masked and revealed, its roster and the peer keys already checked), so a SuperNode that
restarts mid-job rejoins the job's rounds with the key its peers know. Without one, a restarted node can no longer
take part in that job (its replies fail, and the survivors' masks with it are removed).

Every round a partner also draws a fresh self-mask seed, adds its mask and sends the seed's Shamir shares sealed for
its peers with the masked vector (``MaskedUpdate.sealed``, ``client.secure_sum``).

A reveal (``query.reveal``) answers the server's account of the round: for each peer it says dropped, this round's
key with that peer; for each peer it says survived, that peer's seed share, opened; every peer of the round's roster
must be named exactly once. It is given once, only for the last round this partner masked, never about itself: the
server cannot collect keys or shares of other rounds, nor both a round key and a seed share of one peer. Each
round is masked once, after the last (``check_next_round``), so one round never has two reveals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from client.peer_keys import KeyBook, sign_masking_key, verified_roster
from client.protocol import RoundConfig
from client.secure_sum import (
    SecureSumError,
    check_roster,
    encode,
    masked,
    new_private_key,
    new_seed,
    open_share,
    pair_key,
    private_bytes,
    private_key_from,
    public_hex,
    round_key,
    seal_share,
    split_seed,
)
from client.state_files import job_file, write_json
from consent.masking_keys import share_threshold

STATE_KEY = "secure-sum"
KIND = "secure-sum"  # <state_dir>/<job_id>.secure-sum.json


def masking_key(state: RecordDict, book: KeyBook, partner_id: str, job_id: str, state_dir: str | None = None) -> str:
    """This partner's signed masking key for ``job_id`` (the key pair is made on first use, kept in the node state
    and state dir)."""
    record = _load(state, job_id, state_dir)
    if record is None:
        key = new_private_key()
        record = ConfigRecord({"job-id": job_id, "private-key": private_bytes(key), "round": 0, "peer-ids": [],
                               "peer-keys": [], "verified": [], "revealed": 0})  # fmt: skip
        state[STATE_KEY] = record
        _persist(record, state_dir)
    return sign_masking_key(book, job_id, partner_id, public_hex(private_key_from(record["private-key"])))


@dataclass(frozen=True)
class MaskedUpdate:
    """A partner's secure-sum reply: the masked words (the model's shapes) and its self-mask seed's shares sealed for
    each peer (peer -> hex)."""

    words: list[np.ndarray]
    sealed: dict[str, str]


def check_next_round(state: RecordDict, job: RoundConfig, state_dir: str | None = None) -> ConfigRecord:
    """This partner's masking record, if ``job.server_round`` comes after the last round it masked. A round is masked
    once: a second vector for a round would come with a second reveal, and a server could then ask one reveal for
    a peer's round key and the other for its seed share."""
    record = _record(state, job.job_id, state_dir)
    last = int(record.get("round", 0))
    if int(job.server_round) <= last:
        raise SecureSumError(f"round {job.server_round} refused: this partner already masked round {last} of job "
                             f"{job.job_id!r}, and masks each round once")  # fmt: skip
    return record


def mask_update(arrays: Sequence[np.ndarray], partner_id: str, job: RoundConfig, state: RecordDict, book: KeyBook,
                state_dir: str | None = None) -> MaskedUpdate:  # fmt: skip
    """``arrays`` encoded and masked with every peer of the round's roster and a fresh self mask: uint64 arrays of
    the same shapes. A peer key its owner did not sign (``client.peer_keys``) is refused before anything is masked,
    and so is a round that does not come after the last one masked (``check_next_round``)."""
    record = check_next_round(state, job, state_dir)
    signed = check_roster(job.peer_ids, job.peer_keys, partner_id, at_least=job.noise_partners)
    verified = set(record.get("verified", []))
    peers = verified_roster(book, job.job_id, signed, verified)
    private = private_key_from(record["private-key"])
    pairs = {peer: pair_key(private, public, job.job_id, partner_id, peer) for peer, public in peers.items()}
    seed = new_seed()
    shares = split_seed(seed, list(peers), share_threshold(job.noise_partners))
    sealed = {peer: seal_share(pairs[peer], job.job_id, job.server_round, partner_id, peer, shares[peer]).hex()
              for peer in peers}  # fmt: skip
    keys = {peer: round_key(key, job.server_round) for peer, key in pairs.items()}
    flat = encode(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]))
    words = masked(flat, partner_id, keys, seed)
    record.update({"round": int(job.server_round), "peer-ids": list(peers), "peer-keys": list(peers.values()),
                   "verified": sorted(verified), "revealed": 0})  # fmt: skip
    _persist(record, state_dir)
    out, start = [], 0
    for a in arrays:
        size = int(np.asarray(a).size)
        out.append(words[start : start + size].reshape(np.asarray(a).shape))
        start += size
    return MaskedUpdate(out, sealed)


def reveal(state: RecordDict, partner_id: str, job_id: str, server_round: int, dropped: Sequence[str],
           sealed: Mapping[str, str], state_dir: str | None = None) -> tuple[ConfigRecord, ConfigRecord]:  # fmt: skip
    """This round's pair keys with the ``dropped`` peers (peer -> hex round key) and the opened seed shares the
    surviving peers sealed for this partner (``sealed``: peer -> hex; out: peer -> hex share), under the rules of
    the module doc."""
    record = _record(state, job_id, state_dir)
    if int(record.get("round", 0)) != int(server_round):
        raise SecureSumError(f"reveal refused: round {server_round} is not the last round {partner_id} masked "
                             f"({record.get('round', 0)})")  # fmt: skip
    if int(record.get("revealed", 0)) == int(server_round):
        raise SecureSumError(f"reveal refused: {partner_id} already answered round {server_round}'s reveal")
    roster = dict(zip(record["peer-ids"], record["peer-keys"]))
    named = sorted(set(dropped)) + sorted(sealed)
    for peer in named:
        if peer == partner_id or peer not in roster:
            raise SecureSumError(f"reveal refused: {peer!r} is not a peer of {partner_id} in round {server_round}")
    if len(named) != len(set(named)) or set(named) != set(roster):
        twice = sorted(set(dropped) & set(sealed))
        raise SecureSumError(f"reveal refused: every peer of round {server_round} must be named once, dropped or "
                             f"survived (both: {twice}, neither: {sorted(set(roster) - set(named))})")  # fmt: skip
    private = private_key_from(record["private-key"])
    pairs = {peer: pair_key(private, roster[peer], job_id, partner_id, peer) for peer in roster}
    keys = ConfigRecord({peer: round_key(pairs[peer], server_round).hex() for peer in sorted(set(dropped))})
    shares = ConfigRecord()
    for peer, box in sorted(sealed.items()):
        try:
            box_bytes = bytes.fromhex(str(box))
        except ValueError as exc:
            raise SecureSumError(f"reveal refused: the seed share from {peer!r} is not hex") from exc
        shares[peer] = open_share(pairs[peer], job_id, server_round, peer, partner_id, box_bytes).hex()
    record["revealed"] = int(server_round)  # kept before anything leaves: a second reveal of this round is refused
    _persist(record, state_dir)
    return keys, shares


def _record(state: RecordDict, job_id: str, state_dir: str | None) -> ConfigRecord:
    record = _load(state, job_id, state_dir)
    if record is None:
        raise SecureSumError(f"no masking key for job {job_id!r} on this node (it was not at preflight, or restarted "
                             "without a state dir)")  # fmt: skip
    return record


def _load(state: RecordDict, job_id: str, state_dir: str | None) -> ConfigRecord | None:
    """The state dir's record when there is one: every change is written there, and a late actor of this partner
    (Flower's simulation) may hold an older ``Context.state``; else the node state's."""
    path = job_file(state_dir, job_id, KIND) if state_dir else None
    if path is None or not path.exists():
        record = state.config_records.get(STATE_KEY)
        return record if record is not None and record.get("job-id") == job_id else None
    saved = json.loads(path.read_text())
    record = ConfigRecord({**saved, "private-key": bytes.fromhex(saved["private-key"])})
    state[STATE_KEY] = record
    return record


def _persist(record: ConfigRecord, state_dir: str | None) -> None:
    if state_dir:  # write_json's temp file is created 0600, and renamed over the old one
        saved = {**dict(record), "private-key": bytes(record["private-key"]).hex()}
        write_json(job_file(state_dir, str(record["job-id"]), KIND), saved)
