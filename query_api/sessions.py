"""Viewer sessions, kept on the server: the browser holds a random session id, never a key.

A session names the key it was opened with (by its hash) and is re-checked
against that key on every request, so revoking or expiring the key ends its
sessions within the key cache interval. A session also ends on sign-out (a POST
carrying the session's CSRF token), after `idle_seconds` without a request, and
`absolute_seconds` after sign-in whatever happens.

Sessions live in the memory of one API process: a restart signs everyone out,
and several API replicas behind one address need sticky routing (or each
replica asks for its own sign-in). The store is not used for them on purpose: a
session is checked on every page, and a lookup per page would cost the store a
query for each.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Session:
    id: str
    key_hash: str
    csrf_token: str
    created_at: float
    last_seen: float


class SessionStore:
    def __init__(self, *, absolute_seconds: float, idle_seconds: float, max_sessions: int = 100_000) -> None:
        self._absolute = absolute_seconds
        self._idle = idle_seconds
        self._max = max_sessions
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, key_hash: str) -> Session:
        now = time.monotonic()
        session = Session(
            id=secrets.token_urlsafe(32),
            key_hash=key_hash,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen=now,
        )
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self._max:
                # Least recently used first: a flood of sign-ins ends idle sessions, not busy ones.
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (its idle clock restarted), or None."""
        if not session_id or len(session_id) > 128:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if now - session.created_at > self._absolute or now - session.last_seen > self._idle:
                del self._sessions[session_id]
                return None
            session.last_seen = now
            self._sessions.move_to_end(session_id)
            return session

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def end_for_key(self, key_hash: str) -> int:
        return self._end_where(lambda s: s.key_hash == key_hash)

    def end_for_key_id(self, key_id: str) -> int:
        return self._end_where(lambda s: s.key_hash.startswith(key_id))

    def _end_where(self, match: Callable[[Session], bool]) -> int:
        with self._lock:
            gone = [sid for sid, s in self._sessions.items() if match(s)]
            for sid in gone:
                del self._sessions[sid]
        return len(gone)

    def __len__(self) -> int:
        return len(self._sessions)


def csrf_ok(session: Session, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(session.csrf_token, token)
