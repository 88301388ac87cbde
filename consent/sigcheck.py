"""Ed25519 checks of entry signatures in worker processes, so a large append batch uses more than one core.

`cryptography` holds the GIL while it verifies, so threads do not help; a few persistent worker processes do.
They are plain subprocesses running this file (not multiprocessing, which would re-import the caller's main
module in every worker), speak length-prefixed pickles over their stdin/stdout, and import nothing of the project.

Workers see only raw entry bytes and the public keys the store already knows. They do not parse JSON: for bytes
that `parse_entry` accepted (canonical JSON with exactly the fields {body, key_id, nonce, sig, signer, ts, type, v},
keys sorted), the top-level `key_id` and `sig` are the LAST occurrences of `,"key_id":"` and `,"sig":"`: a `"`
inside a JSON string is always escaped, so these byte patterns only occur as object keys, and everything after
the top-level `sig` (signer, ts, type, v) is a scalar. The signed message, the canonical bytes of the entry
without `sig`, is then the entry with `,"sig":"…"` cut out. Values holding a backslash are left to the caller.

Verdicts are advisory: the append path uses a worker's verdict only if the entry parsed, the worker read the same
key id, and the rules picked a key with the same public key; otherwise it verifies in-process as before, so the
outcome (and the error reported for the first bad entry of a batch) is exactly what sequential checking gives.
A worker that dies or misbehaves costs speed, never correctness: its entries are simply checked in-process.

`PublicKey` (used here, by the append path's in-process share and by `cohort ledger verify`) confirms valid
signatures with the system's libsodium when there is one, about twice as fast as OpenSSL on this project's
machines, and leaves every other verdict to `cryptography`; see its docstring for why the verdicts are the same.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import os
import pickle
import struct
import subprocess
import sys
import threading
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# Same values as consent.rules.SIGNATURE_OK / SIGNATURE_BAD / SIGNATURE_NOT_BASE64.
OK, BAD_SIGNATURE, NOT_BASE64, UNCHECKED = 0, 1, 2, 3

_KEY_ID = b',"key_id":"'
_SIG = b',"sig":"'
_HEADER = struct.Struct("!Q")


def split_signature(data: bytes) -> tuple[str, bytes, bytes] | None:
    """(key_id, signature base64 bytes, signed message) of canonical entry bytes, or None if not cut cleanly."""
    k = data.rfind(_KEY_ID)
    s = data.rfind(_SIG)
    if k < 0 or s < k:
        return None
    k0 = k + len(_KEY_ID)
    k1 = data.find(b'"', k0)
    s0 = s + len(_SIG)
    s1 = data.find(b'"', s0)
    if k1 < 0 or s1 < 0 or k1 > s:
        return None
    key_id, sig = data[k0:k1], data[s0:s1]
    if b"\\" in key_id or b"\\" in sig:
        return None
    try:
        kid = key_id.decode("ascii")
    except UnicodeDecodeError:
        return None
    return kid, sig, data[:s] + data[s1 + 1 :]


def _libsodium_verify():
    """crypto_sign_ed25519_verify_detached of the system's libsodium if it has one (COHORT_NO_LIBSODIUM=1: never)."""
    if os.environ.get("COHORT_NO_LIBSODIUM"):
        return None
    try:
        import ctypes
        import ctypes.util

        name = ctypes.util.find_library("sodium")
        if not name:
            return None
        lib = ctypes.CDLL(name)
        if lib.sodium_init() < 0:
            return None
        fn = lib.crypto_sign_ed25519_verify_detached
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulonglong, ctypes.c_char_p]
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


_SODIUM = _libsodium_verify()


class PublicKey:
    """An Ed25519 public key whose `verify` gives exactly `cryptography`'s verdict, usually faster.

    `cryptography` (OpenSSL) is the reference. libsodium, when the system has it, verifies about twice as fast,
    and its checks are a superset of OpenSSL's (it also refuses non-canonical and small-order points): what it
    accepts, OpenSSL accepts. So a libsodium "valid" is final and anything else is decided by OpenSSL; the verdict
    is OpenSSL's in every case, only valid signatures (nearly all of them) get cheaper."""

    __slots__ = ("raw", "key")

    def __init__(self, key: Ed25519PublicKey):
        self.key = key
        self.raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    def verify(self, signature: bytes, message: bytes) -> bool:
        if _SODIUM is not None and len(signature) == 64 and _SODIUM(signature, message, len(message), self.raw) == 0:
            return True
        try:
            self.key.verify(signature, message)
            return True
        except InvalidSignature:
            return False


