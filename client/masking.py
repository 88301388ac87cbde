"""A partner's side of the secure sum (``client.secure_sum``): its masking key, its masked update, its reveals.

The X25519 key pair is made at preflight and kept in the node's ``Context.state`` for the job; its private half
never leaves the node. The public half goes to the server in the readiness reply, signed with the partner's ledger
key (``client.peer_keys``), and a partner masks only with peer keys whose signatures check out against the ledger.
With a state dir (the partner's ``state-dir``) it is also written to ``<state_dir>/<job_id>.secure-sum.json``
(mode 0600, with the last round masked, its roster and the peer keys already checked), so a SuperNode that restarts
mid-job rejoins the job's rounds with the key its peers know. Without one, a restarted node can no longer take part
in that job (its replies fail, and the survivors' masks with it are removed).

A reveal (``query.reveal``) hands the server this round's key with partners the server says dropped. It is given
only for the last round this partner masked, only for peers of that round's roster, never for itself: the server
cannot collect round keys of other rounds to unmask anything else.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

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
    pair_key,
    private_bytes,
    private_key_from,
    public_hex,
    round_key,
)
from client.state_files import job_file, write_json

STATE_KEY = "secure-sum"
KIND = "secure-sum"  # <state_dir>/<job_id>.secure-sum.json


def masking_key(state: RecordDict, book: KeyBook, partner_id: str, job_id: str, state_dir: str | None = None) -> str:
    """This partner's signed masking key for ``job_id`` (the key pair is made on first use, kept in the node state
    and state dir)."""
    record = _load(state, job_id, state_dir)
    if record is None:
        key = new_private_key()
        record = ConfigRecord({"job-id": job_id, "private-key": private_bytes(key), "round": 0, "peer-ids": [],
                               "peer-keys": [], "verified": []})  # fmt: skip
        state[STATE_KEY] = record
        _persist(record, state_dir)
    return sign_masking_key(book, job_id, partner_id, public_hex(private_key_from(record["private-key"])))


def mask_update(arrays: Sequence[np.ndarray], partner_id: str, job: RoundConfig, state: RecordDict, book: KeyBook,
                state_dir: str | None = None) -> list[np.ndarray]:  # fmt: skip
    """``arrays`` encoded and masked with every peer of the round's roster: uint64 arrays of the same shapes.
    A peer key its owner did not sign (``client.peer_keys``) is refused before anything is masked."""
    record = _record(state, job.job_id, state_dir)
    signed = check_roster(job.peer_ids, job.peer_keys, partner_id, at_least=job.noise_partners)
    verified = set(record.get("verified", []))
    peers = verified_roster(book, job.job_id, signed, verified)
    private = private_key_from(record["private-key"])
    keys = {peer: round_key(pair_key(private, public, job.job_id, partner_id, peer), job.server_round)
            for peer, public in peers.items()}  # fmt: skip
    flat = encode(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]))
    words = masked(flat, partner_id, keys)
    record.update({"round": int(job.server_round), "peer-ids": list(peers), "peer-keys": list(peers.values()),
                   "verified": sorted(verified)})  # fmt: skip
    _persist(record, state_dir)
    out, start = [], 0
    for a in arrays:
        size = int(np.asarray(a).size)
        out.append(words[start : start + size].reshape(np.asarray(a).shape))
        start += size
    return out


def reveal(state: RecordDict, partner_id: str, job_id: str, server_round: int, dropped: Sequence[str],
           state_dir: str | None = None) -> ConfigRecord:  # fmt: skip
    """This round's keys with the ``dropped`` peers (peer -> hex round key), under the rules of the module doc."""
    record = _record(state, job_id, state_dir)
    if int(record.get("round", 0)) != int(server_round):
        raise SecureSumError(f"reveal refused: round {server_round} is not the last round {partner_id} masked "
                             f"({record.get('round', 0)})")  # fmt: skip
    roster = dict(zip(record["peer-ids"], record["peer-keys"]))
    private = private_key_from(record["private-key"])
    out = ConfigRecord()
    for peer in sorted(set(dropped)):
        if peer == partner_id or peer not in roster:
            raise SecureSumError(f"reveal refused: {peer!r} is not a peer of {partner_id} in round {server_round}")
        out[peer] = round_key(pair_key(private, roster[peer], job_id, partner_id, peer), server_round).hex()
    return out


def _record(state: RecordDict, job_id: str, state_dir: str | None) -> ConfigRecord:
    record = _load(state, job_id, state_dir)
    if record is None:
        raise SecureSumError(f"no masking key for job {job_id!r} on this node (it was not at preflight, or restarted "
                             "without a state dir)")  # fmt: skip
    return record


def _load(state: RecordDict, job_id: str, state_dir: str | None) -> ConfigRecord | None:
    record = state.config_records.get(STATE_KEY)
    if record is not None and record.get("job-id") == job_id:
        return record
    path = job_file(state_dir, job_id, KIND) if state_dir else None
    if path is None or not path.exists():
        return None
    saved = json.loads(path.read_text())
    record = ConfigRecord({**saved, "private-key": bytes.fromhex(saved["private-key"])})
    state[STATE_KEY] = record
    return record


def _persist(record: ConfigRecord, state_dir: str | None) -> None:
    if state_dir:  # write_json's temp file is created 0600, and renamed over the old one
        saved = {**dict(record), "private-key": bytes(record["private-key"]).hex()}
        write_json(job_file(state_dir, str(record["job-id"]), KIND), saved)
