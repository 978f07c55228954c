"""Event ids: UUIDv7 (RFC 9562), time-ordered so the store's dedupe lookups stay narrow."""

from __future__ import annotations

import secrets
import time
import uuid

_RAND_BITS = 74  # 12 bits of rand_a, 62 of rand_b


def uuid7(ms: int, rand: int) -> uuid.UUID:
    """The UUIDv7 of unix time `ms` with the 74 random bits `rand` (deterministic for tests and demos)."""
    rand &= (1 << _RAND_BITS) - 1
    value = (
        (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    )
    return uuid.UUID(int=value)


def new_event_id() -> str:
    """A fresh event id for a producer: now, with cryptographic randomness."""
    return str(uuid7(time.time_ns() // 1_000_000, secrets.randbits(_RAND_BITS)))
