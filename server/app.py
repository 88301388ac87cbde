"""The ServerApp the coordinator runs: one job per Flower run.

``app`` (the ``serverapp`` component of the Flower App) reads the job from the run config
(``[tool.flwr.app.config]``, ``flwr run --run-config``); ``make_server_app(job, hooks)`` builds the same app around
a given job and ledger hooks (the demo, tests). With ``output-dir`` in the run config the result is also written
there (``result.json``, ``model.npz``).

When the run config names no ledger (the pyproject defaults: a bare ``flwr run .``), ``app`` builds an embedded one
next to the result (``output-dir``, else a new temporary directory) and prints where: see ``server.embedded``.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.embedded import embedded_ledger, wants_embedded_ledger
from server.job import Job
from server.prompt_grid import prompt
from server.runner import JobHooks, JobResult, run_job

log = logging.getLogger(__name__)


def make_server_app(
    job: Job | None = None,
    hooks: JobHooks | None = None,
    results: list[JobResult] | None = None,
) -> ServerApp:
    """A ServerApp that runs ``job`` (``None``: from the run config); each finished job is appended to ``results``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        grid = prompt(grid)  # Flower's own send_and_receive sleeps 3 s between pulls in a deployment
        the_job = job or Job.from_run_config(dict(context.run_config))
        output_dir = str(context.run_config.get("output-dir", "") or "")
        embedded = None
        if job is None and hooks is None and wants_embedded_ledger(context.run_config):
            # A bare `flwr run .`: no ledger configured, so set up the demo's self-contained one (server.embedded).
            embedded = embedded_ledger(grid, the_job, context.run_config, say=_say)
            the_job, the_hooks, output_dir = embedded.job, embedded.hooks, str(embedded.out)
        else:
            the_hooks = hooks or hooks_from_run_config(context)
        result = run_job(grid, the_job, the_hooks)
        if results is not None:
            results.append(result)
        if output_dir:
            result.save(output_dir)
        if embedded is not None:
            _say(embedded.summary(result))

    return server_app


def hooks_from_run_config(context: Context) -> JobHooks:
    """Ledger hooks for a run launched by ``flwr run``, from the run config:

    * ``ledger-target`` (host:port of the ConsentLedger service; ``ledger-ca`` for TLS) and ``keys-dir`` holding
      ``coordinator.key``: the coordinator's signed gRPC client — the deployment path;
    * or ``ledger-db`` (a database URL) and ``keys-dir`` holding ``operator.key``: the ledger in-process;
    * neither, but ``tree-size`` (and the partners' ``ledger-url``) fixed: no ledger on the server side, manifests
      are only saved;
    * nothing at all (no ``ledger-target``/``ledger-db``/``ledger-url``, ``tree-size = 0``): ``make_server_app``'s
      app does not come here but builds an embedded ledger (``server.embedded``), the default of ``flwr run .``.
    ``lifetime-epsilon`` (> 0) caps every subject's ε across jobs."""
    run = context.run_config
    target, db = str(run.get("ledger-target", "") or ""), str(run.get("ledger-db", "") or "")
    if not target and not db:
        return JobHooks()
    from consent.keys import Identity
    from server.ledger_hooks import LedgerBinding

    keys_dir = str(run.get("keys-dir", "") or "")
    if not keys_dir:
        raise ValueError("the run config names a ledger but no keys-dir with the coordinator's key")
    coordinator = Identity.load(keys_dir, "coordinator")
    if target:
        from consent.client import LedgerClient

        ledger = LedgerClient(target, coordinator, str(run.get("ledger-ca", "") or "") or None)
    else:
        from consent.ledger import Ledger

        ledger = Ledger.open(db, Identity.load(keys_dir, "operator"))
    cap = float(run.get("lifetime-epsilon", 0.0) or 0.0)
    return LedgerBinding(ledger, coordinator, lifetime_epsilon=cap if cap > 0 else None).hooks()


def _say(line: str) -> None:
    print(line, flush=True)  # the ServerApp's output is what `flwr run --stream` and `flwr log` show
    log.info("%s", line)


app = make_server_app()
