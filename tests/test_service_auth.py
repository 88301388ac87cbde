"""Request signing, replay protection, TLS, health checking and reflection of the ConsentLedger server."""

from __future__ import annotations

import datetime as dt
import ipaddress
import time

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from consent.client import LedgerClient, LedgerRPCError
from consent.keys import Identity
from consent.rules import KeyRecord
from consent.service.auth import (
    SERVICE_PREFIX,
    SIGNATURE_HEADER,
    TS_HEADER,
    NonceCache,
    RequestAuthenticator,
    SigningInterceptor,
    sign_request,
)
from consent.service.server import serve
from protos import ledger_pb2 as pb
from protos import ledger_pb2_grpc
from test_service_support import running_env

TREE_SIZE = SERVICE_PREFIX + "GetTreeSize"


# ---- the authenticator on its own ----------------------------------------------------------------------------


def _authenticator(identity: Identity, now: list[float], **kw) -> RequestAuthenticator:
    record = KeyRecord(identity.key_id, identity.name, identity.role, identity.public_b64)
    return RequestAuthenticator(lambda k: record if k == identity.key_id else None, clock=lambda: now[0], **kw)


def test_authenticator_accepts_a_signed_call_once():
    ident, now = Identity.generate("partner-a", "partner"), [time.time()]
    auth = _authenticator(ident, now)
    md = dict(sign_request(ident, TREE_SIZE, b"request"))
    caller = auth.authenticate(TREE_SIZE, md, b"request")
    assert (caller.identity, caller.role, caller.key_id) == ("partner-a", "partner", ident.key_id)
    with pytest.raises(Exception) as err:
        auth.authenticate(TREE_SIZE, md, b"request")
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    "tamper, words",
    [
        (lambda md, m, r: (md, m, r + b"!"), "bad request signature"),  # other bytes
        (lambda md, m, r: (md, SERVICE_PREFIX + "Append", r), "bad request signature"),  # other method
        (lambda md, m, r: ({**md, SIGNATURE_HEADER: "AAAA"}, m, r), "bad request signature"),
        (lambda md, m, r: ({k: v for k, v in md.items() if k != SIGNATURE_HEADER}, m, r), "unsigned request"),
        (lambda md, m, r: ({**md, TS_HEADER: str(int((time.time() - 400) * 1000))}, m, r), "off the server clock"),
        (lambda md, m, r: ({**md, TS_HEADER: str(int((time.time() + 400) * 1000))}, m, r), "off the server clock"),
        (lambda md, m, r: ({**md, "x-cohort-key-id": "0" * 32}, m, r), "unknown key id"),
    ],
)
def test_authenticator_refuses_tampered_calls(tamper, words):
    ident, now = Identity.generate("partner-a", "partner"), [time.time()]
    md, method, raw = tamper(dict(sign_request(ident, TREE_SIZE, b"request")), TREE_SIZE, b"request")
    with pytest.raises(Exception) as err:
        _authenticator(ident, now).authenticate(method, md, raw)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED and words in err.value.message


def test_nonce_cache_stays_bounded_without_forgetting_a_replay():
    cache = NonceCache(window_ms=300_000, max_size=3)
    now = 1_000_000
    for i in range(5):
        assert cache.check_and_add("k", f"n{i}", now + i, now + i) is None
    assert len(cache) == 3
    # n0 and n1 were evicted; their replay is refused by the floor, not accepted as new.
    assert "older than the replay cache" in cache.check_and_add("k", "n0", now, now + 5)
    assert "replay" in cache.check_and_add("k", "n4", now + 4, now + 5)
    # Nonces past the clock window are dropped, since the skew check refuses their requests anyway.
    assert cache.check_and_add("k", "late", now + 400_000, now + 400_000) is None
    assert len(cache) == 1


# ---- over the wire -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with running_env("sqlite", tmp_path_factory.mktemp("auth")) as env:
        yield env


def _raw_tree_size(env, metadata):
    with grpc.insecure_channel(env.server.address) as channel:
        decode = pb.GetTreeSizeResponse.FromString
        call = channel.unary_unary(TREE_SIZE, request_serializer=None, response_deserializer=decode)
        return call(b"", metadata=metadata, timeout=10)


def test_unsigned_request_is_unauthenticated(env):
    with grpc.insecure_channel(env.server.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            ledger_pb2_grpc.ConsentLedgerStub(channel).GetTreeSize(pb.GetTreeSizeRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unsigned" in err.value.details()


def test_replayed_call_is_refused(env):
    md = sign_request(env.keys["auditor"], TREE_SIZE, b"")
    assert _raw_tree_size(env, md).tree_size > 0
    with pytest.raises(grpc.RpcError) as err:
        _raw_tree_size(env, md)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_stale_and_foreign_signatures_are_refused(env):
    stale = sign_request(env.keys["auditor"], TREE_SIZE, b"", now_ms=int((time.time() - 600) * 1000))
    stranger = sign_request(Identity.generate("mallory", "partner"), TREE_SIZE, b"")
    for md in (stale, stranger):
        with pytest.raises(grpc.RpcError) as err:
            _raw_tree_size(env, md)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_generated_stub_with_signing_interceptor(env):
    with grpc.insecure_channel(env.server.address) as channel:
        signed = grpc.intercept_channel(channel, SigningInterceptor(env.keys["auditor"]))
        stub = ledger_pb2_grpc.ConsentLedgerStub(signed)
        resp = stub.GetEntries(pb.GetEntriesRequest(start=0, end=2), timeout=10)
    assert [e.index for e in resp.entries] == [0, 1]


def test_health_check_serving(env):
    with grpc.insecure_channel(env.server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "cohort.ledger.v1.ConsentLedger"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(env):
    with grpc.insecure_channel(env.server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [resp] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                timeout=10))  # fmt: skip
        names = {s.name for s in resp.list_services_response.service}
        assert {"cohort.ledger.v1.ConsentLedger", "grpc.health.v1.Health"} <= names
        req = reflection_pb2.ServerReflectionRequest(file_containing_symbol="cohort.ledger.v1.ConsentLedger")
        [resp] = list(stub.ServerReflectionInfo(iter([req]), timeout=10))
        assert resp.file_descriptor_response.file_descriptor_proto


def test_plaintext_is_refused_off_loopback(tmp_path, env):
    with pytest.raises(ValueError, match="plaintext"):
        serve(str(tmp_path / "x.db"), 0, env.keys_dir, host="0.0.0.0")


# ---- TLS -----------------------------------------------------------------------------------------------------


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cohort-ledger-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    return tmp_path / "cert.pem", tmp_path / "key.pem"


def test_tls_server(tmp_path):
    cert, key = _self_signed(tmp_path)
    with running_env("sqlite", tmp_path, publish_notices=False, tls=(cert, key)) as env:
        assert env.server.tls
        with LedgerClient(env.server.address, env.keys["auditor"], root_cert=cert, timeout=10) as c:
            assert c.tree_size() == 5  # operator bootstrap + the four other parties' keys from the directory
        with LedgerClient(env.server.address, env.keys["auditor"], timeout=3) as plain:
            with pytest.raises(LedgerRPCError) as err:
                plain.tree_size()
            assert err.value.code == "UNAVAILABLE"
