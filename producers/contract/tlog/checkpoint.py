"""The checkpoint of one log: C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint).

Its text, signed as a note (`note`):

    <origin>
    <tree size, decimal>
    <root hash, base64>
    time <RFC 3339, UTC, milliseconds>
    prev <base64 SHA-256 of the previous checkpoint's whole signed note>   (not on the first)

The two extension lines chain the checkpoints of a log: a verifier holding any one
of them can walk back and tell a checkpoint dropped or replaced.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

from producers.contract.tlog.note import NoteError, Verifier


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    time_ms: int
    prev: bytes | None = None

    def text(self) -> str:
        when = datetime.fromtimestamp(self.time_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root).decode(),
            f"time {when.replace('+00:00', 'Z')}",
        ]
        if self.prev is not None:
            lines.append(f"prev {base64.b64encode(self.prev).decode()}")
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint is origin, size and root hash lines, each ending in a newline")
        origin, size_text, root_text, *extensions = lines[:-1]
        if not size_text.isdigit() or (size_text.startswith("0") and size_text != "0"):
            raise NoteError(f"the tree size {size_text!r} is not a decimal number")
        try:
            root = base64.b64decode(root_text, validate=True)
        except ValueError:
            raise NoteError("the root hash is not base64") from None
        if len(root) != 32:
            raise NoteError("the root hash is not 32 bytes")
        time_ms, prev = None, None
        for line in extensions:
            key, _, value = line.partition(" ")
            if key == "time":
                try:
                    time_ms = int(
                        datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000 + 0.5
                    )
                except ValueError:
                    raise NoteError(f"the time {value!r} is not RFC 3339") from None
            elif key == "prev":
                prev = base64.b64decode(value)
        if time_ms is None:
            raise NoteError("the checkpoint has no time line")
        return cls(origin, int(size_text), root, time_ms, prev)


def note_hash(note: str) -> bytes:
    return hashlib.sha256(note.encode()).digest()


def open_checkpoint(note: str, verifiers: list[Verifier]) -> Checkpoint:
    """The checkpoint of a note signed by one of `verifiers`; NoteError naming why not."""
    return open_signed_checkpoint(note, verifiers)[0]


def open_signed_checkpoint(note: str, verifiers: list[Verifier]) -> tuple[Checkpoint, Verifier]:
    """The checkpoint of a note and the one of `verifiers` whose signature it carries."""
    errors = []
    for verifier in verifiers:
        try:
            return Checkpoint.parse(verifier.verify(note)), verifier
        except NoteError as exc:
            errors.append(str(exc))
    raise NoteError("; ".join(errors) or "no verifier key given")
