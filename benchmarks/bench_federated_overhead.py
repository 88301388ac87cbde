"""What Cohort's consent, ledger and DP machinery costs on top of plain Flower: wall time of one Cohort job over a
bare Flower FedAvg run of the same model, data and rounds, all measured in this one process.

Three runs, repeated ``--repeats`` times in interleaved order (bare, Cohort DP off, Cohort DP on, bare, ...) so a
change in the shared machine's load hits every mode alike; the MEDIAN wall time of each mode is reported:

* bare Flower: a minimal ``ClientApp`` (@train: load the partner's rows, ``models.train.train`` without DP, return
  the weights and ``num-examples``) and ``ServerApp`` (Flower's ``FedAvg``, every node every round, no evaluation),
  ``run_simulation`` with the same backend config as ``server.simulation.simulate_job``;
* Cohort, DP off: ``simulate_job`` with the real consent ledger (SQLite, signed checkpoint, ``LedgerBinding`` hooks:
  preflight, ``job.started``, one signed ``round.manifest`` per round, budget charge and ``model.published``), the
  partners reading eligibility through ``client.consent_link`` (HMAC'd user ids, eligible set and its Merkle root
  every round), manifests, screening. Cohort has no DP-off switch (a job always states an ε target and every
  partner enforces it), so this mode swaps ``client.app.train_privately`` (and the σ calibration of preflight) for
  the same non-private ``models.train.train`` call as the bare app, inside each Ray actor of THIS benchmark only;
  the ε reported is then 0. Nothing in the package changes.
* Cohort, DP on: the same job, unmodified (Opacus DP-SGD, σ calibrated for the whole job, accountant per round).

Wall time = the whole ``run_simulation`` / ``simulate_job`` call, Ray start and shutdown INCLUDED in every mode (each
call starts and stops its own Ray). Also reported: the time inside the ServerApp (from its ``main`` starting to its
return, which still includes waiting for the virtual SuperNodes to come up).

Data: ``SyntheticPlatforms(users_per_platform=--users, seed=7)`` (the demo's three platforms); every user consents
(so both apps train on exactly the same rows), no local evaluation split, no federated evaluation.

    python benchmarks/bench_federated_overhead.py [--users 1500] [--rounds 3] [--repeats 3] [--doc]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_federated_cdnow import all_consenting_ledger, load_average, machine, update_subsection  # noqa: E402

CATEGORIES = ("behavioural", "transaction")
PURPOSE = "churn_ltv_modelling"
TARGET_RATIO = 1.25


# ---- bare Flower ----------------------------------------------------------------------------------------------------


def bare_apps(data, job, seed: int):
    """A minimal Flower App: FedAvg over ``ChurnLTVNet`` trained with ``models.train.train`` (no DP, no consent)."""
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    client = ClientApp()

    @client.train()
    def train_fn(msg: Message, context: Context) -> Message:
        from models.nets import ChurnLTVNet
        from models.train import train

        torch.set_num_threads(1)
        partner = data.partners[int(context.node_config["partition-id"])]
        rows = data.features(partner, CATEGORIES)
        model = ChurnLTVNet(rows.X.shape[1], hidden=job.hidden)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        train(model, rows.X, rows.churn, rows.ltv, epochs=job.local_epochs, batch_size=job.batch_size, lr=job.lr,
              seed=int.from_bytes(os.urandom(4), "little") >> 1)  # fmt: skip
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"num-examples": len(rows.ltv)})})  # fmt: skip
        return Message(content=content, reply_to=msg)

    timings: dict[str, float] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        from models.nets import ChurnLTVNet

        timings["main_start"] = time.perf_counter()
        n_features = data.features(data.partners[0], CATEGORIES).X.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ChurnLTVNet(n_features, hidden=job.hidden, ltv_loc_init=job.ltv_loc_init)
        n = len(data.partners)
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=job.rounds,
                       timeout=job.round_timeout_s)  # fmt: skip
        timings["main_end"] = time.perf_counter()

    return server, client, timings


def run_bare(data, job) -> dict:
    from flwr.simulation import run_simulation

    server, client, timings = bare_apps(data, job, job.seed)
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "num_gpus": 0, "include_dashboard": False},
    }
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        run_simulation(server_app=server, client_app=client, num_supernodes=len(data.partners),
                       backend_config=backend_config)  # fmt: skip
    wall = time.perf_counter() - started
    if "main_end" not in timings:
        raise RuntimeError("the bare Flower run did not finish (see the Flower log)")
    return {"wall": wall, "server": timings["main_end"] - timings["main_start"]}


# ---- Cohort -------------------------------------------------------------------------------------------------------


def _plain_round(model, rows, job, state, state_dir=None):
    """Stand-in for ``client.privacy.train_privately`` with DP off: the same ``models.train.train`` call as the
    bare app, and a spend of 0."""
    import math
    import secrets

    from client.privacy import NoisePlan, PrivateRound
    from models.train import train

    n = int(rows.X.shape[0])
    batch = max(1, min(job.batch_size, n))
    report = train(model, rows.X, rows.churn, rows.ltv, epochs=job.local_epochs, batch_size=batch, lr=job.lr,
                   seed=secrets.randbits(31))  # fmt: skip
    plan = NoisePlan(0.0, 1.0 / math.ceil(n / batch), report.steps, batch)
    # The manifest part reads the DP fields of the report: no noise, the job's (unused) clip and delta.
    report.noise_multiplier, report.sample_rate, report.max_grad_norm = 0.0, plan.sample_rate, job.max_grad_norm
    report.delta, report.accountant = job.delta, job.accountant
    return PrivateRound(report=report, plan=plan, epsilon=0.0, epsilon_round=0.0, rounds_trained=job.server_round)


def _no_noise_plan(state, n_rows, job):
    import math

    from client.privacy import NoisePlan

    batch = max(1, min(job.batch_size, n_rows))
    steps = math.ceil(n_rows / batch)
    return NoisePlan(0.0, 1.0 / steps, job.local_epochs * steps, batch)


def dp_off_client_app(ledger, data):
    """The real Cohort ClientApp, built inside whichever process (Ray actor) runs it AFTER ``client.app``'s
    ``train_privately`` / ``noise_plan`` were swapped for non-private stand-ins there. (A ClientApp built here and
    pickled to the actor would carry its own copy of those globals, and the swap would not reach it.)"""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def real():
        import client.app as cohort_app

        cohort_app.train_privately = _plain_round
        cohort_app.noise_plan = _no_noise_plan
        return cohort_app.make_client_app(ledger=ledger, data=data)

    @app.train()
    def train_fn(msg: Message, context: Context) -> Message:
        return real()(msg, context)

    @app.evaluate()
    def evaluate_fn(msg: Message, context: Context) -> Message:
        return real()(msg, context)

    @app.query()
    def query_fn(msg: Message, context: Context) -> Message:
        return real()(msg, context)

    return app


def run_cohort(world, data, job, dp: bool) -> dict:
    from dataclasses import replace

    from client.app import make_client_app
    from client.consent_link import LinkByURL, link_url
    from server.ledger_hooks import LedgerBinding
    from server.runner import JobHooks
    from server.simulation import simulate_job

    job = replace(job, job_id=f"overhead-{'dp' if dp else 'nodp'}-{time.time_ns()}")
    day = dt.date.today().isoformat()
    binding = LedgerBinding(world.ledger, world.coordinator, lifetime_epsilon=None, day=day)
    link = LinkByURL(link_url(str(world.db_path), str(world.keys_dir), None, job.target_epsilon, day))
    base = binding.hooks()
    marks: dict[str, float] = {}

    def checkpoint(j):
        marks["main_start"] = time.perf_counter()  # the first thing run_job does
        return base.checkpoint(j)

    def on_finish(result):
        base.on_finish(result)
        marks["main_end"] = time.perf_counter()

    hooks = JobHooks(checkpoint=checkpoint, preflight=base.preflight, on_round=base.on_round, on_finish=on_finish)
    app = make_client_app(ledger=link, data=data) if dp else dp_off_client_app(link, data)
    started = time.perf_counter()
    result = simulate_job(job, len(data.partners), hooks=hooks, client_app=app, cpus=os.cpu_count())
    wall = time.perf_counter() - started
    return {"wall": wall, "server": marks["main_end"] - marks["main_start"], "epsilon": result.epsilon_max,
            "rounds": len(result.manifests), "entries": len(binding.appended)}


# ---- main ---------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1500, help="users per synthetic platform")
    parser.add_argument("--rounds", type=int, default=None, help="default: server.job.Job's default")
    parser.add_argument("--local-epochs", type=int, default=None, help="default: server.job.Job's default")
    parser.add_argument("--batch-size", type=int, default=None, help="default: server.job.Job's default")
    parser.add_argument("--lr", type=float, default=None, help="default: server.job.Job's default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--doc", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from client.data import SyntheticPlatforms
    from cohort.demo import quiet_flower
    from server.job import Job

    torch.set_num_threads(1)
    quiet_flower()
    load_start = load_average()
    data = SyntheticPlatforms(users_per_platform=args.users, seed=7)
    defaults = Job(job_id="defaults")
    job = Job(job_id="overhead", purpose=PURPOSE, categories=CATEGORIES, rounds=args.rounds or defaults.rounds,
              local_epochs=args.local_epochs or defaults.local_epochs, batch_size=args.batch_size or defaults.batch_size,
              lr=args.lr or defaults.lr, min_partners=len(data.partners), eval_fraction=0.0, evaluate_every=0,
              round_timeout_s=300.0, seed=7)  # fmt: skip
    out = Path(tempfile.mkdtemp(prefix="cohort-overhead-"))
    users = {p: [str(u) for u in data.features(p, CATEGORIES).user_ids] for p in data.partners}
    world = all_consenting_ledger(out, data, users, CATEGORIES)
    print(f"data: {sum(map(len, users.values()))} users on {len(data.partners)} platforms (all consenting); job: "
          f"{job.rounds} rounds x {job.local_epochs} local epochs, batch {job.batch_size}, lr {job.lr:g}; "
          f"load average {load_start}", flush=True)
    runs: dict[str, list[dict]] = {"bare": [], "cohort_nodp": [], "cohort_dp": []}
    for rep in range(args.repeats):
        for mode in runs:
            if mode == "bare":
                r = run_bare(data, job)
            else:
                r = run_cohort(world, data, job, dp=(mode == "cohort_dp"))
                if (r["epsilon"] > 0) != (mode == "cohort_dp"):
                    raise RuntimeError(f"{mode}: ε max {r['epsilon']} — the DP switch did not take effect")
            r["load"] = os.getloadavg()[0]
            runs[mode].append(r)
            print(f"  repeat {rep + 1}: {mode:12s} wall {r['wall']:6.1f} s, inside ServerApp {r['server']:6.1f} s, "
                  f"load {r['load']:.2f}" + (f", ε max {r['epsilon']:.2f}" if "epsilon" in r else ""), flush=True)
    world.ledger.close()
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("wall", "server")} for m, rs in runs.items()}
    ratio = med["cohort_nodp"]["wall"] / med["bare"]["wall"]
    ratio_server = med["cohort_nodp"]["server"] / med["bare"]["server"]
    dp_ratio = med["cohort_dp"]["wall"] / med["cohort_nodp"]["wall"]
    dp_ratio_server = med["cohort_dp"]["server"] / med["cohort_nodp"]["server"]
    load_end = load_average()
    lines = [
        f"Command: `python benchmarks/bench_federated_overhead.py --users {args.users} --rounds {job.rounds} "
        f"--local-epochs {job.local_epochs} --batch-size {job.batch_size} --lr {job.lr:g} --repeats {args.repeats}`",
        "",
        f"Data: `SyntheticPlatforms(users_per_platform={args.users}, seed=7)`, 3 partners, "
        f"{sum(map(len, users.values()))} users, all consenting (real SQLite consent ledger), no evaluation split. "
        f"Job: {job.rounds} rounds × {job.local_epochs} local epochs, batch {job.batch_size}, lr {job.lr:g}, FedAvg, "
        f"`ChurnLTVNet{tuple(job.hidden)}`, no federated evaluation. Ray start and shutdown INCLUDED in every wall "
        f"time (each run starts its own Ray). Median of {args.repeats} interleaved runs per mode.",
        "",
        f"Machine: {machine()}; load average {load_start} at start, {load_end} at end.",
        "",
        "| run | wall time (s) | inside ServerApp (s) | runs (wall) |",
        "|---|---|---|---|",
    ]
    names = {"bare": "bare Flower FedAvg (no consent, ledger, DP)", "cohort_nodp": "Cohort job, DP off",
             "cohort_dp": "Cohort job, DP on (ε=3)"}  # fmt: skip
    for mode, rs in runs.items():
        lines.append(f"| {names[mode]} | {med[mode]['wall']:.1f} | {med[mode]['server']:.1f} | "
                     + ", ".join(f"{r['wall']:.1f}" for r in rs) + " |")
    lines += [
        "",
        f"Cohort (DP off) / bare Flower: **{ratio:.2f}×** wall (target ≤ {TARGET_RATIO}×: "
        f"{'met' if ratio <= TARGET_RATIO else 'missed'}), {ratio_server:.2f}× inside the ServerApp. "
        f"DP cost: Cohort DP on / DP off = {dp_ratio:.2f}× wall, {dp_ratio_server:.2f}× inside the ServerApp.",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    if args.doc:
        update_subsection(f"Overhead of a Cohort job over bare Flower ({job.rounds} rounds × {job.local_epochs} local "
                          f"epochs, batch {job.batch_size})", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
