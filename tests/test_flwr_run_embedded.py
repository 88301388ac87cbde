"""A bare ``flwr run .``: no ledger configured, so the ServerApp sets up an embedded one (``server.embedded``).

Flower 1.42's default SuperLink connection is ``local`` (address ``:local:``): ``flwr run`` starts a managed
simulation SuperLink in the background (2 simulated SuperNodes unless the federation config says otherwise) and
submits the run to it. The ServerApp then builds the demo's world for exactly those SuperNodes (partition-id i is
partner i) and announces the ledger to them in the round config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from client.data import load_eligible_rows
from client.partner import NoDurableState, ledger_from_config, resolve_partner
from client.protocol import RoundConfig
from consent.entries import make_entry
from consent.ledger import LedgerReader
from server.embedded import embedded_ledger, wants_embedded_ledger
from server.job import Job, PreflightError
from test_flower_deployment import base_env, free_port

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
SMALL = {"users-per-platform": 200, "data-seed": 11}


class Nodes:
    """The one Grid method the embedded set-up (``server.partners.connected_partners``) uses."""

    def __init__(self, *node_ids: int) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def simulated_node(run_config: dict, partition_id: int, num_partitions: int, **node) -> Context:
    """A simulated SuperNode's context: partition-id and num-partitions, and no ledger-url of its own."""
    node_config = {"partition-id": partition_id, "num-partitions": num_partitions, **node}
    return Context(run_id=1, node_id=100 + partition_id, node_config=node_config, state=RecordDict(),
                   run_config=run_config)  # fmt: skip


def test_the_embedded_ledger_is_used_only_when_nothing_is_configured():
    assert wants_embedded_ledger(DEFAULTS)  # the pyproject defaults: a bare `flwr run .`
    configured = {"ledger-db": "/x/ledger.db", "ledger-target": "127.0.0.1:50051", "tree-size": 42,
                  "ledger-url": "py:client.consent_link:open_link?db=/x&keys=/y"}  # fmt: skip
    for key, value in configured.items():
        assert not wants_embedded_ledger({**DEFAULTS, key: value}), key


def test_one_partner_per_supernode_and_the_partners_learn_the_ledger_from_the_round_config(tmp_path):
    run = {**DEFAULTS, **SMALL, "output-dir": str(tmp_path)}
    said: list[str] = []
    embedded = embedded_ledger(Nodes(7, 9), Job.from_run_config(run), run, say=said.append)
    try:
        assert embedded.partners == ("content", "group_buy") and embedded.out == tmp_path and not embedded.continued
        assert (tmp_path / "ledger.db").exists() and (tmp_path / "keys" / "group_buy.hmac").exists()
        assert not (tmp_path / "keys" / "loyal.hmac").exists()  # 2 SuperNodes: the third platform is not a partner
        assert str(tmp_path / "ledger.db") in said[0] and "2 partner(s)" in said[0]
        job = embedded.job
        assert job.expected_partners == 2 and job.ledger_link.startswith("py:client.consent_link:open_link?db=")
        job = job.fixed_at(embedded.hooks.checkpoint(job))
        wire = RoundConfig.from_record(job.round_config(1).to_record())
        assert wire.ledger_link == job.ledger_link

        node = simulated_node(run, partition_id=1, num_partitions=2)
        partner = resolve_partner(node, job=wire)
        assert partner.partner_id == "group_buy"
        # Its privacy spend goes to a file next to the ledger (a late reply's steps are counted, client.privacy) ...
        assert partner.state_dir == str(tmp_path / "partner-state" / "group_buy")
        # ... unless the SuperNode names its own state dir.
        mine = simulated_node(run, partition_id=1, num_partitions=2, **{"state-dir": str(tmp_path / "mine")})
        assert resolve_partner(mine, job=wire).state_dir == str(tmp_path / "mine")
        rows = load_eligible_rows(partner.ledger, partner.data, partner.partner_id, wire)
        reader = LedgerReader.open_readonly(str(tmp_path / "ledger.db"))
        expected = reader.eligible_set("group_buy", job.purpose, sorted(job.categories), tree_size=job.tree_size)
        reader.close()
        assert 0 < rows.eligible.count == expected.count < SMALL["users-per-platform"]
        assert rows.eligible.root == expected.root.hex()

        # A SuperNode's own ledger-url (deployment) still wins over what the server announces.
        own = simulated_node(run, partition_id=0, num_partitions=2, **{"ledger-url": "py:no_such_module:open"})
        with pytest.raises(ModuleNotFoundError, match="no_such_module"):
            ledger_from_config(own, wire)
        # Such a node keeps its spend only where it says: without a state-dir it takes no part at all.
        with pytest.raises(NoDurableState, match="partner 'content' has no state dir: .* under-counted; start the "
                                                 "SuperNode with --node-config \"state-dir='/path'\""):  # fmt: skip
            resolve_partner(own, job=wire)
    finally:
        embedded.binding.ledger.close()


