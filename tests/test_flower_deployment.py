"""Cohort as a deployed Flower federation on loopback: one SuperLink and three SuperNodes as real processes.

TLS with a CA generated here (``cryptography``), SuperNode authentication (each SuperNode has its own ECDSA
P-384 key, registered with ``flwr supernode register``), runtime dependency installation disabled, the job
submitted with ``flwr run . <connection>`` exactly as a coordinator would. Partners find the (fake) ledger through
``--node-config ledger-url=...``, their own setting.

Also here: ``flwr run .`` against a simulation-mode SuperLink, the way the Flower App is run without a deployment.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client.data import SyntheticPlatforms
from test_federated_support import fake_ledger_for

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
DATA = SyntheticPlatforms(users_per_platform=300, seed=11)
RUN_CONFIG = "tree-size=42 users-per-platform=300 data-seed=11 local-epochs=1 batch-size=64"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {port} after {timeout_s} s")


class Processes:
    """Processes started by a test, stopped (by pid, politely first) when it ends."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env, self.started = logs, env, []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        process = subprocess.Popen(
            list(args), cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started.append((name, process))
        return process

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: the SuperNode and its ClientApp children
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def stop_all(self) -> None:
        for _, process in reversed(self.started):
            self.stop(process)

    def log_tail(self, name: str, lines: int = 40) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def flwr(env: dict[str, str], *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["flwr", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def write_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cohort test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.crt", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


def write_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format (what SuperNode authentication reads)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = directory / name, directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    private.chmod(0o600)
    return private, public


def base_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        OMP_NUM_THREADS="1",
    )
    return env


def write_ledger(tmp_path: Path) -> str:
    path = tmp_path / "ledger.json"
    path.write_text(fake_ledger_for(DATA).to_json())
    return f"py:test_federated_support:open_fake_ledger?path={path}"


def read_result(output_dir: Path) -> dict:
    return json.loads((output_dir / "result.json").read_text())


@pytest.mark.slow
def test_flwr_run_against_a_simulation_superlink(tmp_path):
    """``flwr run .`` with the repo as the Flower App, on a SuperLink in simulation mode (3 virtual partners)."""
    port = free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "sim"\n\n'
        f'[superlink.sim]\naddress = "127.0.0.1:{port}"\ninsecure = true\n\n'
        "[superlink.sim.options]\nnum-supernodes = 3\n\n"
        "[superlink.sim.options.backend.client-resources]\nnum-cpus = 1\nnum-gpus = 0.0\n"
    )
    env = base_env(home)
    procs = Processes(tmp_path, env)
    out = tmp_path / "out"
    try:
        link = procs.start(
            "superlink", "flower-superlink", "--insecure", "--simulation",
            "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port),
        )  # fmt: skip
        wait_for_port(port, link)
        started = time.monotonic()
        run = flwr(
            env, "run", ".", "sim", "--stream", "--run-config",
            f"{RUN_CONFIG} num-rounds=2 ledger-url='{write_ledger(tmp_path)}' output-dir='{out}' "
            f"state-root='{tmp_path / 'partner-state'}'",
            timeout_s=240,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert (out / "result.json").exists(), run.stdout[-3000:] + run.stderr[-3000:] + procs.log_tail("superlink")
    finally:
        procs.stop_all()
    print(f"flwr run . (simulation SuperLink, 3 partners, 2 rounds): {elapsed:.1f} s")
    result = read_result(out)
    assert result["rounds_completed"] == 2
    assert sorted(result["epsilon_by_partner"]) == sorted(DATA.partners)
    # simulated SuperNodes name no state-dir: with a configured ledger they keep their spend under state-root
    assert sorted(p.name for p in (tmp_path / "partner-state").iterdir()) == sorted(DATA.partners)


class Federation:
    """A SuperLink with TLS and SuperNode authentication, and one registered SuperNode per partner."""

    def __init__(self, tmp_path: Path, ledger_url: str | None = None) -> None:
        self.tmp = tmp_path
        self.port = free_port()
        home = tmp_path / "flwr-home"
        home.mkdir()
        self.ca, cert, key = write_tls(tmp_path)
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "deploy"\n\n'
            f'[superlink.deploy]\naddress = "127.0.0.1:{self.port}"\nroot-certificates = "{self.ca}"\n'
        )
        self.env = base_env(home)
        self.procs = Processes(tmp_path, self.env)
        self.ledger_url = ledger_url or write_ledger(tmp_path)
        self.nodes: dict[str, subprocess.Popen] = {}
        link = self.procs.start(
            "superlink", "flower-superlink",
            "--ssl-ca-certfile", str(self.ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(self.port),
        )  # fmt: skip
        wait_for_port(self.port, link)
        for partner in DATA.partners:
            _, public = write_node_key(tmp_path, f"node-{partner}")
            registered = flwr(self.env, "supernode", "register", str(public), "deploy", "--name", partner)
            assert registered.returncode == 0, registered.stdout + registered.stderr
            self.start_node(partner)

    def start_node(self, partner: str, log_name: str | None = None) -> subprocess.Popen:
        """(Re)start the partner's SuperNode with its key: the same key is the same node id."""
        i = DATA.partners.index(partner)
        state_dir = self.tmp / f"state-{partner}"
        self.nodes[partner] = self.procs.start(
            log_name or f"supernode-{partner}", "flower-supernode",
            "--superlink", f"127.0.0.1:{self.port}", "--root-certificates", str(self.ca),
            "--auth-supernode-private-key", str(self.tmp / f"node-{partner}"),
            "--port", str(free_port()),
            "--node-config",
            f"partition-id={i} num-partitions=3 partner-id='{partner}' ledger-url='{self.ledger_url}' "
            f"state-dir='{state_dir}'",
        )  # fmt: skip
        return self.nodes[partner]

    def submit(self, run_config: str) -> subprocess.Popen:
        log = open(self.tmp / "flwr-run.log", "wb")
        return subprocess.Popen(
            ["flwr", "run", ".", "deploy", "--stream", "--run-config", run_config],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def logs(self) -> str:
        names = [name for name, _ in self.procs.started] + ["flwr-run"]
        return "\n".join(f"--- {n}\n{self.procs.log_tail(n)}" for n in names if (self.tmp / f"{n}.log").exists())


def wait_for_log(path: Path, text: str, count: int, watched: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if watched.poll() is not None:
            raise RuntimeError(f"the run ended (exit {watched.returncode}) before {text!r} x{count} in {path.name}")
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{text!r} x{count} not in {path.name} after {timeout_s} s")


@pytest.mark.slow
def test_deployment_with_tls_and_supernode_auth_runs_two_rounds(tmp_path):
    """The real thing on loopback: the ConsentLedger service over TLS with signed requests, a SuperLink with TLS
    and SuperNode authentication, three SuperNodes each asking the ledger for its own eligible subjects, the
    coordinator's ServerApp publishing the checkpoint, job.started, round manifests and model.published."""
    from cohort.demo_world import build_world, exercise_rights, record_consents
    from consent.audit import audit_rounds
    from consent.ledger import LedgerReader
    from consent.service.server import serve
    from consent.verify import verify_ledger

    out = tmp_path / "out"
    world_dir = tmp_path / "world"
    world = build_world(world_dir, DATA)
    record_consents(world, seed=5)
    exercise_rights(world, seed=6)
    world.ledger.close()
    (tmp_path / "ledger-tls").mkdir()
    ca, cert, key = write_tls(tmp_path / "ledger-tls")
    ledger_port = free_port()
    ledger = serve(str(world.db_path), ledger_port, world.keys_dir, tls=(cert, key))
    target = f"127.0.0.1:{ledger_port}"
    link = (f"py:client.consent_link:open_link?grpc={target}&keys={world.keys_dir}&ca={ca}&cap=10.0"
            f"&job-epsilon=3.0")  # fmt: skip
    started = time.monotonic()
    federation = Federation(tmp_path, ledger_url=link)
    try:
        job_file = tmp_path / "job.toml"
        job_file.write_text(
            '[job]\njob-id = "deployed-job"\nnum-rounds = 2\nexpected-partners = 3\nround-timeout = 60.0\n'
            'users-per-platform = 300\ndata-seed = 11\nlocal-epochs = 1\nbatch-size = 64\nevaluate-every = 2\n'
            f'output-dir = "{out}"\n[ledger]\ntarget = "{target}"\nca = "{ca}"\nkeys-dir = "{world.keys_dir}"\n'
            f'lifetime-epsilon = 10.0\n[flower]\nsuperlink = "deploy"\napp = "{REPO}"\n'
        )
        log = open(tmp_path / "flwr-run.log", "wb")
        run = subprocess.Popen(["cohort", "train", "--job", str(job_file)], cwd=REPO, env=federation.env,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        run.wait(timeout=300)
        elapsed = time.monotonic() - started
        assert (out / "result.json").exists(), federation.logs()
    finally:
        federation.procs.stop_all()
        ledger.stop()
    print(f"deployment (ledger over gRPC+TLS, TLS + SuperNode auth, 3 partners, 2 rounds): {elapsed:.1f} s")
    result = read_result(out)
    assert result["rounds_completed"] == 2
    for manifest in result["manifests"]:
        assert sorted(p["partner_id"] for p in manifest["partners"]) == sorted(DATA.partners)
        assert not manifest["refused"] and not manifest["failed"] and not manifest["missing_nodes"]
    assert all(0 < eps <= 3.0 for eps in result["epsilon_by_partner"].values())
    assert "2" in result["evaluate_metrics"] and "1" not in result["evaluate_metrics"]
    # the ledger saw the whole job, and an auditor can re-derive every round from the log alone
    reader = LedgerReader.open_readonly(str(world.db_path))
    kinds = {t: len(reader.store.find_by_type(t)) for t in ("job.started", "round.manifest", "model.published")}
    assert kinds == {"job.started": 1, "round.manifest": 2, "model.published": 1}
    audit = audit_rounds(reader.store)
    assert audit.ok and len(audit.rounds) == 6 and all(r.absent_proven > 0 for r in audit.rounds)
    assert reader.budget.charges() and verify_ledger(str(world.db_path), workers=0).ok
    reader.close()


ROUND_TIMEOUT_S = 40.0


def run_killing_loyal_in_round_two(tmp_path: Path, extra_config: str = "") -> tuple[dict, dt.datetime]:
    """A 3-round job (min 2 partners) on a fresh deployment; SuperNode ``loyal`` is SIGKILLed once it has received
    round 2's train message. Returns the job's result and when the kill happened."""
    out = tmp_path / "out"
    federation = Federation(tmp_path)
    try:
        run = federation.submit(
            f"{RUN_CONFIG} num-rounds=3 expected-partners=3 min-partners=2 round-timeout={ROUND_TIMEOUT_S} "
            f"evaluate-every=0 {extra_config} output-dir='{out}'"
        )
        wait_for_log(tmp_path / "supernode-loyal.log", "Receiving: train message", 2, watched=run)
        os.killpg(federation.nodes["loyal"].pid, signal.SIGKILL)
        killed_at = dt.datetime.now(dt.UTC)
        run.wait(timeout=300)
        assert (out / "result.json").exists(), federation.logs()
    finally:
        federation.procs.stop_all()
    return read_result(out), killed_at


@pytest.mark.slow
def test_deployment_killed_supernode_round_closes_at_timeout_and_job_finishes(tmp_path):
    """Kill one SuperNode (SIGKILL) while it trains in round 2: the round closes at the application's timeout with the
    other two instead of waiting for Flower's heartbeat expiry, and the job finishes on them."""
    result, killed_at = run_killing_loyal_in_round_two(tmp_path)
    rounds = {m["round"]: m for m in result["manifests"]}
    partners = {r: sorted(p["partner_id"] for p in m["partners"]) for r, m in rounds.items()}
    assert partners == {1: ["content", "group_buy", "loyal"], 2: ["content", "group_buy"], 3: ["content", "group_buy"]}
    loyal_node = rounds[2]["missing_nodes"]
    assert len(loyal_node) == 1
    closed = {r: dt.datetime.fromisoformat(m["closed_at"]) for r, m in rounds.items()}
    print(
        f"killed SuperNode: round 2 closed {(closed[2] - killed_at).total_seconds():.0f} s after the kill "
        f"(timeout {ROUND_TIMEOUT_S:g} s), round 3 took {(closed[3] - closed[2]).total_seconds():.0f} s"
    )
    assert (closed[2] - killed_at).total_seconds() < ROUND_TIMEOUT_S + 5
    # Round 3 may still address the dead node (the SuperLink thinks it is online until it misses two 30 s
    # heartbeats): then it is reported missing, or failed by the SuperLink on its behalf -- under its own node id
    # either way, never the SuperLink's.
    dead = rounds[3]["missing_nodes"] + [f["node_id"] for f in rounds[3]["failed"]]
    assert set(dead) <= set(loyal_node)


@pytest.mark.slow
def test_deployment_secure_job_survives_a_killed_supernode(tmp_path):
    """A secure job (masked sums, distributed DP) on the real SuperLink: one SuperNode is SIGKILLed after it received
    round 2's message. The round it is missing from closes at the timeout, the survivors reveal their mask keys with
    it and each other's seed shares over the SuperLink (``query.reveal``), the server removes those masks, and the
    job finishes on the others."""
    result, _ = run_killing_loyal_in_round_two(tmp_path, "aggregation='secure' lr=0.01")
    rounds = {m["round"]: m for m in result["manifests"]}
    assert sorted(rounds) == [1, 2, 3]
    assert rounds[1]["aggregation"]["recovered"] == [] and len(rounds[1]["partners"]) == 3
    # The kill lands while loyal computes its round-2 share or just after it answered (one step takes
    # milliseconds): round 2 or round 3 misses it. Once the SuperLink has noticed the dead node, a round is not sent
    # to it at all: then loyal is in no roster and there is nothing to recover.
    recovered = {r: m["aggregation"]["recovered"] for r, m in rounds.items() if r > 1}
    assert ["loyal"] in recovered.values(), recovered
    first_miss = min(r for r, dropped in recovered.items() if dropped == ["loyal"])
    for r, m in rounds.items():
        partners = {p["partner_id"] for p in m["partners"]}
        dropped = set(m["aggregation"]["recovered"])
        # every roster partner without a usable vector had its masks removed, and no other
        assert len(dropped) == len(m["missing_nodes"]) + len(m["failed"]) + len(m["refused"])
        assert not partners & dropped and partners | dropped <= set(DATA.partners)
        assert ("loyal" in partners) == (r < first_miss)
        assert m["aggregation"]["mode"] == "secure" and m["aggregation"]["noise_partners"] == 2
        assert m["aggregation"]["colluders_to_unmask"] == 1  # seed shares split 1-of-2: the server alone reads none
    assert all(0 < eps <= 3.0 for eps in result["epsilon_by_partner"].values())
