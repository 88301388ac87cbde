"""Which partner this node is, and where its ledger and its data are, from the Flower context.

Precedence: objects handed to ``make_client_app`` (simulation, tests) > the node config (``--node-config`` of the
partner's SuperNode: its own settings) > the run config (``[tool.flwr.app.config]`` / ``--run-config``) > what the
server announces in the round's ``RoundConfig`` (``ledger_link``: the ServerApp's embedded ledger when nothing is
configured, see ``server.embedded``; simulated SuperNodes share the ServerApp's filesystem).

Node config keys: ``partner-id`` (else ``partition-id`` indexes the partner list), ``ledger-url``, ``state-dir``
(where the partner keeps its privacy spend across SuperNode restarts).
Run config keys: ``ledger-url``, ``state-root`` (``<state-root>/<partner_id>`` for nodes without a ``state-dir``),
``partners`` (comma-separated), ``users-per-platform``, ``data-seed``.

A partner with no ``state-dir`` that takes the ServerApp's embedded ledger file (a bare ``flwr run .``: a local
simulation sharing the ServerApp's filesystem) keeps its spend in ``<ledger dir>/partner-state/<partner_id>``: in
simulation a late reply's steps are only counted when the spend is in a file (``client.privacy``). Any other node
that opens its ledger from the config (a deployed SuperNode) needs a ``state-dir`` or a run config ``state-root``,
or it takes no part (``NoDurableState``): its spend would live only in ``Context.state``, and after a restart it
would train on as if it had spent nothing, its users' ε under-counted in the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context

from client.consent_link import link_query
from client.data import DEFAULT_PLATFORMS, PartnerData, SyntheticPlatforms
from client.eligibility import Ledger, open_ledger
from client.protocol import RoundConfig
from client.state_files import safe_name


PARTNER_STATE_DIR = "partner-state"


class NoDurableState(RuntimeError):
    """A deployed partner with nowhere to keep its privacy spend across restarts."""


@dataclass(frozen=True)
class Partner:
    partner_id: str
    ledger: Ledger
    data: PartnerData
    state_dir: str | None = None


def resolve_partner(
    context: Context,
    ledger: Ledger | None = None,
    data: PartnerData | None = None,
    job: RoundConfig | None = None,
    state_root: str | None = None,
) -> Partner:
    """The partner this node plays. ``state_root`` (given by ``server.simulation``): partners without a
    ``state-dir`` node config keep their spend in ``<state_root>/<partner_id>``."""
    data = data if data is not None else data_from_config(context)
    partner_id = partner_id_of(context, data)
    state_dir = str(context.node_config.get("state-dir", "")) or None
    if state_dir is None:
        root = state_root or str(context.run_config.get("state-root", "")) or embedded_state_root(context, job)
        state_dir = str(Path(root) / safe_name(partner_id)) if root else None
    if state_dir is None and ledger is None:  # a deployed node: its spend must survive a restart
        raise NoDurableState(f"partner {partner_id!r} has no state dir: its privacy spend in a job (and a secure job's "
                             "masking key) would be lost if this SuperNode restarted, and its users' ε under-counted; "
                             "start the SuperNode with --node-config \"state-dir='/path'\" (or run with --run-config "
                             "\"state-root='/path'\")")  # fmt: skip
    return Partner(
        partner_id=partner_id,
        ledger=ledger or ledger_from_config(context, job),
        data=data,
        state_dir=state_dir,
    )


def partner_id_of(context: Context, data: PartnerData) -> str:
    node = context.node_config
    if "partner-id" in node:
        return str(node["partner-id"])
    if "partition-id" not in node:
        raise KeyError("node config has neither partner-id nor partition-id")
    index = int(node["partition-id"])
    if not 0 <= index < len(data.partners):
        raise KeyError(f"partition-id {index} but only {len(data.partners)} partners: {list(data.partners)}")
    return data.partners[index]


def ledger_from_config(context: Context, job: RoundConfig | None = None) -> Ledger:
    url = context.node_config.get("ledger-url") or context.run_config.get("ledger-url") or ""
    if not url and job is not None:
        url = job.ledger_link
    return open_ledger(str(url))


def embedded_state_root(context: Context, job: RoundConfig | None) -> str | None:
    """``<ledger dir>/partner-state`` when this node opens the ledger file the server announced, else ``None``."""
    if job is None or context.node_config.get("ledger-url") or context.run_config.get("ledger-url"):
        return None
    db = link_query(job.ledger_link).get("db", "")
    return str(Path(db).parent / PARTNER_STATE_DIR) if db else None


def data_from_config(context: Context) -> PartnerData:
    return data_from_run_config(context.run_config)


def data_from_run_config(run) -> SyntheticPlatforms:
    """The synthetic platforms the run config names (the ServerApp's embedded ledger builds the same ones)."""
    partners = str(run.get("partners", "")).strip()
    return SyntheticPlatforms(
        partners=tuple(p.strip() for p in partners.split(",") if p.strip()) or DEFAULT_PLATFORMS,
        users_per_platform=int(run.get("users-per-platform", SyntheticPlatforms.users_per_platform)),
        seed=int(run.get("data-seed", SyntheticPlatforms.seed)),
    )
