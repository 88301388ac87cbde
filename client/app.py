"""The ClientApp a partner runs: load eligible rows -> train privately -> return arrays, metrics and manifest part.

``app`` (the ``clientapp`` component of the Flower App) finds its ledger and data from the node / run config;
``make_client_app(ledger=..., data=...)`` builds the same app around given objects (simulation and tests).

Messages:
* train    -- arrays = global model, config = ``RoundConfig``; reply: arrays, metrics, manifest.
* evaluate -- the same request; reply: metrics of the global model on the partner's local evaluation rows.
* query    -- preflight: reply ``readiness`` (eligible count at the checkpoint and, when that is 0, the consenting
  count before the lifetime budget cap; feature schema, epsilon spent; in a secure job, the masking public key,
  signed with the partner's ledger key: ``client.peer_keys``).
* query.reveal -- secure jobs only, once a round: this round's mask keys with the partners that dropped and the
  opened seed shares of those that survived (``client.masking``).

In a secure job (``RoundConfig.aggregation``) a train reply's arrays are the partner's clipped, noised gradient sum,
masked for the secure sum (uint64 words, the model's shapes), not trained weights, and it carries its self-mask
seed's shares sealed for its peers (``sealed-shares``).

All three use the job's eligible set as first asked in the job (``client.job_eligibility``).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.data import EligibleRows, PartnerData, consenting_count, feature_schema_digest, load_eligible_rows
from client.eligibility import Ledger
from client.job_eligibility import job_eligible_set
from client.manifest import code_hash, manifest_part
from client.masking import check_next_round, mask_update, masking_key, reveal
from client.peer_keys import key_book
from client.partner import Partner, resolve_partner
from client.privacy import PrivateRound, noise_plan, secure_gradient, spent_so_far, train_privately
from client.protocol import (
    ARRAYS,
    CONFIG,
    EPSILON,
    MANIFEST,
    METRICS,
    NUM_EXAMPLES,
    READINESS,
    REVEAL,
    SEALED,
    SHARES,
    RoundConfig,
    arrays_to_record,
    record_to_arrays,
)
from models.nets import ChurnLTVNet, get_weights, set_weights, weight_names
from models.train import predict


def make_client_app(
    ledger: Ledger | None = None, data: PartnerData | None = None, state_root: str | None = None
) -> ClientApp:
    """A ClientApp bound to ``ledger`` and ``data`` (each ``None`` = take it from the node / run config);
    ``state_root``: where partners without a ``state-dir`` node config keep their privacy spend."""
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        job = RoundConfig.from_record(msg.content[CONFIG])
        partner = resolve_partner(context, ledger, data, job, state_root)
        rows = job_rows(partner, job, context)
        model = global_model(msg.content[ARRAYS], rows.n_features, job)
        if job.secure:  # the clipped, noised gradient sum at the global model, masked for the secure sum
            check_next_round(context.state, job, partner.state_dir)  # before any budget is spent on it
            grads, spent = secure_gradient(model, rows.train, job, context.state, partner.state_dir)
            book = key_book(partner.ledger, partner.partner_id)
            update = mask_update(grads, partner.partner_id, job, context.state, book, partner.state_dir)
            arrays = arrays_to_record(weight_names(model), update.words)
            sealed = {SEALED: ConfigRecord(update.sealed)}
        else:
            spent = train_privately(model, rows.train, job, context.state, partner.state_dir)
            arrays, sealed = model_arrays(model), {}
        part = manifest_part(partner.partner_id, job, rows, spent)
        metrics = train_metrics(spent, with_loss=not job.secure)
        return reply(msg, {ARRAYS: arrays, METRICS: metrics, MANIFEST: part.to_record(), **sealed})

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        job = RoundConfig.from_record(msg.content[CONFIG])
        partner = resolve_partner(context, ledger, data, job, state_root)
        rows = job_rows(partner, job, context)
        model = global_model(msg.content[ARRAYS], rows.n_features, job)
        return reply(msg, {METRICS: evaluation_metrics(model, rows)})

    @client_app.query()
    def query(msg: Message, context: Context) -> Message:
        job = RoundConfig.from_record(msg.content[CONFIG])
        partner = resolve_partner(context, ledger, data, job, state_root)
        rows = job_rows(partner, job, context)
        return reply(msg, {READINESS: readiness(partner, rows, job, context)})

    @client_app.query(REVEAL)
    def reveal_round_keys(msg: Message, context: Context) -> Message:
        """Secure jobs: this round's mask keys with the partners the server says dropped and the opened seed shares of
        those it says survived (``client.masking``)."""
        job = RoundConfig.from_record(msg.content[CONFIG])
        partner = resolve_partner(context, ledger, data, job, state_root)
        dropped = [str(p) for p in msg.content[REVEAL]["dropped"]]
        sealed = {str(k): str(v) for k, v in msg.content.config_records.get(SHARES, ConfigRecord()).items()}
        keys, shares = reveal(context.state, partner.partner_id, job.job_id, job.server_round, dropped, sealed,
                              partner.state_dir)  # fmt: skip
        return reply(msg, {REVEAL: keys, SHARES: shares})

    return client_app


def job_rows(partner: Partner, job: RoundConfig, context: Context) -> EligibleRows:
    eligible = job_eligible_set(partner.ledger, partner.partner_id, job, context.state, partner.state_dir)
    return load_eligible_rows(partner.ledger, partner.data, partner.partner_id, job, eligible)


def global_model(record: ArrayRecord, n_features: int, job: RoundConfig) -> ChurnLTVNet:
    """The network the server sent, rebuilt locally; a wrong shape raises (the round then fails for this node)."""
    torch.set_num_threads(1)  # several partners share a host in simulation and tests
    model = ChurnLTVNet(n_features, hidden=job.hidden)
    set_weights(model, record_to_arrays(record))
    return model


def model_arrays(model: ChurnLTVNet) -> ArrayRecord:
    return arrays_to_record(weight_names(model), get_weights(model))


def train_metrics(spent: PrivateRound, with_loss: bool = True) -> MetricRecord:
    """What a train reply reports. A secure round leaves the loss out: computed on the partner's sample without
    noise, it would leak what DP protects (and its share of a step has no loss of its own)."""
    metrics = {
        NUM_EXAMPLES: int(spent.report.n_rows),
        EPSILON: spent.epsilon,
        "epsilon-round": spent.epsilon_round,
        "steps": int(spent.report.steps),
    }
    if with_loss:
        metrics["train-loss"] = float(spent.report.final_loss)
    return MetricRecord(metrics)


def evaluation_metrics(model: ChurnLTVNet, rows: EligibleRows) -> MetricRecord:
    """Headline metrics on the local evaluation rows; a metric undefined on them (one class only) is left out."""
    table = rows.evaluation
    n = int(np.asarray(table.X).shape[0])
    metrics: dict[str, float] = {}
    if n:
        from models.metrics import evaluate as evaluate_predictions  # scipy + sklearn: only evaluation needs them

        churn_prob, ltv_pred = predict(model, table.X)
        try:
            metrics = evaluate_predictions(table.churn, churn_prob, table.ltv, ltv_pred)
        except ValueError:
            metrics = {}
        if metrics:
            metrics |= calibrated_metrics(model, rows, ltv_pred)
    finite = {k: float(v) for k, v in metrics.items() if k != "n" and np.isfinite(v)}
    return MetricRecord({NUM_EXAMPLES: n, **finite})


def calibrated_metrics(model: ChurnLTVNet, rows: EligibleRows, ltv_pred) -> dict[str, float]:
    """The level metrics of the model as this partner would serve it: spend mapped by a calibration fitted on the
    partner's own training rows (``models.calibration``; it stays here). Empty without training rows."""
    from models.calibration import SpendCalibration
    from models.metrics import decile_mape

    train = rows.train
    calibration = SpendCalibration.for_partner(predict(model, train.X)[1], train.ltv)
    if calibration is None:
        return {}
    served = calibration.apply(ltv_pred)
    total = float(np.sum(rows.evaluation.ltv))
    out = {"decile_mape_calibrated": decile_mape(rows.evaluation.ltv, served)}
    if total > 0:
        out["ltv_ratio_calibrated"] = float(np.sum(served)) / total
    return out


