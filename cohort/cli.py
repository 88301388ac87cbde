"""`cohort`: the command line. Each command is a thin shell over consent/, models/, client/ and server/."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Cohort: federated churn/LTV training with consent you can prove.", no_args_is_help=True)
keys_app = typer.Typer(help="Create and inspect Ed25519 keys.", no_args_is_help=True)
ledger_app = typer.Typer(help="Run and verify the consent ledger.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")

console = Console()


@keys_app.command("init")
def keys_init(
    directory: Path = typer.Option(Path(".cohort/keys"), "--dir", help="Where to write the keys."),
    partners: str = typer.Option("partner-a,partner-b,partner-c", help="Comma-separated partner ids."),
    force: bool = typer.Option(False, help="Overwrite existing keys."),
) -> None:
    """Create operator, coordinator, auditor and partner keys (and each partner's HMAC secret)."""
    from consent.keyring import init_keys

    made = init_keys(directory, [p.strip() for p in partners.split(",") if p.strip()], force=force)
    for ident in made:
        console.print(f"{ident.role:<12} {ident.name:<16} key id {ident.key_id}")
    console.print(f"keys written to {directory} (private keys mode 0600)")


@ledger_app.command("verify")
def ledger_verify(
    db: str = typer.Option(..., help="Ledger database URL or SQLite file path."),
    workers: int = typer.Option(2, help="Processes for signature checks (0 = in-process)."),
) -> None:
    """Recompute every leaf and root, check every signature and checkpoint; exit 1 naming the first bad entry."""
    from consent.verify import verify_ledger

    with console.status("verifying the ledger…"):
        report = verify_ledger(db, workers=workers)
    if report.ok:
        console.print(
            f"[green]OK[/green] {report.entries_checked} entries, {report.signatures_checked} signatures, "
            f"{report.checkpoints_checked} checkpoints; root {report.root.hex()} ({report.seconds:.1f} s)"
        )
        return
    from rich.markup import escape

    index, reason = report.first_bad
    # Reasons quote stored bytes, which an attacker chose: never let them be read as markup.
    console.print(f"[red]TAMPERED[/red] first bad: {escape(reason)}")
    for _, problem in report.problems[1:10]:
        console.print(f"  also: {escape(problem)}")
    raise typer.Exit(code=1)


@ledger_app.command("serve")
def ledger_serve(
    db: str = typer.Option(..., help="Ledger database URL or SQLite file path."),
    port: int = typer.Option(50051, help="Port to listen on."),
    keys: Path = typer.Option(Path(".cohort/keys"), help="Directory holding operator.key (from `cohort keys init`)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    tls_cert: Path = typer.Option(None, help="PEM certificate for TLS."),
    tls_key: Path = typer.Option(None, help="PEM private key for TLS."),
    insecure: bool = typer.Option(False, help="Serve without TLS on a non-loopback host (development only)."),
) -> None:
    """Serve the ConsentLedger gRPC API (with health checking and reflection).

    Plaintext is served on a loopback host (127.0.0.1, localhost, ::1) with a warning; anywhere else it needs TLS
    (--tls-cert and --tls-key) or an explicit --insecure."""
    from rich.markup import escape

    from consent.service.server import choose_transport, run_forever

    try:
        tls, warning = choose_transport(host, tls_cert, tls_key, insecure)
    except ValueError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(code=2)
    if warning:
        typer.echo(warning, err=True)
    run_forever(db_url=db, port=port, keys_dir=str(keys), host=host, tls=tls)


@app.command()
def demo(
    out: Path = typer.Option(None, help="Where to write the ledger, keys and model (default: a new temp dir)."),
    data: str = typer.Option("synthetic", help="Partners' data: 'synthetic' (three differing social-commerce "
                             "platforms) or 'cdnow' (the CDNOW purchase log split into three non-IID partners)."),
    users: int = typer.Option(1500, help="Users per synthetic platform (ignored for --data cdnow)."),
    rounds: int = typer.Option(None, help="Federated rounds per job (default: 3, or 150 secure rounds on "
                               "synthetic / CDNOW data)."),
    aggregation: str = typer.Option("plain", help="'plain' (FedAvg of each partner's DP model) or 'secure' "
                                    "(distributed DP over a secure sum: one DP-SGD step a round)."),
    epsilon: float = typer.Option(3.0, help="Each job's target ε per partner (δ = 1e-5)."),
    seed: int = typer.Option(7, help="Seed of the synthetic platforms and the consent decisions."),
) -> None:
    """Run the whole flow once: consents → federated DP job → withdrawals and an erasure → a second job that leaves
    them out → comparison → audit → ledger verify."""
    from cohort.demo import AGGREGATIONS, DATA_SETS, quiet_flower, run_demo

    if data not in DATA_SETS:
        console.print(f"[red]unknown --data {data!r}[/red]: expected one of {', '.join(DATA_SETS)}")
        raise typer.Exit(code=2)
    if aggregation not in AGGREGATIONS:
        console.print(f"[red]unknown --aggregation {aggregation!r}[/red]: expected one of {', '.join(AGGREGATIONS)}")
        raise typer.Exit(code=2)
    quiet_flower()
    result = run_demo(out, users_per_platform=users, rounds=rounds, epsilon=epsilon, seed=seed, console=console,
                      data=data, aggregation=aggregation)  # fmt: skip
    if not (result.audit_ok and result.verify_ok):
        raise typer.Exit(code=1)


@app.command("train")
def train_job(
    job: Path = typer.Option(..., "--job", help="The job file (see examples/job.toml)."),
    dry_run: bool = typer.Option(False, help="Validate and print the flwr command without running it."),
) -> None:
    """Submit a job to a running Flower deployment with the consent ledger wired in (via `flwr run`)."""
    import subprocess

    from cohort.train import JobFileError, describe, flwr_command, load_job_file

    try:
        cmd = flwr_command(load_job_file(job))
    except JobFileError as exc:
        from rich.markup import escape

        console.print(f"[red]job refused[/red]: {escape(str(exc))}")
        raise typer.Exit(code=2)
    console.print(f"submitting: {describe(cmd)}")
    if dry_run:
        return
    raise typer.Exit(code=subprocess.call(cmd))


bench_app = typer.Typer(help="Benchmarks that print the figures in docs/benchmarks.md.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("quality")
def bench_quality(
    quick: bool = typer.Option(False, help="Fewer folds and epochs (a smoke run, not the recorded figures)."),
    no_doc: bool = typer.Option(False, help="Print only; do not rewrite docs/benchmarks.md."),
) -> None:
    """CDNOW 39/39-week and synthetic-platform quality tables: BG/NBD, trees, MLP non-private and DP."""
    from models.quality import main as quality_main

    args = (["--quick"] if quick else []) + (["--no-doc"] if no_doc else [])
    raise typer.Exit(code=quality_main(args))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
