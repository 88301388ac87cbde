"""Starting the ConsentLedger gRPC server: TLS (or explicit plaintext), health, reflection, limits, shutdown.

    server = serve("ledger.db", 0, "keys/", insecure=True)      # port 0: any free port
    print(server.address); ...; server.stop()

    python -m consent.service.server --db ledger.db --port 50051 --keys keys/ --tls-cert c.pem --tls-key k.pem

The keys directory is the one `cohort keys init` writes: `operator.key` signs checkpoints and operator entries;
every `<name>.pub` found beside it ("<role> <base64 key>") is registered in the log at start (idempotent), so the
parties of a deployment can call in without a separate registration step.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from consent.keys import Identity, names_with_role
from consent.ledger import Ledger
from consent.service.appender import AppendQueue
from consent.service.auth import AuthInterceptor, NonceCache, RequestAuthenticator
from consent.service.servicer import ConsentLedgerServicer
from protos import ledger_pb2, ledger_pb2_grpc

log = logging.getLogger("cohort.ledger.server")

SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["ConsentLedger"].full_name
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass
class LedgerServer:
    """A running ledger service. `stop()` drains in-flight calls, commits what is queued and closes the store."""

    server: grpc.Server
    ledger: Ledger
    appender: AppendQueue
    health: health.HealthServicer
    host: str
    port: int
    tls: bool
    _stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.appender.close()
        self.ledger.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def load_operator(keys_dir: str | Path) -> Identity:
    keys_dir = Path(keys_dir)
    if (keys_dir / "operator.key").exists():
        ident = Identity.load(keys_dir, "operator")
    else:
        candidates = names_with_role(keys_dir, "operator")
        if len(candidates) != 1:
            raise FileNotFoundError(f"no operator key in {keys_dir} (expected operator.key; run `cohort keys init`)")
        ident = Identity.load(keys_dir, candidates[0])
    if ident.role != "operator":
        raise ValueError(f"{ident.name} in {keys_dir} is a {ident.role} key, not the operator's")
    return ident


def register_public_keys(ledger: Ledger, keys_dir: str | Path) -> list[str]:
    """Registers every `<name>.pub` in the directory; a key already held by someone else is reported, not fatal."""
    done = []
    for pub in sorted(Path(keys_dir).glob("*.pub")):
        parts = pub.read_text().split()
        if len(parts) != 2:
            log.warning("skipping %s: expected '<role> <base64 public key>'", pub)
            continue
        role, public_b64 = parts
        try:
            done.append(ledger.register(pub.stem, role, public_b64))
        except ValueError as exc:
            log.warning("not registering %s: %s", pub.name, exc)
    return done


PLAINTEXT_WARNING = ("warning: serving the ledger WITHOUT TLS on loopback {host} (local development only); pass "
                     "--tls-cert and --tls-key to encrypt")  # fmt: skip


def choose_transport(host: str, tls_cert, tls_key, insecure: bool):
    """How `cohort ledger serve` and `python -m consent.service.server` serve: (tls pair or None, a warning to print
    or None); ValueError naming the problem. Certificates, when given, are always used; plaintext needs a loopback
    host (with a warning) or an explicit --insecure."""
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if tls_cert:
        return (tls_cert, tls_key), None
    if insecure:
        return None, None
    if not _is_loopback(host):
        raise ValueError(f"refusing to serve plaintext on {host}: pass --tls-cert and --tls-key, or --insecure")
    return None, PLAINTEXT_WARNING.format(host=host)


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and 'localhost': the only addresses plaintext is served on without --insecure."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    db_url: str,
    port: int,
    operator_key_dir: str | Path,
    tls: tuple[str | Path | bytes, str | Path | bytes] | None = None,
    host: str = "127.0.0.1",
    *,
    insecure: bool = False,
    max_workers: int = 16,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    origin: str = "cohort-ledger",
) -> LedgerServer:
    """Opens (migrating) the ledger at db_url and serves it; returns once the port is bound.

    tls=(cert, key) as PEM paths or bytes. Without TLS the server only starts on a loopback address, or anywhere
    if insecure=True is passed explicitly (the CLI's --insecure).
    """
    if tls is None and not (insecure or _is_loopback(host)):
        raise ValueError(f"refusing to serve plaintext on {host}: pass tls=(cert, key) or insecure=True")
    operator = load_operator(operator_key_dir)
    ledger = Ledger.open(db_url, operator, origin=origin)
    try:
        register_public_keys(ledger, operator_key_dir)
        appender = AppendQueue(ledger.append)
        authenticator = RequestAuthenticator(ledger.store.key, NonceCache())
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it silently
        ]
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ledger-rpc"),
            interceptors=[AuthInterceptor(authenticator)],
            options=options,
        )
        ledger_pb2_grpc.add_ConsentLedgerServicer_to_server(ConsentLedgerServicer(ledger, appender), server)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if tls is not None:
            cert, key = (_pem(x) for x in tls)
            bound = server.add_secure_port(bind, grpc.ssl_server_credentials([(key, cert)]))
        else:
            bound = server.add_insecure_port(bind)
        if bound == 0:
            raise OSError(f"could not bind {bind}")
        server.start()
    except BaseException:
        ledger.close()
        raise
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = LedgerServer(server, ledger, appender, health_servicer, host, bound, tls is not None)
    log.info("ConsentLedger on %s (%s), tree size %d", running.address, "TLS" if running.tls else "plaintext",
             ledger.tree_size())  # fmt: skip
    return running


def _pem(value: str | Path | bytes) -> bytes:
    return value if isinstance(value, bytes) else Path(value).read_bytes()


def run_forever(db_url: str, port: int, keys_dir: str | Path, host: str = "127.0.0.1", tls=None) -> None:
    """What `cohort ledger serve` calls (the CLI has already insisted on TLS, loopback or --insecure): serve until
    SIGTERM/^C."""
    done = threading.Event()
    # Before serving: a SIGTERM that arrives once the port answers must stop the server cleanly, not kill it.
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
    server = serve(db_url, port, keys_dir, tls=tls, host=host, insecure=tls is None)
    print(f"cohort ledger listening on {server.address} ({'TLS' if server.tls else 'plaintext'})", flush=True)
    try:
        done.wait()
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m consent.service.server", description="Serve the ConsentLedger.")
    p.add_argument("--db", required=True, help="ledger database URL or SQLite file path")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--keys", required=True, help="directory holding operator.key (and parties' .pub files)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--insecure", action="store_true",
                   help="serve without TLS on any host (plaintext on a loopback host needs no flag, with a warning)")
    args = p.parse_args(argv)
    try:
        tls, warning = choose_transport(args.host, args.tls_cert, args.tls_key, args.insecure)
    except ValueError as exc:
        p.error(str(exc))
    if warning:
        print(warning, file=sys.stderr, flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_forever(args.db, args.port, args.keys, args.host, tls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
