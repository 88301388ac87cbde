"""The wire contract between Cohort's ServerApp and ClientApp: record keys, the round instructions, the weights.

The server puts the global model under ``arrays`` and a ``RoundConfig`` under ``config`` in every train/evaluate
message; a train reply carries ``arrays`` (the local update), ``metrics`` (``num-examples``, ``epsilon``, ...) and
``manifest`` (the partner's part of the round manifest, see ``client.manifest``). Both sides import this module,
so a key is spelled in exactly one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, fields

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
MANIFEST = "manifest"
READINESS = "readiness"
REVEAL = "reveal"  # secure jobs: the query action, and the record, of a round's mask keys (client.masking)
SEALED = "sealed-shares"  # secure jobs: a train reply's self-mask seed shares sealed for each peer (client.masking)
SHARES = "seed-shares"  # secure jobs: in a reveal, the sealed shares for this partner, and in its reply, opened

NUM_EXAMPLES = "num-examples"  # the key Flower's strategies weight by
EPSILON = "epsilon"  # cumulative epsilon this partner has spent in this job, after this round


AGGREGATIONS = ("plain", "secure")  # see RoundConfig.aggregation
LR_SCHEDULES = ("cosine", "constant")  # models.train: cosine decay to 0 within each round's training, or a flat lr


def lr_decays(lr_schedule: str) -> bool:
    """``models.train.train``'s ``lr_decay`` flag for a schedule of ``LR_SCHEDULES``."""
    return lr_schedule == "cosine"


@dataclass(frozen=True)
class RoundConfig:
    """What a partner needs to know to take part in one round of a job.

    ``tree_size`` is the ledger checkpoint fixed at preflight: eligibility is evaluated at exactly that size in
    every round, so a consent recorded after the job started does not change who is used.
    ``target_epsilon`` / ``delta`` are the job's budget for the whole job; the partner calibrates its noise so that
    ``num_rounds * local_epochs`` epochs spend at most that, and refuses a round that would go over.
    """

    job_id: str
    purpose: str
    categories: tuple[str, ...]
    tree_size: int
    server_round: int
    num_rounds: int
    local_epochs: int
    batch_size: int
    lr: float
    max_grad_norm: float
    target_epsilon: float
    delta: float
    accountant: str = "rdp"
    eval_fraction: float = 0.2
    # "cosine": the learning rate decays from lr to 0 within each round's local training; "constant": it stays at lr.
    lr_schedule: str = "cosine"
    hidden: tuple[int, ...] = (64, 32)  # ChurnLTVNet trunk widths; the server builds the initial model with them
    # Where the coordinator says the consent ledger is, for a partner whose node / run config names none (the
    # embedded ledger of a bare ``flwr run .``, see ``server.embedded``); a configured ``ledger-url`` wins.
    ledger_link: str = ""
    # "plain": each partner trains local_epochs with its own DP noise and returns weights (FedAvg). "secure"
    # (distributed DP, ``server.secure_aggregation``): one DP-SGD step a round over the union of the partners' rows;
    # each partner Poisson-samples its rows at the union's rate (batch_size / union_rows), adds 1/sqrt(noise_partners)
    # of the noise and returns its clipped, noised gradient sum masked for a secure sum (``client.secure_sum``) with
    # the round's roster (peer_ids, with their signed X25519 public keys peer_keys: ``client.peer_keys``).
    aggregation: str = "plain"
    union_rows: int = 0
    noise_partners: int = 1
    peer_ids: tuple[str, ...] = ()
    peer_keys: tuple[str, ...] = ()

    @property
    def secure(self) -> bool:
        return self.aggregation == "secure"

    def to_record(self) -> ConfigRecord:
        return to_config_record(self)

    @classmethod
    def from_record(cls, record: ConfigRecord) -> RoundConfig:
        return from_config_record(cls, record)


def to_config_record(obj) -> ConfigRecord:
    """A flat dataclass as a ConfigRecord: ``field_name`` -> ``field-name``, tuples -> lists."""
    record = ConfigRecord()
    for name, value in asdict(obj).items():
        record[name.replace("_", "-")] = list(value) if isinstance(value, tuple) else value
    return record


def from_config_record(cls, record: ConfigRecord):
    """The inverse of ``to_config_record``; a missing key without a default raises ``KeyError``."""
    values = {}
    for f in fields(cls):
        key = f.name.replace("_", "-")
        if key not in record:
            if f.default is not MISSING:
                continue
            raise KeyError(f"{cls.__name__} record lacks {key!r}")
        values[f.name] = record[key]
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def arrays_to_record(names: Sequence[str], arrays: Sequence[np.ndarray]) -> ArrayRecord:
    """Named arrays (``models.nets.weight_names`` order) as an ArrayRecord; names make shape checks readable."""
    if len(names) != len(arrays):
        raise ValueError(f"{len(names)} names for {len(arrays)} arrays")
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in zip(names, arrays)})


def record_to_arrays(record: ArrayRecord) -> list[np.ndarray]:
    """The arrays of a record in insertion (= ``state_dict``) order."""
    return [array.numpy() for array in record.values()]
