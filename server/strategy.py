"""The aggregation strategy: a Flower strategy (FedAvg by default) behind a guard that makes a round safe to close.

``GuardedStrategy`` wraps any of Flower's FedAvg-family strategies and, around the wrapped one:

* sends each round to every connected partner that preflight found ready (``partner_of_node``; waiting at most the
  round timeout for ``min_partners``), with a message TTL equal to the round timeout, so a late partner does not
  work on a closed round; a reply from any other node is refused and logged;
* screens train replies (``server.screening``): NaN/Inf, wrong shapes, over-budget epsilon, a manifest part that
  does not describe this round -- refused and logged, never aggregated;
* closes the round with the partners that answered usably if at least ``min_partners`` did, else stops the job
  with ``NotEnoughPartners``;
* reports epsilon as the MAX over partners (a weighted mean would understate the worst case);
* keeps each partner's own train and evaluate metrics per round (``partner_train_metrics``,
  ``partner_evaluate_metrics``): Flower's result holds only the weighted means, the same for every partner;
* builds the round manifest and hands it to ``on_round``;
* in a secure job (``secure``, ``server.secure_aggregation``): sends each round's roster and masking keys, adds up the
  masked sums instead of averaging weights, asks every survivor once for its shares of the other survivors'
  self-mask seeds and its mask keys with partners whose vector is missing (``query.reveal``), and puts the secure
  sum's trust statement in the manifest. A round whose sum stays masked (a survivor's reveal missing) is void: the
  model keeps its weights, the manifest says why (``voided``) and its ε is charged all the same (every partner
  spent it on a noised sum); a second void round in a row stops the job.

``Strategy.start(..., timeout=job.round_timeout_s)`` is what bounds each round in time: Flower's
``grid.send_and_receive`` returns at the timeout with whatever replies arrived.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, Strategy

from client.protocol import ARRAYS, CONFIG, EPSILON, METRICS, NUM_EXAMPLES, REVEAL, SEALED, SHARES
from consent.entries import MAX_REASON
from server.job import Job, NotEnoughPartners, evaluates
from server.manifests import RoundManifest, round_manifest
from server.partners import connected_partners, messages_to
from server.screening import AcceptedUpdate, ArrayShapes, replying_node, screen_train_replies, shapes_of
from server.secure_aggregation import RoundNotUnmasked, SecureSum

log = logging.getLogger(__name__)

MAX_KEYS = frozenset({EPSILON, "epsilon-round"})

# round -> partner_id -> metric name -> value
PartnerMetrics = dict[int, dict[str, dict[str, float]]]


def aggregate_train_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted mean of each train metric, except epsilon: the max over partners."""
    return _aggregate([next(iter(r.metric_records.values())) for r in records], weighted_by_key)


def _aggregate(metric_records: list[MetricRecord], weighted_by_key: str) -> MetricRecord:
    out = MetricRecord()
    keys = sorted({k for m in metric_records for k in m if k != weighted_by_key})
    for key in keys:
        pairs = [(float(m[key]), float(m[weighted_by_key])) for m in metric_records if key in m]
        if key in MAX_KEYS:
            out[key] = max(v for v, _ in pairs)
            continue
        total = sum(w for _, w in pairs)
        if total > 0:
            out[key] = sum(v * w for v, w in pairs) / total
    out[weighted_by_key] = sum(float(m[weighted_by_key]) for m in metric_records)
    return out


def _scalars(metrics: MetricRecord) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def build_strategy(job: Job) -> FedAvg:
    """The Flower strategy named by ``job.strategy``; every partner takes part in every round."""
    common = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": job.min_partners,
        "min_evaluate_nodes": job.min_partners,
        "min_available_nodes": job.min_partners,
        "weighted_by_key": NUM_EXAMPLES,
        "arrayrecord_key": ARRAYS,
        "configrecord_key": CONFIG,
        "train_metrics_aggr_fn": aggregate_train_metrics,
    }
    if job.strategy == "fedavg":
        return FedAvg(**common)
    if job.strategy == "fedmedian":
        return FedMedian(**common)
    if job.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=job.trim_beta)
    if job.strategy == "krum":
        return Krum(**common, num_malicious_nodes=job.krum_byzantine)
    raise ValueError(f"unknown strategy {job.strategy!r}")


