"""Request signing for the ConsentLedger service: who is calling, proven per call with the caller's ledger key.

Every call carries four metadata headers:

    x-cohort-key-id     key id of a key registered in the log (key.registered)
    x-cohort-ts         unix time in milliseconds, decimal
    x-cohort-nonce      16-64 lowercase hex characters, fresh per call
    x-cohort-signature  base64 Ed25519 signature over
                        method "\\n" ts "\\n" nonce "\\n" SHA-256(serialized request message)

`method` is the full gRPC method name ("/cohort.ledger.v1.ConsentLedger/Append"). The signature binds the call to
its exact request bytes, so a captured call cannot be re-aimed at another method or altered; the timestamp bounds
how long it could be replayed (5 minutes either way) and the nonce cache refuses a second use inside that window.
Why not mTLS alone: a role belongs to a ledger key, and the log — not a CA — says which key holds which role.
"""

from __future__ import annotations

import base64
import collections
import contextvars
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from consent.keys import Identity
from consent.rules import KeyRecord

KEY_ID_HEADER = "x-cohort-key-id"
TS_HEADER = "x-cohort-ts"
NONCE_HEADER = "x-cohort-nonce"
SIGNATURE_HEADER = "x-cohort-signature"
MAX_SKEW_MS = 5 * 60 * 1000
SERVICE_PREFIX = "/cohort.ledger.v1.ConsentLedger/"

_NONCE = re.compile(r"^[0-9a-f]{16,64}$")
_TS = re.compile(r"^[0-9]{1,16}$")


@dataclass(frozen=True)
class Caller:
    """The authenticated party behind one call."""

    key_id: str
    identity: str
    role: str


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# The servicer reads the caller from here; the interceptor sets it around the handler on the same thread.
current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("cohort_caller", default=None)


def signing_payload(method: str, ts: str, nonce: str, request: bytes) -> bytes:
    return b"\n".join([method.encode(), ts.encode(), nonce.encode(), hashlib.sha256(request).digest()])


def sign_request(identity: Identity, method: str, request: bytes, now_ms: int | None = None) -> list[tuple[str, str]]:
    """The metadata that authenticates `request` (already serialized) as a call to `method` by `identity`."""
    ts = str(int(time.time() * 1000) if now_ms is None else now_ms)
    nonce = os.urandom(16).hex()
    sig = identity.sign(signing_payload(method, ts, nonce, request))
    return [
        (KEY_ID_HEADER, identity.key_id),
        (TS_HEADER, ts),
        (NONCE_HEADER, nonce),
        (SIGNATURE_HEADER, base64.b64encode(sig).decode()),
    ]


class NonceCache:
    """Remembers (key id, nonce) for as long as a request carrying it could still pass the clock check.

    Bounded: when full, the oldest nonce is forgotten and the acceptance floor rises to its timestamp, so a
    request stamped at or before anything forgotten is refused instead of risking an undetected replay.
    """

    def __init__(self, window_ms: int = MAX_SKEW_MS, max_size: int = 200_000):
        self.window_ms = window_ms
        self.max_size = max_size
        self.floor_ms = 0
        self._seen: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()
        self._lock = threading.Lock()

    def check_and_add(self, key_id: str, nonce: str, ts_ms: int, now_ms: int) -> str | None:
        """None if fresh (and now remembered); otherwise the reason it is refused."""
        with self._lock:
            while self._seen:
                (_, oldest_ts) = next(iter(self._seen.items()))
                if oldest_ts >= now_ms - self.window_ms:
                    break
                self._seen.popitem(last=False)
            if ts_ms <= self.floor_ms:
                return "request timestamp is older than the replay cache can vouch for; retry with a fresh one"
            if (key_id, nonce) in self._seen:
                return "request nonce already used (replay)"
            self._seen[(key_id, nonce)] = ts_ms
            while len(self._seen) > self.max_size:
                _, evicted_ts = self._seen.popitem(last=False)
                self.floor_ms = max(self.floor_ms, evicted_ts)
            return None

    def __len__(self) -> int:
        return len(self._seen)


