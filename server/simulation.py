"""Running a job in Flower's in-process simulation (Ray): what ``cohort demo`` and the tests use.

One virtual SuperNode per partner (``partition-id`` i is partner i of the data source), each ClientApp with one CPU
so a 2-core machine runs two partners at a time. The ServerApp runs in a thread of this process, so hooks and the
returned ``JobResult`` are ordinary Python objects; the ClientApp (with its ledger and data source) is pickled to
the Ray actors, so those must be picklable (or named by URL and opened in each actor).

Flower 1.42 marks ``run_simulation`` as deprecated in favour of ``flwr run``; it is still the only in-process entry.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import replace

from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from client.app import make_client_app
from client.data import PartnerData
from client.eligibility import Ledger
from server.app import make_server_app
from server.job import Job, JobStopped
from server.runner import JobHooks, JobResult

log = logging.getLogger(__name__)


def simulate_job(
    job: Job,
    num_partners: int,
    *,
    ledger: Ledger | None = None,
    data: PartnerData | None = None,
    hooks: JobHooks | None = None,
    client_app: ClientApp | None = None,
    cpus: int | None = None,
    verbose: bool = False,
) -> JobResult:
    """Run ``job`` with ``num_partners`` simulated partners; raise ``JobStopped`` if it stops early."""
    results: list[JobResult] = []
    if job.expected_partners == 0:
        job = replace(job, expected_partners=num_partners)
    server_app = make_server_app(job=job, hooks=hooks, results=results)
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus or os.cpu_count() or 1, "num_gpus": 0, "include_dashboard": False},
    }
    # Each simulated partner keeps its privacy spend in a file as well as in Context.state: a late actor and the next
    # round's actor of one partner then see each other's steps (client.privacy). Gone with the run.
    with tempfile.TemporaryDirectory(prefix="cohort-sim-spend-") as spend_dir, warnings.catch_warnings():
        client_app = client_app or make_client_app(ledger=ledger, data=data, state_root=spend_dir)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_partners,
            backend_config=backend_config,
            verbose_logging=verbose,
        )
    if not results:
        raise JobStopped(f"job {job.job_id}: the simulation ended without a result (see the Flower log)")
    return results[0]
