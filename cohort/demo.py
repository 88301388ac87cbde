"""`cohort demo`: the whole flow in one process — consents, a federated DP job in Flower simulation, the
comparison table, the round audit and the ledger verification."""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from client.consent_link import LinkByURL, link_url, open_link
from client.data import SyntheticPlatforms
from cohort.demo_world import CATEGORIES, PURPOSE, build_world, exercise_rights, record_consents
from consent.audit import audit_rounds
from consent.verify import verify_ledger
from server.job import Job
from server.ledger_hooks import LedgerBinding
from server.runner import JobHooks, JobResult

LIFETIME_EPSILON = 10.0


@dataclass
class DemoResult:
    out: Path
    result: JobResult
    comparison: list[dict]
    audit_ok: bool
    verify_ok: bool
    seconds: float


def run_demo(out: Path | None = None, users_per_platform: int = 1500, rounds: int = 3, epsilon: float = 3.0,
             seed: int = 7, console: Console | None = None, local_epochs: int = 20, batch_size: int = 512,
             lr: float = 2e-2) -> DemoResult:  # fmt: skip
    # ~870 training rows per partner: batch 512 is ~2 Poisson batches an epoch (sample rate 0.5), so each DP step
    # averages ~440 clipped gradients against one noise draw; 20 local epochs at lr 0.02 give each round enough
    # steps to move the model. With 2 epochs of batch 128 at lr 0.003 (cosine-decayed and Adam restarted in every
    # round) the weights hardly left their random start and the federated model lost to the local-only ones.
    console = console or Console()
    started = time.perf_counter()
    out = Path(out or tempfile.mkdtemp(prefix="cohort-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    data = SyntheticPlatforms(users_per_platform=users_per_platform, seed=seed)

    with console.status("creating keys, the ledger and three platforms…"):
        world = build_world(out, data, seed)
    with console.status("partners record their users' consents…"):
        record_consents(world, seed)
        exercise_rights(world, seed=seed + 4)
    _print_consents(console, world)

    day = dt.date.today().isoformat()
    job = Job(job_id=f"demo-{int(time.time())}", purpose=PURPOSE, categories=CATEGORIES, rounds=rounds,
              target_epsilon=epsilon, min_partners=2, round_timeout_s=120.0, local_epochs=local_epochs,
              batch_size=batch_size, lr=lr, seed=seed)  # fmt: skip
    binding = LedgerBinding(world.ledger, world.coordinator, lifetime_epsilon=LIFETIME_EPSILON, day=day)
    url = link_url(str(world.db_path), str(world.keys_dir), LIFETIME_EPSILON, job.target_epsilon, day)
    hooks = binding.hooks()
    round_times: list[float] = []

    def on_round(manifest):
        hooks_on_round(manifest)
        round_times.append(time.perf_counter())
        eps = ", ".join(f"{p.partner_id} ε={p.epsilon:.2f}" for p in sorted(manifest.partners, key=lambda p: p.partner_id))
        console.print(f"  round {manifest.server_round}/{rounds} closed: {eps}; manifest appended to the ledger")

    hooks_on_round = hooks.on_round
    hooks = JobHooks(checkpoint=hooks.checkpoint, preflight=hooks.preflight, on_round=on_round, on_finish=hooks.on_finish)
    console.print(f"[bold]Federated job[/bold] {job.job_id}: purpose {PURPOSE}, categories {', '.join(CATEGORIES)}, "
                  f"{rounds} rounds, target ε={epsilon:g} (δ={job.delta:g}), FedAvg, 3 partners (Flower simulation)")  # fmt: skip
    from server.simulation import simulate_job

    with console.status("training (Flower simulation: starting Ray, then rounds)…"):
        result = simulate_job(job, len(data.partners), ledger=LinkByURL(url), data=data, hooks=hooks, cpus=os.cpu_count())
    _print_rounds(console, result)

    with console.status("training comparison models (local-only per partner, centralized)…"):
        from cohort.compare import comparison, partner_rows

        rows = partner_rows(open_link(url), data, result)
        # Same budget as each federated partner: its epsilon and rounds x local epochs of the same batch and lr.
        table = comparison(result, rows, epochs=rounds * local_epochs)
    _print_comparison(console, table, result.job)

    model_path = result.save(out / "model")
    audit = audit_rounds(world.ledger.store)
    world.ledger.checkpoint()
    report = verify_ledger(str(world.db_path))
    proven = sum(r.absent_proven for r in audit.rounds)
    withdrawn = sum(len(v) for v in world.story.withdrawn.values())
    console.print(f"[bold]Round audit[/bold]: {len(audit.rounds)} partner-rounds re-derived from the log, "
                  f"{'all match' if audit.ok else 'MISMATCH: ' + '; '.join(audit.problems[:3])}; "
                  f"{proven} non-membership proofs checked (refused, withdrawn or erased subjects; {withdrawn} withdrew)")  # fmt: skip
    status = "[green]OK[/green]" if report.ok else f"[red]FAILED[/red] {report.first_bad}"
    console.print(f"[bold]cohort ledger verify[/bold]: {status} — {report.entries_checked} entries, "
                  f"{report.signatures_checked} signatures, {report.checkpoints_checked} checkpoints, root "
                  f"{report.root.hex()[:16]}…")  # fmt: skip
    seconds = time.perf_counter() - started
    console.print(f"Ledger: {world.db_path}   Model: {model_path}   Keys: {world.keys_dir}")
    console.print(f"Audit it yourself: cohort ledger verify --db {world.db_path}   ({seconds:.0f} s)")
    world.ledger.close()
    return DemoResult(out, result, table, audit.ok, report.ok, seconds)


def _print_consents(console: Console, world) -> None:
    t = Table(title="Consents recorded in the ledger", show_lines=False)
    for col in ("partner", "allow churn/LTV", "refused", "other purpose only", "one category only", "withdrew", "erased"):
        t.add_column(col, justify="right" if col != "partner" else "left")
    s = world.story
    for p in world.desks:
        t.add_row(p, str(s.given[p]), str(s.refused[p]), str(s.other_purpose[p]), str(s.partial[p]),
                  str(len(s.withdrawn.get(p, []))), str(len(s.erased.get(p, []))))  # fmt: skip
    console.print(t)


def _print_rounds(console: Console, result: JobResult) -> None:
    t = Table(title=f"Rounds (checkpoint: tree size {result.job.tree_size})")
    for col in ("round", "partner", "eligible", "trained on", "ε so far", "train loss", "σ", "eval churn AUC"):
        t.add_column(col, justify="right" if col != "partner" else "left")
    for m in result.manifests:
        ev = result.evaluate_metrics.get(m.server_round)
        auc = f"{ev['churn_auc']:.3f}" if ev is not None and "churn_auc" in ev else "–"
        for p in sorted(m.partners, key=lambda p: p.partner_id):
            loss = result.train_metrics.get(m.server_round)
            t.add_row(str(m.server_round), p.partner_id, str(p.eligible_count), str(p.num_examples), f"{p.epsilon:.2f}",
                      f"{loss['train-loss']:.3f}" if loss is not None and "train-loss" in loss else "–",
                      f"{p.noise_multiplier:.2f}", auc)  # fmt: skip
    console.print(t)
    eps = ", ".join(f"{k}: {v:.2f}" for k, v in sorted(result.epsilon_by_partner.items()))
    console.print(f"ε spent per partner (max over rounds, δ={result.job.delta:g}): {eps}")


def _print_comparison(console: Console, rows: list[dict], job: Job) -> None:
    epochs = job.rounds * job.local_epochs
    t = Table(title=f"Held-out eligible users of each partner. Same training budget for every model: {epochs} epochs "
                    f"(federated: {job.rounds} rounds × {job.local_epochs} local), batch {job.batch_size}, lr "
                    f"{job.lr:g}; DP models ε={job.target_epsilon:g} per partner (clip {job.max_grad_norm:g}); "
                    "centralized: all partners' rows pooled, no DP")  # fmt: skip
    for col in ("partner", "model", "users", "churn AUC", "LTV Gini", "decile MAPE"):
        t.add_column(col, justify="left" if col in ("partner", "model") else "right")
    for r in rows:
        t.add_row(r["partner"], r["model"], str(int(r["n"])), f"{r['churn_auc']:.3f}", f"{r['ltv_gini']:.3f}",
                  f"{r['decile_mape']:.3f}")  # fmt: skip
    console.print(t)


def quiet_flower() -> None:
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
