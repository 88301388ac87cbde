"""Ed25519 identities: key generation, key ids, PEM files, and the roles a key may act in."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ROLES = ("operator", "partner", "coordinator", "auditor")


def key_id_of(public_raw: bytes) -> str:
    """A key id is the first 16 bytes of SHA-256 over the raw public key, hex: short, stable, collision-safe."""
    return hashlib.sha256(public_raw).hexdigest()[:32]


def public_raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_from_b64(value: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(value, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except Exception as exc:  # binascii.Error, ValueError: both mean "not a key"
        raise ValueError(f"not a base64 Ed25519 public key: {exc}") from None


@dataclass(frozen=True)
class Identity:
    """Who signs: a named party (partner id, 'operator', ...), its role and its private key."""

    name: str
    role: str
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_b64(self) -> str:
        return base64.b64encode(public_raw(self.public_key)).decode()

    @property
    def key_id(self) -> str:
        return key_id_of(public_raw(self.public_key))

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def __repr__(self) -> str:  # never print key material
        return f"Identity(name={self.name!r}, role={self.role!r}, key_id={self.key_id})"

    @classmethod
    def generate(cls, name: str, role: str) -> "Identity":
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
        return cls(name=name, role=role, private_key=Ed25519PrivateKey.generate())

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes <name>.key (PKCS8 PEM, mode 0600) and <name>.pub (base64 raw) plus the role."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{self.name}.key"
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        (d / f"{self.name}.pub").write_text(f"{self.role} {self.public_b64}\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike, name: str) -> "Identity":
        d = Path(directory)
        key_path, pub_path = d / f"{name}.key", d / f"{name}.pub"
        if not key_path.exists():
            raise FileNotFoundError(f"no key for {name!r} in {d} (run `cohort keys init --dir {d}`)")
        private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"{key_path} is not an Ed25519 private key")
        role = pub_path.read_text().split()[0] if pub_path.exists() else "partner"
        return cls(name=name, role=role, private_key=private)


def names_with_role(directory: str | os.PathLike, role: str) -> list[str]:
    """The identities in a keys dir that hold a private key and whose ``<name>.pub`` names ``role``, sorted."""
    d = Path(directory)
    return sorted(p.stem for p in d.glob("*.pub")
                  if (d / f"{p.stem}.key").exists() and p.read_text().split()[:1] == [role])  # fmt: skip
