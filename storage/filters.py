"""The filter model every read takes, and the one place it becomes SQL.

An `EventFilter` holds the listing's own filters (query parameters) and, optionally, a
`Search`: the search box compiled by `query_api.search` into `Match` terms, ANDed. The
search language never writes SQL; this module does, over fixed column names, with every
value a bound parameter.

Free text is matched against one expression, `SEARCH_TEXT`, that a text index covers
(migration 15): its words are the runs of letters and digits, lower-cased (the index's
`splitByNonAlpha` tokenizer with a `lowerUTF8` preprocessor). `word_tokens` splits a needle
the same way, so that what the index holds and what is asked for agree.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from producers.contract.permissions import ReadScope
from storage.record import KEY_COLUMNS, entity_key
from storage.scope_predicate import scope_predicate

# What free text looks at: what a person would search for, and the ids, so that pasting one works.
SEARCH_TEXT = (
    "concatWithSeparator(' ', actor_id, actor_name, target_id, target_name, "
    "arrayStringConcat(related_ids, ' '), arrayStringConcat(related_names, ' '), reason, details, changes)"
)
WORD_INDEX = (
    f"INDEX words ({SEARCH_TEXT}) "
    f"TYPE text(tokenizer = splitByNonAlpha, preprocessor = lowerUTF8({SEARCH_TEXT}))"
)

# splitByNonAlpha: every ASCII byte that is not a letter or a digit separates words; bytes of
# other characters (é, ü, 中) are parts of words.
_SEPARATORS = re.compile(r"[\x00-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f]+")


def word_tokens(text: str) -> tuple[str, ...]:
    """The words of `text` as the word index holds them."""
    return tuple(t for t in _SEPARATORS.split(text.lower()) if t)


MatchField = Literal[
    "actor",
    "action",
    "kind",
    "entity",
    "environment",
    "infrastructure",
    "outcome",
    "ip",
    # Free text by words: served by the word index.
    "words",
    # Free text as a case-insensitive substring anywhere: a scan, for what words cannot say.
    "substring",
]

# The fields a change log's entity index holds (storage.record.KEY_COLUMNS): what it can
# filter before reading any full row, so the page's LIMIT is pushed down to it.
_COLUMN_OF: dict[str, str] = {
    "actor": "actor_id",
    "action": "action",
    "kind": "target_kind",
    "environment": "environment",
    "infrastructure": "infrastructure",
    "outcome": "outcome",
    "ip": "actor_ip",
}


@dataclass(frozen=True)
class Match:
    """One term of a search: the row's `field` is one of `values` (any), or, with `negated`,
    none of them. `action` and `words` values ending in `*` are prefixes, unless `quoted`
    (the value was typed in quotes: its * is a character). A `words` value of several words
    matches them in order, as typed."""

    field: MatchField
    values: tuple[str, ...]
    negated: bool = False
    quoted: bool = False


@dataclass(frozen=True)
class Search:
    """A compiled search: every match ANDed, and the time range of its after:/before:."""

    matches: tuple[Match, ...] = ()
    since_ms: int | None = None
    until_ms: int | None = None
    # The text the user typed: what a cursor is tied to. Relative times (after:-7d) compile to
    # a new instant on every request, and names to ids as the directory is now: neither can be.
    source: str = ""


@dataclass(frozen=True)
class EventFilter:
    """Filters shared by every view. Empty means no constraint."""

    since_ms: int | None = None
    until_ms: int | None = None
    actor_ids: Sequence[str] = ()
    actions: Sequence[str] = ()
    action_prefixes: Sequence[str] = ()
    kinds: Sequence[str] = ()
    entities: Sequence[tuple[str, str]] = ()
    environments: Sequence[str] = ()
    outcomes: Sequence[str] = ()
    infrastructures: Sequence[str] = ()
    search: Search | None = None

    def fingerprint(self) -> str:
        data: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k != "search"}
        if self.search is not None:
            data["search"] = self.search.source or repr(self.search)
        return hashlib.sha256(orjson.dumps(data, default=list)).hexdigest()[:16]


@dataclass
class Where:
    """A view's predicate in three parts: the caller's scope, the clauses the entity index
    can answer (`keys`: the view's own key and filters on `KEY_COLUMNS`), and those that
    need the full row (`rows`: entities touched, free text, the actor's address)."""

    scope: str
    keys: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def bind(self, value: Any, ctype: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{ctype}}}"

    def add(self, sql: str, *, key: bool) -> None:
        (self.keys if key else self.rows).append(sql)


def where(flt: EventFilter, scope: ReadScope) -> Where:
    """The filter (and the scope, always first) as SQL over audit_events' columns."""
    scope_sql, params = scope_predicate(scope)
    out = Where(scope=f"({scope_sql})", params=params)
    since, until = time_range(flt)
    if since is not None:
        out.add(f"occurred_at >= fromUnixTimestamp64Milli({out.bind(since, 'Int64')}, 'UTC')", key=True)
    if until is not None:
        out.add(f"occurred_at < fromUnixTimestamp64Milli({out.bind(until, 'Int64')}, 'UTC')", key=True)
    plain = [
        Match("actor", tuple(flt.actor_ids)),
        Match("action", (*flt.actions, *(f"{p}*" for p in flt.action_prefixes))),
        Match("kind", tuple(flt.kinds)),
        Match("entity", tuple(entity_key(k, i) for k, i in flt.entities)),
        Match("environment", tuple(flt.environments)),
        Match("outcome", tuple(flt.outcomes)),
        Match("infrastructure", tuple(flt.infrastructures)),
    ]
    for match in [*plain, *(flt.search.matches if flt.search else ())]:
        if match.values:
            sql = _match_sql(match, out)
            out.add(f"NOT {sql}" if match.negated else sql, key=_COLUMN_OF.get(match.field) in KEY_COLUMNS)
    return out


def time_range(flt: EventFilter) -> tuple[int | None, int | None]:
    """The filter's time range, [since, until) in epoch ms: the parameters' and the search's, intersected."""
    if flt.search is None:
        return flt.since_ms, flt.until_ms
    return _later(flt.since_ms, flt.search.since_ms), _earlier(flt.until_ms, flt.search.until_ms)


def _later(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _earlier(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _match_sql(match: Match, out: Where) -> str:
    values = list(match.values)
    if match.field == "action":
        exact = [v for v in values if not v.endswith("*")]
        parts = [f"action IN {out.bind(exact, 'Array(String)')}"] if exact else []
        prefixes = [v.rstrip("*") for v in values if v.endswith("*")]
        parts += [f"startsWith(action, {out.bind(p, 'String')})" for p in prefixes]
        return "(" + " OR ".join(parts) + ")"
    if match.field == "entity":
        return f"hasAny(entity_keys, {out.bind(values, 'Array(String)')})"
    if match.field == "words":
        return "(" + " OR ".join(_words_sql(v, match.quoted, out) for v in values) + ")"
    if match.field == "substring":
        return "(" + " OR ".join(f"{SEARCH_TEXT} ILIKE {out.bind(_like(v), 'String')}" for v in values) + ")"
    return f"{_COLUMN_OF[match.field]} IN {out.bind(values, 'Array(String)')}"


def _words_sql(value: str, quoted: bool, out: Where) -> str:
    prefix = value.endswith("*") and not quoted
    text = value.rstrip("*") if prefix else value
    tokens = list(word_tokens(text))
    if not tokens:
        # Nothing a word can hold (punctuation only): as a substring, or it would match all.
        return f"{SEARCH_TEXT} ILIKE {out.bind(_like(value), 'String')}"
    whole = tokens[:-1] if prefix else tokens
    parts = [f"hasAllTokens({SEARCH_TEXT}, {out.bind(whole, 'Array(String)')})"] if whole else []
    if prefix:
        # The index finds the words that contain the prefix (a scan of its dictionary); the
        # expression keeps the rows where a word starts with it.
        parts.append(f"{SEARCH_TEXT} ILIKE {out.bind(_like(text), 'String')}")
        parts.append(f"match({SEARCH_TEXT}, {out.bind(_word_start(text), 'String')})")
    elif [text.lower()] != tokens:
        # Several words (or one with punctuation, v1.2.3-hotfix): as typed, in order.
        parts.append(f"positionCaseInsensitiveUTF8({SEARCH_TEXT}, {out.bind(text, 'String')}) > 0")
    return "(" + " AND ".join(parts) + ")"


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _word_start(prefix: str) -> str:
    # RE2: a word starts where the text starts or after a separator; the prefix is literal.
    literal = "".join(c if c.isalnum() else "\\" + c for c in prefix)
    return f"(?i)(^|[\\x00-\\x2f\\x3a-\\x40\\x5b-\\x60\\x7b-\\x7f]){literal}"