class GuardedStrategy(Strategy):
    """A Flower strategy that screens updates, bounds rounds in time and produces round manifests."""

    def __init__(
        self,
        inner: FedAvg,
        job: Job,
        partner_of_node: Mapping[int, str] | None = None,
        on_round: Callable[[RoundManifest], None] | None = None,
        secure: SecureSum | None = None,
    ) -> None:
        self.inner = inner
        self.secure = secure  # a secure job: masked gradient sums, unmasked and stepped here instead of FedAvg
        self.job = job
        # Empty only without a preflight (unit tests): then every connected node takes part.
        self.partner_of_node = dict(partner_of_node or {})
        self.on_round = on_round
        self.manifests: list[RoundManifest] = []
        self.partner_train_metrics: PartnerMetrics = {}
        self.partner_evaluate_metrics: PartnerMetrics = {}
        self._sent: dict[int, list[Message]] = {}
        self._global: dict[int, ArrayRecord] = {}
        self._reference: ArrayShapes = {}
        self._grid: Grid | None = None  # secure jobs: the grid the survivors' mask keys are asked over
        self._spent: dict[str, float] = {}  # partner -> the most ε it reported in an accepted update of this job
        self.voided: dict[int, str] = {}  # secure jobs: round -> why its sum stayed masked (the model kept its weights)

    def summary(self) -> None:
        log.info(
            "job %s: %s, %d round(s), min %d partner(s), round timeout %g s, target epsilon %g (delta %g)",
            self.job.job_id,
            type(self.inner).__name__,
            self.job.rounds,
            self.job.min_partners,
            self.job.round_timeout_s,
            self.job.target_epsilon,
            self.job.delta,
        )
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = connected_partners(grid, self.job.min_partners, self.job.round_timeout_s, what=f"round {server_round}",
                                   among=self._ready())  # fmt: skip
        self._global[server_round] = arrays
        self._reference = shapes_of(arrays)
        if self.secure is not None:
            self._grid = grid
            config = self.secure.round_config(config, [self.partner_of_node[n] for n in nodes])
        # Kept: the grid gives each message its id when it sends it, and replies refer to that id.
        self._sent[server_round] = self._messages(server_round, nodes, arrays, config, MessageType.TRAIN)
        return self._sent[server_round]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        sent = self._sent.pop(server_round, [])
        node_of_message = {m.metadata.message_id: int(m.metadata.dst_node_id) for m in sent}
        # A secure round's roster: the peer-ids every partner of the round was sent (one config for all).
        roster = list(sent[0].content[CONFIG]["peer-ids"]) if self.secure is not None and sent else None
        screened = screen_train_replies(
            replies, self._reference, self.job, server_round, self.partner_of_node, node_of_message, roster,
            self._spent,
        )
        answered = {replying_node(m, node_of_message) for m in replies}
        missing = [n for n in node_of_message.values() if n not in answered]
        for node in missing:
            log.warning(
                "round %d: node %d (partner %s) did not answer within %g s",
                server_round,
                node,
                self.partner_of_node.get(node, "?"),
                self.job.round_timeout_s,
            )
        accepted = screened.accepted
        if len(accepted) < self.job.min_partners:
            raise NotEnoughPartners(
                f"job {self.job.job_id} stopped in round {server_round}: {len(accepted)} usable update(s), "
                f"need at least {self.job.min_partners} (refused: {[r.to_dict() for r in screened.refused]}, "
                f"failed: {[r.to_dict() for r in screened.failed]}, no answer from nodes {missing})"
            )
        parts = [u.part for u in accepted]
        for part in parts:
            self._spent[part.partner_id] = max(self._spent.get(part.partner_id, 0.0), part.epsilon)
        if self.secure is not None:
            arrays = self._secure_sum_or_void(server_round, accepted, sent, roster)
            metrics = aggregate_train_metrics([u.message.content for u in accepted], NUM_EXAMPLES)
        else:
            arrays, metrics = self.inner.aggregate_train(server_round, [u.message for u in accepted])
        if arrays is None:
            raise NotEnoughPartners(f"job {self.job.job_id}: round {server_round} aggregated to nothing")
        if metrics is not None:
            # Robust strategies aggregate metrics over the updates they selected; the job's spend is everyone's.
            metrics[EPSILON] = max(p.epsilon for p in parts)
        self.partner_train_metrics[server_round] = {
            u.part.partner_id: _scalars(u.message.content.metric_records[METRICS]) for u in accepted
        }
        manifest = round_manifest(
            self.job,
            server_round,
            parts,
            screened.refused,
            screened.failed,
            missing,
            self._global.pop(server_round),
            arrays,
            aggregation=self._trust(server_round),
        )
        self.manifests.append(manifest)
        log.info(
            "round %d closed: %d partner(s) %s, epsilon max %.4f, %d refused, %d failed, %d missing",
            server_round,
            len(parts),
            sorted(p.partner_id for p in parts),
            manifest.epsilon_max,
            len(screened.refused),
            len(screened.failed),
            len(missing),
        )
        if self.on_round is not None:
            self.on_round(manifest)
        return arrays, metrics

    def _secure_sum_or_void(self, server_round: int, accepted: list[AcceptedUpdate], sent: list[Message],
                            roster: list[str]) -> ArrayRecord:  # fmt: skip
        """The secure sum's step, or the round's own weights if its sum stays masked (once; twice in a row stops)."""
        try:
            arrays = self._secure_sum(server_round, accepted, sent, roster)
        except RoundNotUnmasked as exc:
            if server_round - 1 in self.voided:
                raise RoundNotUnmasked(f"{exc}; round {server_round - 1} was void too "
                                       f"({self.voided[server_round - 1]}): stopping the job") from exc  # fmt: skip
            self.voided[server_round] = str(exc)[:MAX_REASON]
            log.warning("round %d void, the model keeps its weights: %s", server_round, exc)
            return self._global[server_round]
        return arrays

    def _secure_sum(self, server_round: int, accepted: list[AcceptedUpdate], sent: list[Message],
                    roster: list[str]) -> ArrayRecord:  # fmt: skip
        masked = {u.part.partner_id: u.message.content.array_records[ARRAYS] for u in accepted}
        sealed = {u.part.partner_id: u.message.content.config_records[SEALED] for u in accepted}
        node_of = {u.part.partner_id: u.node_id for u in accepted}
        # The round's config as every roster partner received it (same content in each message; ``roster`` is its
        # peer-ids): a reveal names the round the survivors masked. Copied: every round is configured on one record.
        config = ConfigRecord(dict(sent[0].content[CONFIG]))

        def reveal(survivors, dropped, sealed_for):
            """Each survivor's round keys with the dropped partners and its opened shares of the other survivors'
            seeds (``query.reveal``, one message per survivor), within the round timeout."""
            messages = [
                Message(RecordDict({CONFIG: config, REVEAL: ConfigRecord({"dropped": list(dropped)}),
                                    SHARES: ConfigRecord(dict(sealed_for[p]))}),
                        dst_node_id=node_of[p], message_type=f"{MessageType.QUERY}.{REVEAL}",
                        ttl=self.job.round_timeout_s)
                for p in survivors
            ]  # fmt: skip
            keys, shares = {}, {}
            for msg in self._grid.send_and_receive(messages, timeout=self.job.round_timeout_s):
                partner = self.partner_of_node.get(int(msg.metadata.src_node_id))
                if msg.has_error() or partner not in survivors:
                    log.warning("round %d: no reveal from node %d: %s", server_round, msg.metadata.src_node_id,
                                msg.error.reason if msg.has_error() else "not a survivor")  # fmt: skip
                    continue
                records = msg.content.config_records
                wanted = [(REVEAL, d, keys) for d in dropped] + [(SHARES, s, shares) for s in sealed_for[partner]]
                for name, peer, out in wanted:
                    try:
                        out[(partner, peer)] = bytes.fromhex(str(records[name][peer]))
                    except (KeyError, ValueError):  # left out: aggregate() then names what is missing
                        log.warning("round %d: %s revealed no usable %s for %s", server_round, partner, name, peer)
            return keys, shares

        return self.secure.aggregate(server_round, masked, sealed, roster, reveal)

    def _trust(self, server_round: int) -> dict | None:
        if self.secure is None:
            return None
        trust = self.secure.trust() | {"recovered": self.secure.recovered.get(server_round, [])}
        return trust | ({"voided": self.voided[server_round]} if server_round in self.voided else {})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not evaluates(server_round, self.job.rounds, self.job.evaluate_every):
            return []
        ready = self._ready()
        nodes = sorted(n for n in grid.get_node_ids() if ready is None or n in ready)
        return self._messages(server_round, nodes, arrays, config, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted mean of each metric over the partners that reported it; evaluation never stops a job."""
        usable, by_partner = [], {}
        ready = self._ready()
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error():
                log.warning("round %d: evaluation failed on node %d: %s", server_round, node, msg.error.reason)
                continue
            if ready is not None and node not in ready:
                log.warning("round %d: refused evaluation from node %d: not found ready at preflight", server_round,
                            node)  # fmt: skip
                continue
            metrics = msg.content.metric_records.get(METRICS)
            n = metrics.get(NUM_EXAMPLES) if metrics is not None else None
            if not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
                continue
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values()):
                usable.append(metrics)
                by_partner[self.partner_of_node.get(node, f"node-{node}")] = _scalars(metrics)
        if by_partner:
            self.partner_evaluate_metrics[server_round] = by_partner
        return _aggregate(usable, NUM_EXAMPLES) if usable else None

    def _ready(self) -> set[int] | None:
        return set(self.partner_of_node) if self.partner_of_node else None

    def _messages(
        self, server_round: int, nodes: list[int], arrays: ArrayRecord, config: ConfigRecord, message_type: str
    ) -> list[Message]:
        config["server-round"] = server_round
        content = RecordDict({ARRAYS: arrays, CONFIG: config})
        return messages_to(nodes, content, message_type, ttl_s=self.job.round_timeout_s)
