"""The ServerApp the coordinator runs: one job per Flower run.

``app`` (the ``serverapp`` component of the Flower App) reads the job from the run config
(``[tool.flwr.app.config]``, ``flwr run --run-config``); ``make_server_app(job, hooks)`` builds the same app around
a given job and ledger hooks (the demo, tests). With ``output-dir`` in the run config the result is also written
there (``result.json``, ``model.npz``).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.job import Job
from server.runner import JobHooks, JobResult, run_job


def make_server_app(
    job: Job | None = None,
    hooks: JobHooks | None = None,
    results: list[JobResult] | None = None,
) -> ServerApp:
    """A ServerApp that runs ``job`` (``None``: from the run config); each finished job is appended to ``results``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        the_job = job or Job.from_run_config(dict(context.run_config))
        the_hooks = hooks or hooks_from_run_config(context)
        result = run_job(grid, the_job, the_hooks)
        if results is not None:
            results.append(result)
        output_dir = str(context.run_config.get("output-dir", "") or "")
        if output_dir:
            result.save(output_dir)

    return server_app


def hooks_from_run_config(context: Context) -> JobHooks:
    """Ledger hooks for a run launched by ``flwr run``. Until the ledger is wired in here, the run config must fix
    the checkpoint itself (``tree-size``) and manifests are only logged and saved with the result."""
    return JobHooks()


app = make_server_app()
