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

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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


_publics: dict[str, tuple[str, Ed25519PublicKey]] = {}


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
        pub_b64 = keys[kid]
        cached = _publics.get(kid)
        if cached is None or cached[0] != pub_b64:
            try:
                cached = _publics[kid] = (pub_b64, Ed25519PublicKey.from_public_bytes(base64.b64decode(pub_b64)))
            except Exception:
                status[i] = UNCHECKED
                continue
        used[i] = kid
        try:
            sig = base64.b64decode(sig_b64, validate=True)
        except (binascii.Error, ValueError):
            status[i] = NOT_BASE64
            continue
        try:
            cached[1].verify(sig, message)
        except InvalidSignature:
            status[i] = BAD_SIGNATURE
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


def serve(stdin=None, stdout=None) -> None:
    """Worker loop: (entries, keys) in, (statuses, key ids) out, until the parent closes the pipe."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing may write into the protocol stream by accident
    while True:
        header = _read_exact(stdin, _HEADER.size)
        if header is None:
            return
        payload = _read_exact(stdin, _HEADER.unpack(header)[0])
        if payload is None:
            return
        datas, keys = pickle.loads(payload)
        try:
            reply = pickle.dumps(check_chunk(datas, keys), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # never leave the parent waiting
            reply = pickle.dumps((bytes([UNCHECKED]) * len(datas), [None] * len(datas)))
        stdout.write(_HEADER.pack(len(reply)) + reply)
        stdout.flush()


# ---- the parent side ------------------------------------------------------------------------------------------


class _Worker:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-P", os.path.abspath(__file__)],  # -P: not this folder on sys.path
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )

    def send(self, datas: list[bytes], keys: dict[str, str]) -> None:
        payload = pickle.dumps((datas, keys), protocol=pickle.HIGHEST_PROTOCOL)
        self.proc.stdin.write(_HEADER.pack(len(payload)) + payload)
        self.proc.stdin.flush()

    def receive(self) -> tuple[bytes, list[str | None]]:
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
    """Signature checks of one batch in flight; `collect()` exactly once (also on error paths)."""

    def __init__(self, pool: "SignaturePool", parts: list[tuple[int, int, "_Worker"]], keys: dict[str, str], n: int):
        self.pool, self.parts, self.keys, self.n = pool, parts, keys, n
        self._result: tuple[bytearray, list[str | None]] | None = None

    def collect(self) -> tuple[bytearray, list[str | None]]:
        if self._result is not None:
            return self._result
        status = bytearray([UNCHECKED]) * self.n
        used: list[str | None] = [None] * self.n
        broken = False
        for start, count, worker in self.parts:
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
        self._result = (status, used)
        return self._result


class SignaturePool:
    """Worker processes shared by every store of this process, started on first use; one batch at a time."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or max(1, min(2, os.cpu_count() or 1))
        self._procs: list[_Worker] = []
        self._busy = threading.Lock()
        atexit.register(self.shutdown)

    def submit(self, datas: list[bytes], keys: dict[str, str]) -> Pending | None:
        """Starts checking; None if the workers are taken by another batch or cannot run (check in-process)."""
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
                w.send(datas[start : start + step], keys)
                parts.append((start, min(step, n - start), w))
        except Exception:
            self._discard()
            self._busy.release()
            return None
        return Pending(self, parts, keys, n)

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
    serve()