class RequestAuthenticator:
    """Checks one call's headers against the key registry; raises AuthError, returns the Caller."""

    def __init__(
        self,
        lookup_key: Callable[[str], KeyRecord | None],
        nonces: NonceCache | None = None,
        max_skew_ms: int = MAX_SKEW_MS,
        clock: Callable[[], float] = time.time,
    ):
        self.lookup_key = lookup_key
        self.nonces = nonces or NonceCache(window_ms=max_skew_ms)
        self.max_skew_ms = max_skew_ms
        self.clock = clock

    def authenticate(self, method: str, metadata: dict[str, str], request: bytes) -> Caller:
        unauth = grpc.StatusCode.UNAUTHENTICATED
        missing = [h for h in (KEY_ID_HEADER, TS_HEADER, NONCE_HEADER, SIGNATURE_HEADER) if not metadata.get(h)]
        if missing:
            raise AuthError(unauth, f"unsigned request: missing metadata {missing}")
        key_id, ts, nonce = metadata[KEY_ID_HEADER], metadata[TS_HEADER], metadata[NONCE_HEADER]
        if not _TS.match(ts):
            raise AuthError(unauth, f"{TS_HEADER} must be unix milliseconds")
        if not _NONCE.match(nonce):
            raise AuthError(unauth, f"{NONCE_HEADER} must be 16-64 lowercase hex characters")
        now_ms = int(self.clock() * 1000)
        skew = int(ts) - now_ms
        if abs(skew) > self.max_skew_ms:
            raise AuthError(unauth, f"request timestamp is {skew / 1000:+.0f} s off the server clock "
                                    f"(limit ±{self.max_skew_ms // 1000} s)")  # fmt: skip
        key = self.lookup_key(key_id)
        if key is None:
            raise AuthError(unauth, f"unknown key id {key_id!r}")
        if key.revoked:
            raise AuthError(unauth, f"key {key_id!r} has been rotated out")
        try:
            sig = base64.b64decode(metadata[SIGNATURE_HEADER], validate=True)
        except ValueError:
            raise AuthError(unauth, f"{SIGNATURE_HEADER} is not base64") from None
        if not key.verify(sig, signing_payload(method, ts, nonce, request)):
            raise AuthError(unauth, f"bad request signature for key {key_id}")
        # Only a correctly signed call may occupy the nonce cache, so strangers cannot flush it.
        refused = self.nonces.check_and_add(key_id, nonce, int(ts), now_ms)
        if refused:
            raise AuthError(grpc.StatusCode.ALREADY_EXISTS, refused)
        return Caller(key_id=key_id, identity=key.identity, role=key.role)


class AuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every ConsentLedger call on its raw request bytes; health and reflection stay open.

    The handler is rewrapped to receive the undecoded request, because the signature covers the bytes the client
    sent, not a re-serialization of them.
    """

    def __init__(self, authenticator: RequestAuthenticator, prefix: str = SERVICE_PREFIX):
        self.authenticator = authenticator
        self.prefix = prefix

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self.prefix):
            return handler
        if handler.unary_unary is None:  # the service has only unary calls; refuse anything else outright
            return _refuse(grpc.StatusCode.UNIMPLEMENTED, "only unary calls are served")
        metadata: dict[str, str] = {}
        for k, v in handler_call_details.invocation_metadata or ():
            metadata.setdefault(k, v)  # the first value counts; a duplicate cannot override it
        inner, decode = handler.unary_unary, handler.request_deserializer

        def authenticated(raw: bytes, context):
            try:
                caller = self.authenticator.authenticate(method, metadata, raw)
            except AuthError as exc:
                context.abort(exc.code, exc.message)
            try:
                request = decode(raw)
            except Exception:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid protobuf message")
            token = current_caller.set(caller)
            try:
                return inner(request, context)
            finally:
                current_caller.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            authenticated, request_deserializer=None, response_serializer=handler.response_serializer
        )


def _refuse(code: grpc.StatusCode, message: str):
    def refuse(_request, context):
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


class SigningInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Client side for generated stubs: signs each call as `identity`.

    Requests of this service have no map fields, so SerializeToString is deterministic and the bytes signed here are
    the bytes the stub sends. (`consent.client.LedgerClient` signs and sends one byte string, which needs no such
    argument.)
    """

    def __init__(self, identity: Identity):
        self.identity = identity

    def intercept_unary_unary(self, continuation, client_call_details, request):
        signed = sign_request(self.identity, client_call_details.method, request.SerializeToString())
        details = _CallDetails(
            client_call_details.method,
            client_call_details.timeout,
            list(client_call_details.metadata or []) + signed,
            client_call_details.credentials,
            client_call_details.wait_for_ready,
            client_call_details.compression,
        )
        return continuation(details, request)


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                                            "compression")),  # fmt: skip
    grpc.ClientCallDetails,
):
    pass