def test_an_output_dir_holding_an_embedded_ledger_is_continued_and_a_repeated_job_id_refused(tmp_path):
    run = {**DEFAULTS, **SMALL, "output-dir": str(tmp_path)}
    first = embedded_ledger(Nodes(1, 2), Job.from_run_config(run), run, say=lambda _: None)
    operator_pub = (tmp_path / "keys" / "operator.pub").read_text()
    job = first.job.fixed_at(first.hooks.checkpoint(first.job))
    size = first.binding.ledger.tree_size()
    body = {"job_id": job.job_id, "purpose": job.purpose, "data_categories": sorted(job.categories),
            "checkpoint": {"tree_size": job.tree_size, "root": first.binding.checkpoint_root}, "rounds": job.rounds,
            "target_epsilon": job.target_epsilon, "delta": job.delta, "strategy": job.strategy,
            "partners": list(first.partners), "as_of": first.binding.day, "lifetime_epsilon": None}  # fmt: skip
    first.binding.ledger.append([make_entry("job.started", body, first.binding.coordinator)])
    first.binding.ledger.close()

    with pytest.raises(PreflightError, match="already started in the embedded ledger"):
        embedded_ledger(Nodes(1, 2), Job.from_run_config(run), run, say=lambda _: None)
    again = {**run, "job-id": "second-job"}
    said: list[str] = []
    second = embedded_ledger(Nodes(1, 2), Job.from_run_config(again), again, say=said.append)
    try:
        assert second.continued and "continuing" in said[0]
        assert (tmp_path / "keys" / "operator.pub").read_text() == operator_pub  # same keys, same ledger
        assert second.binding.ledger.tree_size() == size + 1  # nothing re-recorded
        assert second.partners == ("content", "group_buy")
    finally:
        second.binding.ledger.close()


# ---- the real thing ---------------------------------------------------------------------------------------------


def processes_whose_command_line_has(*parts: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(part in cmdline for part in parts):
            found.append(int(entry.name))
    return found


def stop_local_superlink(flwr_home: Path, timeout_s: float = 15.0) -> None:
    """Stop the SuperLink ``flwr run`` started in the background for this FLWR_HOME (it outlives the CLI by
    design), by its pid, politely first. Its SuperExec child watches the parent pid and exits with it."""
    for pid in processes_whose_command_line_has("flower-superlink", str(flwr_home / "local-superlink")):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout_s
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_bare_flwr_run_trains_on_an_embedded_ledger_that_verifies(tmp_path):
    """``flwr run . --stream`` in a fresh FLWR_HOME (no config.toml: flwr writes its default, connection ``local``),
    no ledger anywhere in the run config; only the size of the job is overridden to keep it fast."""
    from consent.audit import audit_rounds
    from consent.verify import verify_ledger

    home = tmp_path / "flwr-home"
    home.mkdir()
    env = base_env(home)
    env.update(CI="true", FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),  # not the fixed 39091: hermetic
               FLWR_LOCAL_CONTROL_API_PORT=str(free_port()), OMP_NUM_THREADS="1")  # fmt: skip
    started = time.monotonic()
    try:
        run = subprocess.run(
            ["flwr", "run", ".", "--stream", "--run-config",
             "num-rounds=2 users-per-platform=300 data-seed=11 local-epochs=1 batch-size=64"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=400, check=False,
        )  # fmt: skip
    finally:
        stop_local_superlink(home)
    elapsed = time.monotonic() - started
    output = run.stdout + run.stderr
    assert "Using SuperLink: local" in output, output[-3000:]
    found = re.search(r"embedded consent ledger: (\S+/ledger\.db)", output)
    assert found, output[-4000:]
    db = Path(found.group(1))
    try:
        print(f"bare flwr run . (local simulation SuperLink, Flower's default 2 SuperNodes, 2 rounds): {elapsed:.1f} s")
        assert "finished: 2 round manifest(s)" in output, output[-4000:]
        result = json.loads((db.parent / "result.json").read_text())
        assert result["rounds_completed"] == 2
        assert sorted(result["epsilon_by_partner"]) == ["content", "group_buy"]  # one partner per SuperNode
        reader = LedgerReader.open_readonly(str(db))
        kinds = {t: len(reader.store.find_by_type(t)) for t in ("job.started", "round.manifest", "model.published")}
        assert kinds == {"job.started": 1, "round.manifest": 2, "model.published": 1}
        manifests = [json.loads(data)["body"] for _, data in reader.store.find_by_type("round.manifest")]
        for manifest in manifests:
            assert sorted(p["partner_id"] for p in manifest["partners"]) == ["content", "group_buy"]
        for partner in ("content", "group_buy"):  # each partner's spend, kept in a file beside the ledger
            spend_file = db.parent / "partner-state" / partner / f"{result['job']['job_id']}.privacy.json"
            spend = json.loads(spend_file.read_text())
            assert spend["rounds"] == 2 and sum(spend["steps"]) > 0, spend
        audit = audit_rounds(reader.store)
        assert audit.ok and len(audit.rounds) == 4, audit.problems[:3]
        reader.close()
        report = verify_ledger(str(db), workers=0)
        assert report.ok, report.first_bad
    finally:
        shutil.rmtree(db.parent, ignore_errors=True)
