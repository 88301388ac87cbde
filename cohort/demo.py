"""`cohort demo`: the whole flow in one process — consents, a federated DP job in Flower simulation, withdrawals and
an erasure between jobs, a second job that provably leaves those subjects out, the comparison table, the round
audit and the ledger verification."""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from client.consent_link import LinkByURL, link_url, open_link
from client.data import PartnerData, SyntheticPlatforms
from cohort.demo_print import print_comparison, print_consents, print_rights, print_rounds, rounds_shown, shown_every
from cohort.demo_rights import RightsEvidence, rights_evidence
from cohort.demo_world import CATEGORIES, CDNOW_CATEGORIES, PURPOSE, build_world, exercise_rights, record_consents
from consent.audit import audit_rounds
from consent.verify import verify_ledger
from server.job import Job
from server.ledger_hooks import LedgerBinding
from server.runner import JobResult

LIFETIME_EPSILON = 10.0
DATA_SETS = ("synthetic", "cdnow")
# The closing table's population on synthetic platforms (``evaluation_users``): ~0.3 s a platform to generate.
EVALUATION_USERS = 5000
EVALUATION_SEED_OFFSET = 1000


@dataclass(frozen=True)
class TrainingPlan:
    """Local training per round. Synthetic: ~870 training rows per partner, so batch 512 is ~2 Poisson batches an
    epoch (sample rate 0.5); each DP step averages ~440 clipped gradients against one noise draw, and 20 local
    epochs at lr 0.02 give each round enough steps to move the model (with 2 epochs of batch 128 at lr 0.003,
    cosine-decayed and Adam restarted every round, the weights hardly left their random start). CDNOW: ~6,300 rows
    per partner, the settings docs/benchmarks.md found best for it (batch 1024, lr 0.01, clip 30).
    Synthetic rounds keep the learning rate constant: a cosine decay to 0 inside every round left the DP models
    under-trained (docs/benchmarks.md, "Learning-rate schedule within a round")."""

    local_epochs: int
    batch_size: int
    lr: float
    max_grad_norm: float
    lr_schedule: str = "cosine"
    rounds: int = 3


PLANS = {
    "synthetic": TrainingPlan(local_epochs=20, batch_size=512, lr=2e-2, max_grad_norm=20.0, lr_schedule="constant"),
    "cdnow": TrainingPlan(local_epochs=10, batch_size=1024, lr=1e-2, max_grad_norm=30.0),
}
# Secure jobs (`--aggregation secure`, ``server.secure_aggregation``): a round is one DP-SGD step of the server over
# the union of the partners' rows, at the union's expected batch and the server's Adam rate; many more, much cheaper
# rounds. Synthetic: chosen with benchmarks/bench_demo_secure_plan.py over 8 seeds; clip 5 instead of the plain
# plan's 20 is most of it (60 rounds of batch 512 at clip 20 lost up to 0.19 Gini to local-only DP). CDNOW: the
# settings of the measured secure job (docs/benchmarks.md) with fewer steps, so the demo stays short.
SECURE_PLANS = {
    "synthetic": TrainingPlan(local_epochs=1, batch_size=1024, lr=3e-2, max_grad_norm=5.0, rounds=150),
    "cdnow": TrainingPlan(local_epochs=1, batch_size=2048, lr=1e-2, max_grad_norm=50.0, rounds=150),
}
AGGREGATIONS = ("plain", "secure")


@dataclass
class DemoResult:
    out: Path
    result: JobResult  # the second job's (the model the demo publishes and compares)
    first: JobResult
    comparison: list[dict]
    rights: RightsEvidence
    audit_ok: bool
    verify_ok: bool
    seconds: float


