"""The search-box language, in the spirit of GitHub's audit log search.

    actor:u-andrea action:application.* -outcome:success env:env-prod,env-test
    entity:deployment_plan/plan-q4 kind:role ip:10.0.0.7 after:-7d before:2026-11-01
    "connection refused" deploy

- `qualifier:value`; several values separated by commas mean OR; a leading `-`
  negates the whole term; `action:` values ending in `*` are prefixes.
- `after:` / `before:` take a date, an RFC 3339 time, or a relative `-7d`,
  `-12h`, `-30m`, `-2w` (relative to the request time handed in).
- Anything else is free text, matched case-insensitively over actor, target and
  related names, ids, the reason and the details; quote it to keep spaces.

`compile_query` turns the text into a `SearchClause`: a SQL fragment over fixed
column names with every value a bound parameter. Errors are `SearchSyntaxError`
naming the offending token and its position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from producers.contract.event import ENTITY_KINDS
from storage.reader import SearchClause

MAX_QUERY_LENGTH = 2000
MAX_TERMS = 50
MAX_VALUES = 100

QUALIFIERS = ("actor", "action", "kind", "entity", "env", "outcome", "ip", "after", "before", "infra")
OUTCOMES = ("success", "failure", "denied")
_RELATIVE = re.compile(r"^-(\d{1,5})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class SearchSyntaxError(ValueError):
    def __init__(self, message: str, *, token: str, position: int) -> None:
        super().__init__(f"{message} (token {token!r} at position {position})")
        self.message = message
        self.token = token
        self.position = position


@dataclass(frozen=True)
class Token:
    text: str
    position: int
    quoted: bool = False


@dataclass(frozen=True)
class Term:
    """One qualifier term, e.g. `-outcome:failure,denied`."""

    qualifier: str
    values: tuple[str, ...]
    negated: bool
    token: Token


@dataclass(frozen=True)
class Text:
    value: str
    negated: bool
    token: Token


@dataclass
class Query:
    terms: list[Term] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)


def tokenize(text: str) -> list[Token]:
    """Split on whitespace, keeping double-quoted runs (with \\" escapes) together."""
    if len(text) > MAX_QUERY_LENGTH:
        raise SearchSyntaxError(
            f"query longer than {MAX_QUERY_LENGTH} characters", token=text[:20] + "…", position=0
        )
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start = i
        buf: list[str] = []
        quoted = False
        while i < n and not text[i].isspace():
            if text[i] == '"':
                quoted = True
                close = i + 1
                chunk: list[str] = []
                while close < n and text[close] != '"':
                    if text[close] == "\\" and close + 1 < n:
                        close += 1
                    chunk.append(text[close])
                    close += 1
                if close >= n:
                    raise SearchSyntaxError("unterminated quote", token=text[i:], position=i)
                buf.append("".join(chunk))
                i = close + 1
            else:
                buf.append(text[i])
                i += 1
        tokens.append(Token("".join(buf), start, quoted))
        if len(tokens) > MAX_TERMS:
            raise SearchSyntaxError(f"more than {MAX_TERMS} terms", token=tokens[-1].text, position=start)
    return tokens


def _split_values(raw: str, token: Token) -> tuple[str, ...]:
    values = tuple(v.strip() for v in raw.split(","))
    if not raw or any(not v for v in values):
        raise SearchSyntaxError("empty value", token=token.text, position=token.position)
    if len(values) > MAX_VALUES:
        raise SearchSyntaxError(f"more than {MAX_VALUES} values", token=token.text, position=token.position)
    return values


def parse(text: str) -> Query:
    query = Query()
    for token in tokenize(text):
        body = token.text
        negated = False
        if body.startswith("-") and len(body) > 1 and not token.text[1:2].isdigit():
            negated, body = True, body[1:]
        qualifier, sep, rest = body.partition(":")
        if sep and not token.quoted and re.fullmatch(r"[a-z_]+", qualifier):
            if qualifier not in QUALIFIERS:
                raise SearchSyntaxError(
                    f"unknown qualifier {qualifier!r}; expected one of {', '.join(QUALIFIERS)}",
                    token=token.text,
                    position=token.position,
                )
            values = _split_values(rest, token)
            _check(qualifier, values, token)
            query.terms.append(Term(qualifier, values, negated, token))
        elif sep and token.quoted and token.text.split(":", 1)[0] in QUALIFIERS:
            # actor:"Andrea Fleet": the qualifier survives the quotes.
            values = _split_values(rest, token)
            _check(qualifier, values, token)
            query.terms.append(Term(qualifier, values, negated, token))
        else:
            if not body.strip():
                raise SearchSyntaxError("empty search term", token=token.text, position=token.position)
            query.texts.append(Text(body, negated, token))
    return query


def _check(qualifier: str, values: tuple[str, ...], token: Token) -> None:
    def bad(message: str) -> SearchSyntaxError:
        return SearchSyntaxError(message, token=token.text, position=token.position)

    for v in values:
        if len(v) > 256:
            raise bad("value longer than 256 characters")
        if qualifier == "kind" and v not in ENTITY_KINDS:
            raise bad(f"unknown entity kind {v!r}; expected one of {', '.join(ENTITY_KINDS)}")
        if qualifier == "outcome" and v not in OUTCOMES:
            raise bad(f"unknown outcome {v!r}; expected one of {', '.join(OUTCOMES)}")
        if qualifier == "entity":
            kind, slash, ident = v.partition("/")
            if not slash or not ident or kind not in ENTITY_KINDS:
                raise bad("entity needs KIND/ID with a known kind, e.g. entity:application/app-42")
        if qualifier == "action" and "*" in v.rstrip("*"):
            raise bad("* is only allowed at the end of an action, as a prefix wildcard")
    if qualifier in ("after", "before") and len(values) != 1:
        raise bad(f"{qualifier}: takes one time")


def parse_time(value: str, *, now: datetime, token: Token | None = None) -> datetime:
    """A date, an RFC 3339 time (no offset means UTC) or a relative `-7d`."""
    match = _RELATIVE.match(value)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        tok = token or Token(value, 0)
        raise SearchSyntaxError(
            "not a time: use 2026-11-01, 2026-11-01T10:00:00Z or a relative -7d, -12h, -30m, -2w",
            token=tok.text,
            position=tok.position,
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# Free text looks at what a person would search for; ids too, so pasting one works.
_TEXT_COLUMNS = (
    "actor_id",
    "actor_name",
    "target_id",
    "target_name",
    "arrayStringConcat(related_names, ' ')",
    "arrayStringConcat(related_ids, ' ')",
    "reason",
    "details",
    "changes",
)


def compile_query(text: str, *, now: datetime) -> SearchClause:
    """The query as a SQL fragment with bound parameters (always ANDed inside the caller's scope)."""
    query = parse(text)
    clauses: list[str] = []
    params: dict[str, Any] = {}

    def param(value: Any) -> str:
        name = f"q{len(params)}"
        params[name] = value
        return name

    for term in query.terms:
        q, vals = term.qualifier, list(term.values)
        if q == "actor":
            name = param(vals)
            sql = f"(actor_id IN {{{name}:Array(String)}} OR actor_name IN {{{name}:Array(String)}})"
        elif q == "action":
            exact = [v for v in vals if not v.endswith("*")]
            prefixes = [v.rstrip("*") for v in vals if v.endswith("*")]
            parts = []
            if exact:
                parts.append(f"action IN {{{param(exact)}:Array(String)}}")
            for prefix in prefixes:
                parts.append(f"startsWith(action, {{{param(prefix)}:String}})")
            sql = "(" + " OR ".join(parts) + ")"
        elif q == "kind":
            sql = f"target_kind IN {{{param(vals)}:Array(String)}}"
        elif q == "entity":
            sql = f"hasAny(entity_keys, {{{param(vals)}:Array(String)}})"
        elif q == "env":
            sql = f"environment IN {{{param(vals)}:Array(String)}}"
        elif q == "infra":
            sql = f"infrastructure IN {{{param(vals)}:Array(String)}}"
        elif q == "outcome":
            sql = f"outcome IN {{{param(vals)}:Array(String)}}"
        elif q == "ip":
            sql = f"actor_ip IN {{{param(vals)}:Array(String)}}"
        elif q in ("after", "before"):
            ms = int(parse_time(vals[0], now=now, token=term.token).timestamp() * 1000)
            op = ">=" if q == "after" else "<"
            sql = f"occurred_at {op} fromUnixTimestamp64Milli({{{param(ms)}:Int64}}, 'UTC')"
        else:  # pragma: no cover - parse() only lets known qualifiers through
            raise SearchSyntaxError("unknown qualifier", token=term.token.text, position=term.token.position)
        clauses.append(f"NOT {sql}" if term.negated else sql)
    for item in query.texts:
        needle = param(item.value)
        sql = (
            "("
            + " OR ".join(f"positionCaseInsensitiveUTF8({c}, {{{needle}:String}}) > 0" for c in _TEXT_COLUMNS)
            + ")"
        )
        clauses.append(f"NOT {sql}" if item.negated else sql)
    return SearchClause(sql=" AND ".join(clauses) if clauses else "1", params=params, source=text.strip())