def readiness(partner: Partner, rows: EligibleRows, job: RoundConfig, context: Context) -> ConfigRecord:
    """Preflight answer. Also calibrates (and keeps) this partner's noise, so round 1 starts at once."""
    train_rows = int(np.asarray(rows.train.X).shape[0])
    # A secure job's noise depends on the union's rows, known only after preflight: planned in round 1.
    plan = noise_plan(context.state, train_rows, job) if train_rows and not job.secure else None
    secure = {}
    if job.secure:
        book = key_book(partner.ledger, partner.partner_id)
        secure = {"masking-key": masking_key(context.state, book, partner.partner_id, job.job_id, partner.state_dir)}
    # Only a zero needs explaining (nobody consents, or all are over budget): a second fold of the log otherwise.
    explain = {} if rows.eligible.count else {
        "consenting-count": consenting_count(partner.ledger, partner.partner_id, job, rows.eligible)}  # fmt: skip
    return ConfigRecord(
        {
            **explain,
            **secure,
            "partner-id": partner.partner_id,
            "eligible-count": rows.eligible.count,
            "eligible-root": rows.eligible.root,
            "train-rows": train_rows,
            "noise-multiplier": plan.noise_multiplier if plan else 0.0,
            "sample-rate": plan.sample_rate if plan else 0.0,
            "n-features": rows.n_features,
            "feature-schema": feature_schema_digest(rows.feature_names),
            "epsilon-spent": spent_so_far(context.state, job, partner.state_dir),
            "code-hash": code_hash(),
        }
    )


def reply(msg: Message, records: dict) -> Message:
    return Message(RecordDict(records), reply_to=msg)


app = make_client_app()
