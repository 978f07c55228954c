"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys.

A note is its text (non-empty lines, ending in a newline), a blank line, and one
signature line per signer: `— <key name> <base64(key hash || signature)>`. The key
hash is the first 4 bytes of SHA-256(key name || 0x0A || 0x01 || public key); the
signature is Ed25519 over the text's bytes. A verifier key is written
`<name>+<key hash, 8 hex digits>+<base64(0x01 || public key)>`.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_ED25519 = b"\x01"
_DASH = "\u2014"


class NoteError(ValueError):
    """A note that does not parse, or is not signed by the key it is checked against."""


def key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public).digest()[:4]


def _check_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise NoteError(f"a key name has no spaces and no '+': {name!r}")
    return name


@dataclass(frozen=True)
class Verifier:
    name: str
    public: bytes

    @property
    def hash(self) -> bytes:
        return key_hash(self.name, self.public)

    @property
    def key_id(self) -> str:
        return self.hash.hex()

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id}+{base64.b64encode(_ED25519 + self.public).decode()}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        parts = text.strip().split("+", 2)  # the base64 key may hold '+' itself
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<key hash>+<base64 key>")
        name, hash_hex, key_b64 = parts
        try:
            key = base64.b64decode(key_b64, validate=True)
        except ValueError as exc:
            raise NoteError(f"the verifier key's key is not base64: {exc}") from None
        if len(key) != 33 or key[:1] != _ED25519:
            raise NoteError("only Ed25519 verifier keys (type 0x01, 32 bytes) are supported")
        verifier = cls(_check_name(name), key[1:])
        if verifier.key_id != hash_hex.lower():
            raise NoteError(f"the verifier key's hash {hash_hex} does not match its name and key")
        return verifier

    def verify(self, note: str) -> str:
        """The note's text when one of its signatures is this key's; NoteError otherwise."""
        text, signatures = split_note(note)
        for name, blob in signatures:
            if name == self.name and blob[:4] == self.hash:
                try:
                    Ed25519PublicKey.from_public_bytes(self.public).verify(blob[4:], text.encode())
                except InvalidSignature:
                    raise NoteError(f"the signature of {self.name} ({self.key_id}) is not valid") from None
                return text
        raise NoteError(f"the note carries no signature of {self.name} ({self.key_id})")


class Signer:
    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        self._key = key
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.verifier = Verifier(_check_name(name), public)

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, name: str, pem: bytes) -> Signer:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise NoteError("the signing key is not an Ed25519 key")
        return cls(name, key)

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, text: str) -> str:
        if not text.endswith("\n") or "\n\n" in text:
            raise NoteError("a note's text is non-empty lines, each ending in a newline")
        blob = self.verifier.hash + self._key.sign(text.encode())
        return f"{text}\n{_DASH} {self.verifier.name} {base64.b64encode(blob).decode()}\n"

    def __repr__(self) -> str:
        return f"Signer({self.verifier})"


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    text, sep, tail = note.partition("\n\n")
    if not sep or not text:
        raise NoteError("a note is its text, a blank line, then its signature lines")
    signatures = []
    for line in tail.split("\n")[:-1] if tail.endswith("\n") else [None]:
        if line is None or not line.startswith(_DASH + " "):
            raise NoteError("a signature line is '— <name> <base64 signature>' and ends in a newline")
        name, _, b64 = line[2:].partition(" ")
        try:
            blob = base64.b64decode(b64, validate=True)
        except ValueError:
            raise NoteError(f"the signature of {name} is not base64") from None
        if len(blob) < 5:
            raise NoteError(f"the signature of {name} is too short")
        signatures.append((name, blob))
    if not signatures:
        raise NoteError("the note carries no signature")
    return text + "\n", signatures
