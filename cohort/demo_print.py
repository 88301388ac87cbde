"""The demo's tables: consents recorded, rounds per partner, the held-out comparison, and what the audit proved."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cohort.demo_rights import RightsEvidence
from consent.audit import AuditReport
from server.job import Job, evaluates
from server.runner import JobResult


def print_consents(console: Console, world) -> None:
    t = Table(title="Consents recorded in the ledger", show_lines=False)
    for col in ("partner", "allow churn/LTV", "refused", "other purpose only", "one category only"):
        t.add_column(col, justify="right" if col != "partner" else "left")
    s = world.story
    for p in world.desks:
        t.add_row(p, str(s.given[p]), str(s.refused[p]), str(s.other_purpose[p]), str(s.partial[p]))
    console.print(t)


SHOWN_ROUNDS = 6  # a job of more rounds (a secure one: hundreds) shows and evaluates ~this many, evenly spaced


def shown_every(rounds: int) -> int:
    """How often the demo shows (and has the partners evaluate) a round: every round of a short job, of a long one
    every ``ceil(rounds / SHOWN_ROUNDS)``-th. Federated evaluation is most of a one-step round's time, and a round
    the demo does not show would be evaluated for nothing."""
    return 1 if rounds <= SHOWN_ROUNDS else -(-rounds // SHOWN_ROUNDS)


def rounds_shown(rounds: int) -> list[int]:
    """The rounds the demo prints, exactly those a job of ``evaluate_every=shown_every(rounds)`` evaluates: every
    ``shown_every``-th and the last."""
    return [r for r in range(1, rounds + 1) if evaluates(r, rounds, shown_every(rounds))]


def print_rounds(console: Console, result: JobResult, before: JobResult | None = None) -> None:
    """Per round and partner: eligible subjects, rows trained on, ε so far, that partner's own train loss (not in a
    secure job: it would leak what DP protects) and its federated-evaluation AUC of the global model on its local
    evaluation users."""
    shown = set(rounds_shown(len(result.manifests)))
    title = f"{result.job.job_id} rounds (checkpoint: tree size {result.job.tree_size})"
    if len(shown) < len(result.manifests):
        title += f"; {len(shown)} of {len(result.manifests)} rounds shown, each was appended to the ledger"
    t = Table(title=title)
    for col in ("round", "partner", "eligible", "trained on", "ε so far", "σ", "train loss", "eval churn AUC"):
        t.add_column(col, justify="right" if col != "partner" else "left")
    for m in (m for m in result.manifests if m.server_round in shown):
        train = result.partner_train_metrics.get(m.server_round, {})
        evaluation = result.partner_evaluate_metrics.get(m.server_round, {})
        for p in sorted(m.partners, key=lambda p: p.partner_id):
            loss = train.get(p.partner_id, {}).get("train-loss")
            auc = evaluation.get(p.partner_id, {}).get("churn_auc")
            t.add_row(str(m.server_round), p.partner_id, str(p.eligible_count), str(p.num_examples), f"{p.epsilon:.2f}",
                      f"{p.noise_multiplier:.2f}", "–" if loss is None else f"{loss:.3f}",
                      "–" if auc is None else f"{auc:.3f}")  # fmt: skip
    console.print(t)
    eps = ", ".join(f"{k}: {v:.2f}" for k, v in sorted(result.epsilon_by_partner.items()))
    console.print(f"ε spent per partner (max over rounds, δ={result.job.delta:g}): {eps}")
    trust = result.manifests[-1].aggregation if result.manifests else None
    if trust:  # a secure job: what its manifests state about the sum
        console.print(f"Secure sum: noise σ {trust['noise_multiplier']:.2f} in total, "
                      f"{trust['partner_noise_multiplier']:.2f} from each partner; the server saw double-masked "
                      f"updates only. Reading one would take the server and {trust['colluders_to_unmask']} colluding "
                      f"partner(s), and leave that partner's users ε {trust['epsilon_if_colluding']:.1f}")  # fmt: skip
    if before is not None:
        was, now = _eligible_counts(before), _eligible_counts(result)
        change = ", ".join(f"{p} {was.get(p, 0)} → {now[p]}" for p in sorted(now))
        console.print(f"Eligible subjects, job 1 → job 2 (fixed at a new checkpoint): {change}")


def print_comparison(console: Console, rows: list[dict], job: Job, recipe: Job, epochs: int,
                     population: str = "Held-out eligible users of each partner") -> None:  # fmt: skip
    """``recipe``: how the local-only and centralized models trained (``epochs`` epochs); ``population``: whom the
    table scores them on."""
    if job.aggregation == "secure":
        how = (f"Federated: {job.rounds} secure rounds, one DP-SGD step each (union batch {job.batch_size}, server "
               f"lr {job.lr:g}, clip {job.max_grad_norm:g}); the others train as in the plain demo: {epochs} epochs")
    else:
        how = (f"Same training budget for every model: {epochs} epochs (federated: {job.rounds} rounds × "
               f"{job.local_epochs} local)")  # fmt: skip
    t = Table(title=f"{population}. {how}, batch {recipe.batch_size}, lr {recipe.lr:g} "
                    f"({recipe.lr_schedule}); DP models ε={job.target_epsilon:g} per partner (clip "
                    f"{recipe.max_grad_norm:g}); centralized: all partners' rows pooled, no DP")  # fmt: skip
    for col in ("partner", "model", "users", "churn AUC", "LTV Gini", "decile MAPE"):
        t.add_column(col, justify="left" if col in ("partner", "model") else "right")
    for r in rows:
        t.add_row(r["partner"], r["model"], str(int(r["n"])), f"{r['churn_auc']:.3f}", f"{r['ltv_gini']:.3f}",
                  f"{r['decile_mape']:.3f}")  # fmt: skip
    console.print(t)
    console.print("'calibrated': the federated model as each partner serves it, its spend predictions mapped by a "
                  "monotone calibration the partner fits on its own training rows (same ranking, its own dollar "
                  "level); the calibration never leaves the partner, so it spends none of the shared model's ε.")


def print_rights(console: Console, audit: AuditReport, rights: RightsEvidence, story) -> None:
    withdrew = sum(len(v) for v in story.withdrawn.values())
    erased = sum(len(v) for v in story.erased.values())
    console.print(f"[bold]Round audit[/bold]: {len(audit.rounds)} partner-rounds re-derived from the log, "
                  f"{'all match' if audit.ok else 'MISMATCH: ' + '; '.join(audit.problems[:3])}; "
                  f"{sum(r.absent_proven for r in audit.rounds)} non-membership proofs checked (subjects who "
                  "refused, withdrew or were erased before a round's checkpoint)")  # fmt: skip
    verdict = "[green]OK[/green]" if rights.ok else "[red]FAILED[/red] " + "; ".join(rights.problems[:3])
    console.print(f"[bold]Between the jobs[/bold] {withdrew} users withdrew and {erased} was erased: "
                  f"{rights.used_before}/{rights.subjects} proven IN job 1's committed eligible sets (inclusion "
                  f"proofs), {rights.absent_after}/{rights.subjects} proven ABSENT from job 2's (non-membership "
                  f"proofs) {verdict}")  # fmt: skip


def _eligible_counts(result: JobResult) -> dict[str, int]:
    return {p.partner_id: p.eligible_count for m in result.manifests for p in m.partners}
