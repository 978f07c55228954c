"""What the viewer shows above a log's rows: the timeline, the facet panel and the total.

Each comes from one aggregate of the reader (`EventReader.timeline`, `.facets`) over the same
scope, view and search as the rows, so none can count a row the listing would hide. Every
control is a plain link to the same page with a term added to, or taken out of, the search:
the page works without script, and a search is always its URL (shareable, bookmarkable).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from producers.contract.event import rfc3339_ms
from query_api.search import parse, token_end
from storage.reader import Timeline

# A facet column and the search qualifier that filters on it.
FACET_QUALIFIERS = {
    "outcome": "outcome",
    "action": "action",
    "actor_id": "actor",
    "target_kind": "kind",
    "environment": "env",
}
OUTCOMES = ("success", "failure", "denied")
HIDE_READS = "-action:audit_log.*"
_BARE = re.compile(r'^[^\s",]+$')


def term(qualifier: str, value: str, *, negated: bool = False) -> str:
    """`qualifier:value` as the search language reads it back (quoted when it must be)."""
    shown = value if _BARE.match(value) else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{'-' if negated else ''}{qualifier}:{shown}"


def with_term(q: str, added: str) -> str:
    return f"{q.strip()} {added}".strip()


def without_time(q: str) -> str:
    """The search without its after:/before: terms: what a zoom replaces."""
    if not q.strip():
        return ""
    starts = [t.token.position for t in parse(q).terms if t.qualifier in ("after", "before")]
    for start in sorted(starts, reverse=True):
        q = (q[:start].rstrip() + " " + q[token_end(q, start) :].lstrip()).strip()
    return q.strip()


def reads_shown(q: str, flag: str | None) -> bool:
    """Log reads are hidden unless asked for, or unless the search itself is about them."""
    return flag == "shown" or "audit_log" in q


@dataclass(frozen=True)
class Bar:
    start: str
    end: str
    x: int
    counts: dict[str, int]
    segments: list[tuple[str, float, float]]
    """(outcome, y, height) in a 0-100 box, stacked from the bottom."""
    href: str
    total: int


def timeline_bars(timeline: Timeline, zoom: Callable[[str, str], str]) -> dict[str, Any]:
    """The timeline as SVG geometry; `zoom(after, before)` is the link to one interval."""
    highest = max((sum(b.counts.values()) for b in timeline.buckets), default=0)
    bars = []
    for i, bucket in enumerate(timeline.buckets):
        start, end = rfc3339_ms(bucket.start_ms), rfc3339_ms(bucket.start_ms + timeline.interval_ms)
        y = 100.0
        segments = []
        for outcome in OUTCOMES:
            n = bucket.counts.get(outcome, 0)
            if n and highest:
                height = max(100.0 * n / highest, 1.5)
                y -= height
                segments.append((outcome, round(y, 2), round(height, 2)))
        total = sum(bucket.counts.values())
        bars.append(Bar(start, end, i, dict(bucket.counts), segments, zoom(start, end), total))
    return {
        "bars": bars,
        "width": max(len(bars), 1),
        "interval_ms": timeline.interval_ms,
        "interval": _interval_text(timeline.interval_ms),
        "since": rfc3339_ms(timeline.since_ms),
        "until": rfc3339_ms(timeline.until_ms),
        "highest": highest,
    }


def _interval_text(ms: int) -> str:
    minutes = ms // 60_000
    if minutes % 1440 == 0:
        days = minutes // 1440
        return "1 day" if days == 1 else f"{days} days"
    if minutes % 60 == 0:
        hours = minutes // 60
        return "1 hour" if hours == 1 else f"{hours} hours"
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


@dataclass(frozen=True)
class FacetItem:
    value: str
    label: str
    count: int
    include_href: str
    exclude_href: str
    active: bool


def facet_panel(
    result: Mapping[str, Any],
    q: str,
    link: Callable[[str], str],
    label: Callable[[str, str, Mapping[str, Any]], str],
) -> list[dict[str, Any]]:
    """Each facet's top values in the caller's scope; a value links to the search with it
    (`include_href`) or without it (`exclude_href`, alt-click)."""
    active = {(t.qualifier, v, t.negated) for t in (parse(q).terms if q.strip() else []) for v in t.values}
    panel = []
    for column, qualifier in FACET_QUALIFIERS.items():
        items = [
            FacetItem(
                value=str(v["value"]),
                label=label(column, str(v["value"]), v),
                count=int(v["count"]),
                include_href=link(with_term(q, term(qualifier, str(v["value"])))),
                exclude_href=link(with_term(q, term(qualifier, str(v["value"]), negated=True))),
                active=(qualifier, str(v["value"]), False) in active,
            )
            for v in result["facets"].get(column, [])
            if v["value"] != ""
        ]
        panel.append({"column": column, "qualifier": qualifier, "items": items})
    return panel