_by_b64: dict[str, PublicKey] = {}


def public_key(public_b64: str, key: Ed25519PublicKey | None = None) -> PublicKey:
    """The PublicKey for a base64 raw key (cached); raises ValueError as consent.keys.public_from_b64 does."""
    found = _by_b64.get(public_b64)
    if found is None:
        if key is None:
            try:
                key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64, validate=True))
            except Exception as exc:  # same wording as consent.keys.public_from_b64
                raise ValueError(f"not a base64 Ed25519 public key: {exc}") from None
        if len(_by_b64) > 10_000:
            _by_b64.clear()
        found = _by_b64[public_b64] = PublicKey(key)
    return found


def check_chunk(datas: list[bytes], keys: dict[str, str]) -> tuple[bytes, list[str | None]]:
    """Per entry: a status (OK, BAD_SIGNATURE, NOT_BASE64, UNCHECKED) and the key id it was checked under."""
    status = bytearray(len(datas))
    used: list[str | None] = [None] * len(datas)
    for i, data in enumerate(datas):
        cut = split_signature(data)
        if cut is None or cut[0] not in keys:
            status[i] = UNCHECKED
            continue
        kid, sig_b64, message = cut
        try:
            key = public_key(keys[kid])
        except ValueError:
            status[i] = UNCHECKED
            continue
        used[i] = kid
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except (binascii.Error, ValueError):
            status[i] = NOT_BASE64
            continue
        try:
            status[i] = OK if key.verify(sig, message) else BAD_SIGNATURE
        except Exception:
            status[i] = UNCHECKED
            used[i] = None
    return bytes(status), used


# ---- the worker side ------------------------------------------------------------------------------------------


