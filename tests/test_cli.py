"""The `cohort` CLI's thin commands: keys, job submission validation, `ledger verify` and `ledger serve`."""

from __future__ import annotations

import random
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from cohort.cli import app
from consent.store.engine import open_engine
from tests.ledger_helpers import consent, make_world

runner = CliRunner()


def test_keys_init_writes_private_keys_0600_and_refuses_to_overwrite(tmp_path):
    keys = tmp_path / "keys"
    first = runner.invoke(app, ["keys", "init", "--dir", str(keys), "--partners", "a,b"])
    assert first.exit_code == 0, first.output
    names = sorted(p.name for p in keys.iterdir())
    assert names == sorted(["operator.key", "operator.pub", "coordinator.key", "coordinator.pub", "auditor.key",
                            "auditor.pub", "a.key", "a.pub", "a.hmac", "b.key", "b.pub", "b.hmac"])  # fmt: skip
    assert stat.S_IMODE((keys / "a.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "a.hmac").stat().st_mode) == 0o600
    again = runner.invoke(app, ["keys", "init", "--dir", str(keys)])
    assert again.exit_code != 0 and "already holds keys" in str(again.exception or again.output)


def _job(tmp_path, job: str, ledger: str = 'target = "127.0.0.1:1"\nkeys-dir = "k"', flower='superlink = "deploy"'):
    path = tmp_path / "job.toml"
    path.write_text(f"[job]\n{job}\n[ledger]\n{ledger}\n[flower]\n{flower}\n")
    return runner.invoke(app, ["train", "--job", str(path), "--dry-run"])


def test_train_dry_run_prints_the_flwr_command_with_the_ledger_wired(tmp_path):
    result = _job(tmp_path, 'job-id = "j1"\nnum-rounds = 4\ncategories = ["transaction"]\ntarget-epsilon = 2.0')
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", "")
    for fragment in ("flwr run", "deploy", "num-rounds=4", "categories=", "transaction", "ledger-target=",
                     "127.0.0.1:1", "target-epsilon=2.0"):  # fmt: skip
        assert fragment in flat, fragment


def test_train_refuses_bad_jobs_with_the_reason(tmp_path):
    bad_rounds = _job(tmp_path, 'job-id = "j"\nnum-rounds = 0')
    assert bad_rounds.exit_code == 2 and "rounds must be >= 1" in bad_rounds.output
    bad_strategy = _job(tmp_path, 'job-id = "j"\nstrategy = "fedmagic"')
    assert bad_strategy.exit_code == 2 and "fedmagic" in bad_strategy.output
    no_ledger = _job(tmp_path, 'job-id = "j"', ledger='keys-dir = "k"')
    assert no_ledger.exit_code == 2 and "ConsentLedger service" in no_ledger.output.replace("\n", " ")
    no_link = _job(tmp_path, 'job-id = "j"', flower="stream = true")
    assert no_link.exit_code == 2 and "superlink" in no_link.output


# ---- `cohort ledger verify`: random single-byte tampering on both backends -----------------------------------

TAMPER_TARGETS = ("entry", "entry_signature", "checkpoint_body", "checkpoint_signature")


def _flip(data: bytes, pos: int, rng: random.Random) -> bytes:
    out = bytearray(data)
    out[pos] ^= rng.randrange(1, 256)
    return bytes(out)


@pytest.mark.parametrize("target", TAMPER_TARGETS)
def test_ledger_verify_names_a_byte_flipped_anywhere(ledger_url, target):
    """One byte of one row changed at seeded random positions: `cohort ledger verify` exits 1 and names the entry
    or checkpoint, never with a traceback, however the flip leaves the bytes (bad UTF-8, bad JSON, a missing key,
    a valid but different value)."""
    w = make_world(ledger_url)
    w.partners["partner-a"].record([consent(f"u{i}") for i in range(12)])
    checkpoints = [w.ledger.checkpoint()]
    w.partners["partner-b"].record([consent(f"v{i}") for i in range(6)])
    checkpoints.append(w.ledger.checkpoint())
    size = w.ledger.tree_size()
    clean = runner.invoke(app, ["ledger", "verify", "--db", ledger_url])
    assert clean.exit_code == 0 and "OK" in clean.output, clean.output
    rng = random.Random(f"cohort-9162-{target}")
    engine = open_engine(ledger_url, migrate=False)
    try:
        for _ in range(5):
            if target.startswith("entry"):
                idx = rng.randrange(size)
                original = w.ledger.store.entry(idx)
                if target == "entry":
                    pos = rng.randrange(len(original))
                else:
                    start = original.index(b'"sig":"') + len(b'"sig":"')
                    pos = rng.randrange(start, original.index(b'"', start))
                table, column, where, params, named = "entries", "data", "idx = :i", {"i": idx}, f"entry {idx}"
            else:
                cp = rng.choice(checkpoints)
                column = "body" if target == "checkpoint_body" else "signature"
                original = cp.body if column == "body" else cp.signature
                pos = rng.randrange(len(original))
                table, where, params = "checkpoints", "tree_size = :i", {"i": cp.tree_size}
                named = f"checkpoint at size {cp.tree_size}"
            with engine.begin() as conn:
                conn.execute(text(f"UPDATE {table} SET {column} = :v WHERE {where}"),
                             dict(params, v=_flip(original, pos, rng)))  # fmt: skip
            result = runner.invoke(app, ["ledger", "verify", "--db", ledger_url])
            flat = " ".join(result.output.split())
            where_flipped = f"{target} byte {pos} of {named}"
            assert result.exit_code == 1, (where_flipped, result.output, result.exception)
            crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
            assert not crashed, (where_flipped, result.exc_info)
            assert "Traceback" not in result.output
            assert f"TAMPERED first bad: {named}" in flat, (where_flipped, flat)
            with engine.begin() as conn:
                conn.execute(text(f"UPDATE {table} SET {column} = :v WHERE {where}"), dict(params, v=original))
    finally:
        engine.dispose()
    assert runner.invoke(app, ["ledger", "verify", "--db", ledger_url]).exit_code == 0


# ---- `cohort ledger serve` ---------------------------------------------------------------------------------


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ledger_serve_as_written_in_the_issue_serves_plaintext_on_loopback(tmp_path):
    """`cohort ledger serve --db URL --port N`, no TLS flags: serves on 127.0.0.1 with a warning, answers health
    checks and a signed read, and stops cleanly on SIGTERM."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from consent.keyring import init_keys
    from consent.client import LedgerClient
    from consent.keys import Identity

    keys = tmp_path / ".cohort" / "keys"  # the command's default --keys, relative to where it runs
    init_keys(keys, ["partner-a"])
    port = _free_loopback_port()
    cmd = [sys.executable, "-m", "cohort.cli", "ledger", "serve", "--db", str(tmp_path / "ledger.db"), "--port",
           str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                assert proc.poll() is None, proc.communicate()[1].decode()
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service="cohort.ledger.v1.ConsentLedger"),
                                          timeout=2).status  # fmt: skip
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, "the ledger never reported SERVING"
                time.sleep(0.2)
        with LedgerClient(f"127.0.0.1:{port}", Identity.load(keys, "auditor"), timeout=10) as auditor:
            assert auditor.tree_size() == 4  # the operator's bootstrap + coordinator, auditor, partner-a keys
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert f"listening on 127.0.0.1:{port} (plaintext)" in out.decode()
    assert "WITHOUT TLS on loopback 127.0.0.1" in err.decode()


def test_ledger_serve_still_refuses_plaintext_off_loopback(tmp_path):
    for args, words in ((["--host", "0.0.0.0"], "refusing to serve plaintext on 0.0.0.0"),
                        (["--tls-cert", str(tmp_path / "c.pem")], "go together")):  # fmt: skip
        result = runner.invoke(app, ["ledger", "serve", "--db", str(tmp_path / "l.db"), "--port", "0", *args])
        assert result.exit_code == 2 and words in " ".join(result.output.split()), result.output
    assert not (tmp_path / "l.db").exists(), "nothing may be opened before the refusal"


def test_demo_refuses_unknown_data_with_the_choices():
    result = runner.invoke(app, ["demo", "--data", "imagenet"])
    assert result.exit_code == 2
    assert "unknown --data 'imagenet'" in result.output and "synthetic, cdnow" in result.output
    result = runner.invoke(app, ["demo", "--aggregation", "homomorphic"])
    assert result.exit_code == 2
    assert "unknown --aggregation 'homomorphic'" in result.output and "plain, secure" in result.output


def test_both_serve_entry_points_choose_the_transport_by_one_rule():
    from consent.service.server import choose_transport

    assert choose_transport("0.0.0.0", "c.pem", "k.pem", insecure=True) == (("c.pem", "k.pem"), None)  # certs win
    assert choose_transport("0.0.0.0", None, None, insecure=True) == (None, None)
    tls, warning = choose_transport("::1", None, None, insecure=False)
    assert tls is None and "WITHOUT TLS on loopback ::1" in warning
    for host, cert, key, words in (("10.0.0.5", None, None, "refusing to serve plaintext on 10.0.0.5"),
                                   ("127.0.0.1", "c.pem", None, "go together")):  # fmt: skip
        with pytest.raises(ValueError, match=words):
            choose_transport(host, cert, key, insecure=False)
