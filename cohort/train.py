"""`cohort train --job job.toml`: submit a job to a running Flower deployment, wired to the consent ledger.

The job file is what a coordinator writes; it becomes `flwr run` run-config overrides of this Flower App, so the
ServerApp (`server.app`) runs it with the ledger hooks (checkpoint, job.started, manifests, budgets). Validated
here first: a bad job fails before anything is submitted.

    [job]     job-id, purpose, categories = [..], num-rounds, target-epsilon, delta, min-partners, strategy, ...
    [ledger]  target = "host:port", ca = "ca.crt", keys-dir = "keys/", lifetime-epsilon = 10.0
    [flower]  superlink = "<connection in $FLWR_HOME/config.toml>", app = "<path of the Flower App>", stream = true
"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

from server.job import Job, JobError

REPO = Path(__file__).resolve().parent.parent


class JobFileError(ValueError):
    """A job file that cannot be submitted; the message names the problem."""


def load_job_file(path: Path) -> dict:
    try:
        spec = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise JobFileError(f"no job file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(f"{path} is not valid TOML: {exc}") from None
    if "job" not in spec:
        raise JobFileError(f"{path} has no [job] table")
    unknown = sorted(set(spec) - {"job", "ledger", "flower"})
    if unknown:
        raise JobFileError(f"{path}: unknown table(s) {unknown}; expected [job], [ledger], [flower]")
    return spec


def run_config(spec: dict) -> dict:
    """The run-config overrides for `flwr run`, after validating the job as the ServerApp will read it."""
    job = {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in spec["job"].items()}
    try:
        Job.from_run_config(job)
    except (JobError, TypeError, ValueError) as exc:
        raise JobFileError(f"[job]: {exc}") from None
    ledger = spec.get("ledger", {})
    if not ledger.get("target") and not ledger.get("db"):
        raise JobFileError("[ledger] needs target = \"host:port\" (the ConsentLedger service) or db = URL")
    if not ledger.get("keys-dir"):
        raise JobFileError("[ledger] needs keys-dir (where coordinator.key is)")
    out = dict(job)
    out["ledger-target"] = ledger.get("target", "")
    out["ledger-db"] = ledger.get("db", "")
    out["ledger-ca"] = str(ledger.get("ca", ""))
    out["keys-dir"] = str(Path(ledger["keys-dir"]).resolve())
    out["lifetime-epsilon"] = float(ledger.get("lifetime-epsilon", 0.0))
    out.setdefault("tree-size", 0)
    return out


def flwr_command(spec: dict) -> list[str]:
    flower = spec.get("flower", {})
    if not flower.get("superlink"):
        raise JobFileError("[flower] needs superlink = \"<connection name in $FLWR_HOME/config.toml>\"")
    config = " ".join(f"{k}={_toml_value(v)}" for k, v in run_config(spec).items())
    cmd = ["flwr", "run", str(flower.get("app", REPO)), flower["superlink"], "--run-config", config]
    if flower.get("stream", True):
        cmd.append("--stream")
    return cmd


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "") + "'"


def describe(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)
