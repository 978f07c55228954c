"""The checkpoint signing key on disk, and the verifier keys published beside the checkpoints.

The private key is an Ed25519 PKCS#8 PEM file, mode 0600, created on first use.
Every verifier key the log was ever signed with is appended to
`verifier-keys.txt` in the checkpoint directory, newest last, so that old
checkpoints still verify after a rotation. A rotation replaces the private key
file; the retired private key is not kept.
"""

from __future__ import annotations

import os
from pathlib import Path

from producers.contract.tlog.note import Signer, Verifier

VERIFIER_KEYS = "verifier-keys.txt"


def _write_private(path: Path, pem: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def published_verifiers(directory: Path) -> list[Verifier]:
    path = directory / VERIFIER_KEYS
    if not path.exists():
        return []
    return [Verifier.parse(line) for line in path.read_text().splitlines() if line.strip()]


def _publish(directory: Path, verifier: Verifier) -> None:
    known = {str(v) for v in published_verifiers(directory)}
    if str(verifier) in known:
        return
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / VERIFIER_KEYS, "a") as f:
        f.write(f"{verifier}\n")
        f.flush()
        os.fsync(f.fileno())


def load_or_create(key_file: Path, *, name: str, publish_dir: Path) -> Signer:
    """The signing key, made on first use; its verifier key is published in `publish_dir`."""
    if key_file.exists():
        signer = Signer.from_pem(name, key_file.read_bytes())
    else:
        signer = Signer.generate(name)
        _write_private(key_file, signer.private_pem())
    _publish(publish_dir, signer.verifier)
    return signer


def rotate(key_file: Path, *, name: str, publish_dir: Path) -> Signer:
    """A new signing key in place of the old one; both verifier keys stay published."""
    if key_file.exists():
        _publish(publish_dir, Signer.from_pem(name, key_file.read_bytes()).verifier)
    signer = Signer.generate(name)
    _publish(publish_dir, signer.verifier)
    _write_private(key_file, signer.private_pem())
    return signer