def demo_source(data: str, users_per_platform: int, seed: int) -> tuple[PartnerData, tuple[str, ...]]:
    """The partners' data and the categories the demo's jobs use."""
    if data == "synthetic":
        return SyntheticPlatforms(users_per_platform=users_per_platform, seed=seed), CATEGORIES
    if data == "cdnow":
        from client.cdnow import CDNOWPartners

        # Non-IID by first-purchase cohort; no fold held out: the demo's evaluation rows are each partner's own
        # hash-split local evaluation users, as with the synthetic platforms.
        return CDNOWPartners(by="cohort", test_fold=None), CDNOW_CATEGORIES
    raise ValueError(f"unknown demo data {data!r}; expected one of {', '.join(DATA_SETS)}")


def evaluation_users(source: PartnerData, categories) -> dict | None:
    """Synthetic platforms: ``EVALUATION_USERS`` new users of each platform (the same generator under another seed,
    never in the ledger) on which the closing table scores every model: a partner's ~200 held-out eligible users
    move a Gini by several hundredths between runs (docs/benchmarks.md). CDNOW has no more customers: None."""
    if not isinstance(source, SyntheticPlatforms):
        return None
    fresh = replace(source, users_per_platform=EVALUATION_USERS, seed=source.seed + EVALUATION_SEED_OFFSET)
    return {p: fresh.features(p, tuple(categories)) for p in source.partners}


def _population(fresh: dict | None) -> str:
    if fresh is None:
        return "Held-out eligible users of each partner"
    return f"{EVALUATION_USERS:,} new users of each platform (same generator, another seed; not in the ledger)"