def _read_exact(stream, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        part = stream.read(n - len(buf))
        if not part:
            return None
        buf += part
    return bytes(buf)


def parse_chunk(datas: list[bytes]) -> list[tuple[int, str]]:
    """consent.entries.parse_entry on each entry: [(position, message)] of those it refuses, in order."""
    from consent.entries import EntryError, parse_entry

    errors = []
    for i, data in enumerate(datas):
        try:
            parse_entry(data)
        except EntryError as exc:
            errors.append((i, str(exc)))
    return errors


def serve(stdin=None, stdout=None) -> None:
    """Worker loop, until the parent closes the pipe: (entries, keys, parse) in; if `parse`, the parse verdicts
    (parse_chunk) out first, then (statuses, key ids) of the signatures (check_chunk)."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing may write into the protocol stream by accident

    def reply(obj) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_HEADER.pack(len(data)) + data)
        stdout.flush()

    while True:
        header = _read_exact(stdin, _HEADER.size)
        if header is None:
            return
        payload = _read_exact(stdin, _HEADER.unpack(header)[0])
        if payload is None:
            return
        datas, keys, parse = pickle.loads(payload)
        if parse:
            try:
                reply(parse_chunk(datas))
            except Exception:  # never leave the parent waiting; None: parse these in-process
                reply(None)
        try:
            reply(check_chunk(datas, keys))
        except Exception:
            reply((bytes([UNCHECKED]) * len(datas), [None] * len(datas)))


# ---- the parent side ------------------------------------------------------------------------------------------


_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding consent/


class _Worker:
    def __init__(self):
        # -P: not consent/ on sys.path (its modules would shadow others); the project folder instead, so that
        # parse_chunk can import consent.entries.
        self.proc = subprocess.Popen(
            [sys.executable, "-P", os.path.abspath(__file__), _PROJECT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )

    def send(self, datas: list[bytes], keys: dict[str, str], parse: bool) -> None:
        payload = pickle.dumps((datas, keys, parse), protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(_HEADER.pack(len(payload)) + payload)
        self.proc.stdin.flush()

    def receive(self):
        header = _read_exact(self.proc.stdout, _HEADER.size)
        if header is None:
            raise EOFError("signature worker exited")
        payload = _read_exact(self.proc.stdout, _HEADER.unpack(header)[0])
        if payload is None:
            raise EOFError("signature worker exited")
        return pickle.loads(payload)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Pending:
    """Checks of one batch in flight: `parse_errors()` (if asked for) then `collect()`, which must be called
    (also on error paths) to free the workers."""

    def __init__(self, pool: "SignaturePool", parts: list[tuple[int, int, "_Worker"]], keys: dict[str, str], n: int,
                 parse: bool):  # fmt: skip
        self.pool, self.parts, self.keys, self.n, self.parse = pool, parts, keys, n, parse
        self._parsed: list[tuple[int, str]] | None = None
        self._parse_read = False
        self._result: tuple[bytearray, list[str | None]] | None = None
        self._broken = False
        self.waited = 0.0  # seconds the caller spent blocked on the workers' answers

    def parse_errors(self) -> list[tuple[int, str]] | None:
        """[(batch position, parse_entry's message)] for the entries sent, in order; None: parse them yourself."""
        if not self.parse or self._parse_read or self._broken:
            return self._parsed
        self._parse_read = True
        started = time.perf_counter()
        out: list[tuple[int, str]] | None = []
        for start, _, worker in self.parts:  # every worker's verdicts are read, to keep the protocol in step
            try:
                errors = worker.receive()
            except Exception:
                self._broken = True
                return None
            if errors is None or out is None:
                out = None  # a worker could not parse: the caller parses everything itself
            else:
                out.extend((start + i, message) for i, message in errors)
        self._parsed = out
        self.waited += time.perf_counter() - started
        return out

    def collect(self) -> tuple[bytearray, list[str | None]]:
        if self._result is not None:
            return self._result
        if self.parse and not self._parse_read:
            self.parse_errors()  # read past the parse verdicts to the signature verdicts
        started = time.perf_counter()
        status = bytearray([UNCHECKED]) * self.n
        used: list[str | None] = [None] * self.n
        broken = self._broken
        for start, count, worker in self.parts if not broken else ():
            try:
                st, us = worker.receive()
                if len(st) != count or len(us) != count:
                    raise ValueError("signature worker answered for the wrong number of entries")
            except Exception:
                broken = True  # the protocol is out of step: drop the workers, check in-process
                continue
            status[start : start + count] = st
            used[start : start + count] = us
        if broken:
            self.pool._discard()
        self.pool._busy.release()
        self.waited += time.perf_counter() - started
        self._result = (status, used)
        return self._result


class SignaturePool:
    """Worker processes shared by every store of this process, started on first use; one batch at a time."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or max(1, min(2, os.cpu_count() or 1))
        self._procs: list[_Worker] = []
        self._busy = threading.Lock()
        atexit.register(self.shutdown)

    def submit(self, datas: list[bytes], keys: dict[str, str], parse: bool = False) -> Pending | None:
        """Starts checking (parse too, if asked); None if the workers are taken by another batch or cannot run."""
        if not datas or not self._busy.acquire(blocking=False):
            return None
        try:
            if len(self._procs) != self.workers or not all(w.alive() for w in self._procs):
                self._discard()
                self._procs = [_Worker() for _ in range(self.workers)]
            n = len(datas)
            step = -(-n // len(self._procs))
            parts = []
            for w, start in zip(self._procs, range(0, n, step)):
                w.send(datas[start : start + step], keys, parse)
                parts.append((start, min(step, n - start), w))
        except Exception:
            self._discard()
            self._busy.release()
            return None
        return Pending(self, parts, keys, n, parse)

    def _discard(self) -> None:
        procs, self._procs = self._procs, []
        for w in procs:
            try:
                w.proc.kill()
                w.proc.wait(timeout=5)
            except Exception:
                pass

    def shutdown(self) -> None:
        procs, self._procs = self._procs, []
        for w in procs:
            w.stop()


POOL = SignaturePool()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.path.insert(0, sys.argv[1])
    serve()
