"""The key directory a deployment shares out: one Ed25519 key per party, one HMAC secret per partner."""

from __future__ import annotations

import os
from pathlib import Path

from consent.keys import Identity


def init_keys(directory: Path, partners: list[str], force: bool = False) -> list[Identity]:
    directory = Path(directory)
    if (directory / "operator.key").exists() and not force:
        raise FileExistsError(f"{directory} already holds keys; pass --force to replace them")
    parties = [("operator", "operator"), ("coordinator", "coordinator"), ("auditor", "auditor")]
    parties += [(p, "partner") for p in partners]
    made = []
    for name, role in parties:
        ident = Identity.generate(name, role)
        ident.save(directory)
        made.append(ident)
        if role == "partner":
            write_secret(directory / f"{name}.hmac", os.urandom(32))
    return made


def write_secret(path: Path, secret: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secret.hex().encode())


def read_secret(path: Path) -> bytes:
    return bytes.fromhex(Path(path).read_text().strip())


def load_identity(directory: Path, name: str) -> Identity:
    return Identity.load(directory, name)