def run_demo(out: Path | None = None, users_per_platform: int = 1500, rounds: int | None = None,
             epsilon: float = 3.0, seed: int = 7, console: Console | None = None, data: str = "synthetic",
             plan: TrainingPlan | None = None, aggregation: str = "plain") -> DemoResult:  # fmt: skip
    """``rounds``: per job (None: the plan's). ``aggregation``: "plain" (FedAvg of DP models) or "secure"."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {', '.join(AGGREGATIONS)}")
    console = console or Console()
    plan = plan or (SECURE_PLANS if aggregation == "secure" else PLANS)[data]
    rounds = rounds or plan.rounds
    started = time.perf_counter()
    out = Path(out or tempfile.mkdtemp(prefix="cohort-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    source, categories = demo_source(data, users_per_platform, seed)

    with console.status(f"creating keys, the ledger and three partners ({data} data)…"):
        world = build_world(out, source, seed, categories)
    with console.status("partners record their users' consents…"):
        record_consents(world, seed)
    print_consents(console, world)

    day = dt.date.today().isoformat()
    binding = LedgerBinding(world.ledger, world.coordinator, lifetime_epsilon=LIFETIME_EPSILON, day=day)
    url = link_url(str(world.db_path), str(world.keys_dir), LIFETIME_EPSILON, epsilon, day)
    stamp = int(time.time())

    def job(n: int) -> Job:
        return Job(job_id=f"demo-{stamp}-job{n}", purpose=PURPOSE, categories=categories, rounds=rounds,
                   target_epsilon=epsilon, min_partners=2, round_timeout_s=120.0, local_epochs=plan.local_epochs,
                   batch_size=plan.batch_size, lr=plan.lr, lr_schedule=plan.lr_schedule,
                   max_grad_norm=plan.max_grad_norm, seed=seed, aggregation=aggregation,
                   evaluate_every=shown_every(rounds))  # fmt: skip

    first = _train(console, job(1), binding, url, source, "job 1")
    print_rounds(console, first)

    with console.status("between jobs: some users withdraw, one asks for erasure…"):
        exercise_rights(world, seed=seed + 4)
    second = _train(console, job(2), binding, url, source, "job 2 (after the withdrawals and the erasure)")
    print_rounds(console, second, before=first)

    with console.status("training comparison models (local-only per partner, centralized)…"):
        from cohort.compare import comparison, partner_rows

        rows = partner_rows(open_link(url), source, second)
        # Plain: the same budget as each federated partner, its ε and rounds x local epochs of the same batch and
        # lr. Secure: a step a round has no local epochs, so the baselines train as in the plain demo.
        base = PLANS[data] if aggregation == "secure" else replace(plan, rounds=rounds)
        recipe = replace(second.job, batch_size=base.batch_size, lr=base.lr, lr_schedule=base.lr_schedule,
                         max_grad_norm=base.max_grad_norm)  # fmt: skip
        epochs = base.rounds * base.local_epochs
        fresh = evaluation_users(source, second.job.categories)
        table = comparison(second, rows, epochs=epochs, recipe=recipe, evaluation=fresh)
    print_comparison(console, table, second.job, recipe, epochs, population=_population(fresh))

    model_path = second.save(out / "model")
    audit = audit_rounds(world.ledger.store)
    rights = rights_evidence(binding, world.story.left_refs, first, second)
    world.ledger.checkpoint()
    report = verify_ledger(str(world.db_path))
    print_rights(console, audit, rights, world.story)
    status = "[green]OK[/green]" if report.ok else f"[red]FAILED[/red] {report.first_bad}"
    console.print(f"[bold]cohort ledger verify[/bold]: {status} — {report.entries_checked} entries, "
                  f"{report.signatures_checked} signatures, {report.checkpoints_checked} checkpoints, root "
                  f"{report.root.hex()[:16]}…")  # fmt: skip
    seconds = time.perf_counter() - started
    console.print(f"Ledger: {world.db_path}   Model: {model_path}   Keys: {world.keys_dir}")
    console.print(f"Audit it yourself: cohort ledger verify --db {world.db_path}   ({seconds:.0f} s)")
    world.ledger.close()
    return DemoResult(out, second, first, table, rights, audit.ok and rights.ok, report.ok, seconds)


def _train(console: Console, job: Job, binding: LedgerBinding, url: str, source: PartnerData, title: str) -> JobResult:
    """One federated job in Flower simulation: a progress bar over its rounds, a line as each shown round closes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from server.simulation import simulate_job

    hooks = binding.hooks()
    how = "secure sum (distributed DP: one DP-SGD step a round)" if job.aggregation == "secure" else "FedAvg"
    console.print(f"[bold]Federated {title}[/bold] {job.job_id}: purpose {job.purpose}, categories "
                  f"{', '.join(job.categories)}, {job.rounds} rounds, target ε={job.target_epsilon:g} "
                  f"(δ={job.delta:g}), {how}, {len(source.partners)} partners (Flower simulation)")  # fmt: skip
    shown = set(rounds_shown(job.rounds))
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:  # fmt: skip
        task = progress.add_task("starting Ray and the partners' SuperNodes, preflight…", total=job.rounds)

        def on_round(manifest):  # called from the ServerApp's thread as each round closes
            hooks.on_round(manifest)
            done = manifest.server_round
            void = (manifest.aggregation or {}).get("voided")
            if void:
                progress.console.print(f"  round {done}/{job.rounds} void, the model keeps its weights: {void}")
            elif done in shown:
                parts = sorted(manifest.partners, key=lambda p: p.partner_id)
                eps = ", ".join(f"{p.partner_id} ε={p.epsilon:.2f}" for p in parts)
                progress.console.print(f"  round {done}/{job.rounds} closed: {eps}; manifest appended to the ledger")
            progress.update(task, completed=done, description=f"round {min(done + 1, job.rounds)}/{job.rounds}: "
                            "partners train with DP-SGD" if done < job.rounds else "closing the job")  # fmt: skip

        return simulate_job(job, len(source.partners), ledger=LinkByURL(url), data=source,
                            hooks=replace(hooks, on_round=on_round), cpus=os.cpu_count())  # fmt: skip


def quiet_flower() -> None:
    """The demo speaks for itself: Flower's notice that ``run_simulation`` is deprecated (it is still the only
    in-process engine, see ``server.simulation``) and Ray's accelerator tip would be most of its output."""
    logging.getLogger("flwr").setLevel(logging.ERROR)
    logging.getLogger("ray").setLevel(logging.WARNING)
    # Only changes what Ray does with GPU env vars when a task asks for 0 GPUs, which is every task here.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
