"""A training job as the coordinator declares it: purpose, data categories, rounds, DP target, partners, strategy.

``Job.from_run_config`` reads the ``[tool.flwr.app.config]`` keys (overridable with ``flwr run --run-config``);
``Job.round_config`` is what every partner receives in each round. ``tree_size`` is the ledger checkpoint the job
is fixed to: 0 means "not fixed yet", and preflight must fix it before round 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from client.protocol import AGGREGATIONS, LR_SCHEDULES, RoundConfig

STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum")
ACCOUNTANTS = ("rdp", "prv")


class JobError(ValueError):
    """A job definition that cannot run."""


class JobStopped(RuntimeError):
    """The job was stopped before its last round; the message says why and which partners were involved."""


class NotEnoughPartners(JobStopped):
    """Fewer than ``min_partners`` partners were connected, or answered usably, within the round timeout."""


class PreflightError(JobStopped):
    """The job cannot start: checkpoint not fixed, or too few partners ready."""


@dataclass(frozen=True)
class Job:
    job_id: str
    purpose: str = "churn_ltv_modelling"
    categories: tuple[str, ...] = ("behavioural", "transaction")
    rounds: int = 3
    target_epsilon: float = 3.0
    delta: float = 1e-5
    min_partners: int = 2
    round_timeout_s: float = 120.0
    strategy: str = "fedavg"
    local_epochs: int = 2
    batch_size: int = 256
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    max_grad_norm: float = 20.0
    tree_size: int = 0
    accountant: str = "rdp"
    eval_fraction: float = 0.2
    evaluate_every: int = 1  # federated evaluation every n rounds and after the last; 0 = never
    hidden: tuple[int, ...] = (64, 32)
    trim_beta: float = 0.2  # fedtrimmedavg: fraction cut from each tail
    krum_byzantine: int = 0  # krum: partners assumed malicious
    preflight_timeout_s: float = 60.0  # how long to wait for partners to connect and answer before round 1
    expected_partners: int = 0  # preflight waits (up to its timeout) for this many; 0 = just min_partners
    seed: int = 0  # initial model weights (public; never the DP noise, which each partner draws itself)
    ltv_loc_init: float = 3.0  # public prior for the ZILN location, log-dollars (~$20 a purchase), not fitted
    # Announced to partners in every round (RoundConfig.ledger_link): where to read eligibility when their own
    # node / run config has no ledger-url. Set by the ServerApp for its embedded ledger (server.embedded).
    ledger_link: str = ""
    # "plain": FedAvg of local DP training, each partner adding all of its noise. "secure": distributed DP, one
    # DP-SGD step a round over the union of the partners' rows, summed securely (server.secure_aggregation); then
    # rounds = steps, batch_size = the union's expected batch, lr = the server's Adam rate (cosine over the job).
    aggregation: str = "plain"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        problems = []
        if not self.job_id:
            problems.append("job_id is empty")
        if not self.categories:
            problems.append("no data categories")
        if self.rounds < 1:
            problems.append(f"rounds must be >= 1, got {self.rounds}")
        if not (self.target_epsilon > 0 and math.isfinite(self.target_epsilon)):
            problems.append(f"target epsilon must be finite and > 0, got {self.target_epsilon}")
        if not 0 < self.delta < 1:
            problems.append(f"delta must be in (0, 1), got {self.delta}")
        if self.min_partners < 1:
            problems.append(f"min_partners must be >= 1, got {self.min_partners}")
        if self.round_timeout_s <= 0:
            problems.append(f"round timeout must be > 0 s, got {self.round_timeout_s}")
        if self.strategy not in STRATEGIES:
            problems.append(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")
        if self.accountant not in ACCOUNTANTS:
            problems.append(f"unknown accountant {self.accountant!r}; choose one of {ACCOUNTANTS}")
        if self.aggregation not in AGGREGATIONS:
            problems.append(f"unknown aggregation {self.aggregation!r}; choose one of {AGGREGATIONS}")
        elif self.aggregation == "secure":
            if self.strategy != "fedavg":
                problems.append(f"secure aggregation sums the updates, so it needs strategy fedavg, not "
                                f"{self.strategy!r} (a robust strategy must see each update)")  # fmt: skip
            if self.min_partners < 2:
                problems.append("secure aggregation needs min_partners >= 2: a sum of one update hides nothing")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"unknown lr schedule {self.lr_schedule!r}; choose one of {LR_SCHEDULES}")
        if self.local_epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.max_grad_norm <= 0:
            problems.append("local_epochs, batch_size, lr and max_grad_norm must be positive")
        if self.evaluate_every < 0:
            problems.append(f"evaluate_every must be >= 0, got {self.evaluate_every}")
        if not 0 <= self.eval_fraction < 1:
            problems.append(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.tree_size < 0:
            problems.append(f"tree_size must be >= 0, got {self.tree_size}")
        if problems:
            raise JobError(f"job {self.job_id!r} cannot run: " + "; ".join(problems))

    def fixed_at(self, tree_size: int) -> Job:
        """This job with its ledger checkpoint fixed."""
        return replace(self, tree_size=int(tree_size))

    def round_config(self, server_round: int = 0) -> RoundConfig:
        return RoundConfig(
            job_id=self.job_id,
            purpose=self.purpose,
            categories=tuple(sorted(self.categories)),
            tree_size=self.tree_size,
            server_round=server_round,
            num_rounds=self.rounds,
            local_epochs=self.local_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            lr_schedule=self.lr_schedule,
            max_grad_norm=self.max_grad_norm,
            target_epsilon=self.target_epsilon,
            delta=self.delta,
            accountant=self.accountant,
            eval_fraction=self.eval_fraction,
            hidden=tuple(self.hidden),
            ledger_link=self.ledger_link,
            aggregation=self.aggregation,
            noise_partners=self.min_partners if self.aggregation == "secure" else 1,
        )

    def describe(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["categories"] = list(self.categories)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> Job:
        """A job from Flower run-config keys (``num-rounds``, ``target-epsilon``, ``categories = "a,b"``, ...)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            key = RUN_CONFIG_KEYS.get(f.name, f.name.replace("_", "-"))
            if key in run_config:
                values[f.name] = _coerce(f.name, run_config[key])
        if "job_id" not in values:
            raise JobError("run config lacks job-id")
        known = set(RUN_CONFIG_KEYS.values()) | {f.name.replace("_", "-") for f in fields(cls)}
        values["extra"] = {k: v for k, v in run_config.items() if k not in known}
        return cls(**values)


# Run-config names that are not simply the field name with "-" for "_" (num-rounds is Flower's usual name).
RUN_CONFIG_KEYS = {
    "rounds": "num-rounds",
    "round_timeout_s": "round-timeout",
    "preflight_timeout_s": "preflight-timeout",
}

_TUPLE_FIELDS = {"categories": str, "hidden": int}
_TYPES = {f.name: f.type for f in fields(Job)}


def evaluates(server_round: int, rounds: int, every: int) -> bool:
    """Whether a job of ``rounds`` rounds with ``evaluate_every=every`` has its partners evaluate the global model
    after ``server_round``: every ``every``-th round and the last; never with 0."""
    return every > 0 and (server_round % every == 0 or server_round == rounds)


def _coerce(name: str, value: Any) -> Any:
    if name in _TUPLE_FIELDS:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(_TUPLE_FIELDS[name](str(v).strip()) for v in items if str(v).strip())
    kind = _TYPES[name]
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return str(value)
