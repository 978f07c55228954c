"""Live updates of a log page: how many new events match its search, as server-sent events.

A page's own address answers `Accept: text/event-stream` with this stream, after the same
session, permission and search checks as the page, so a stream can count only what the page
could show. Every few seconds it counts the rows newer than the newest one shown and sends the
count when it changes; the browser offers to show them (and can pause). The stream is one read,
recorded when it opens; the rows, when shown, are a page read like any other. It ends when the
client goes, when its session ends (a revoked key, sign-out) or after `live_max_s`, and the
browser's EventSource opens the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import orjson
from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse

from query_api.deps import Services, caller_from_session
from storage.engine import StoreError
from storage.reader import EventFilter


def wants_live(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def _message(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: {orjson.dumps(data).decode()}\n\n".encode()


def live_stream(
    request: Request,
    services: Services,
    *,
    session_id: str,
    key_id: str | None,
    count: Callable[[EventFilter], int],
    filters: EventFilter,
    after_ms: int,
) -> StreamingResponse:
    """The stream of `count(rows newer than after_ms)`, sent when it changes."""
    settings = services.settings
    newer = EventFilter(
        since_ms=after_ms + 1 if filters.since_ms is None else max(filters.since_ms, after_ms + 1),
        until_ms=filters.until_ms,
        search=filters.search,
    )

    def tick() -> int | None:
        # A turn at the store like any read of this key; none free now: try at the next tick.
        try:
            with services.read_slots.hold(key_id or session_id):
                return count(newer)
        except HTTPException:
            return None

    async def events() -> AsyncIterator[bytes]:
        deadline = time.monotonic() + settings.live_max_s
        last: int | None = None
        # Reconnect after a few seconds when the stream ends or the connection drops.
        yield f"retry: {int(settings.live_interval_s * 1000)}\n\n".encode()
        while time.monotonic() < deadline:
            if await request.is_disconnected():
                return
            if caller_from_session(services, session_id) is None:
                yield _message("end", {"reason": "signed out"})
                return
            try:
                n = await run_in_threadpool(tick)
            except StoreError:
                yield _message("unavailable", {})
                return
            if n is not None and n != last:
                yield _message("count", {"new": n})
                last = n
            await asyncio.sleep(settings.live_interval_s)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
