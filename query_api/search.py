"""The search-box language, in the spirit of GitHub's audit log search.

    actor:u-andrea action:application.* -outcome:success env:env-prod,env-test
    entity:deployment_plan/plan-q4 kind:role ip:10.0.0.7 after:-7d before:2026-11-01
    "connection refused" deploy

- `qualifier:value`; several values separated by commas mean OR; a leading `-`
  negates the whole term; `action:` values ending in `*` are prefixes.
- `actor:`, `env:`, `infra:` and `entity:KIND/…` take an id or a name, as the viewer
  shows it (`env:Production`), case-insensitively; so do the listing's `?actor=` and
  `?environment=`, through the same `resolve`.
- `after:` / `before:` take a date, an RFC 3339 time, or a relative `-7d`,
  `-12h`, `-30m`, `-2w` (relative to the request time handed in).
- Anything else is free text: words, case-insensitively, over the actor, target and
  related names and ids, the reason, the changes and the details (a word index serves
  them). `conn*` is a word prefix; `"connection refused"` (or `v1.2.3-hotfix`) the words
  in order, as typed. `contains:fused` is a substring anywhere: slower, a scan.

`compile_query` turns the text into the reader's filter model (`storage.filters.Search`);
it writes no SQL. Errors are `SearchSyntaxError` naming the offending token and its
position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from producers.contract.directory import Directory
from producers.contract.event import ENTITY_KINDS
from storage.filters import Match, MatchField, Search

MAX_QUERY_LENGTH = 2000
MAX_TERMS = 50
MAX_VALUES = 100

QUALIFIERS = (
    "actor", "action", "kind", "entity", "env", "outcome", "ip", "after", "before", "infra", "contains",
)  # fmt: skip
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


def token_end(q: str, start: int) -> int:
    """Where the token starting at `start` ends, by the tokenizer's rules (quotes keep spaces)."""
    i, n = start, len(q)
    while i < n and not q[i].isspace():
        if q[i] == '"':
            i += 1
            while i < n and q[i] != '"':
                i += 2 if q[i] == "\\" else 1
        i += 1
    return min(i, n)


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
        if qualifier == "kind" and v.lower() not in ENTITY_KINDS:
            raise bad(f"unknown entity kind {v!r}; expected one of {', '.join(ENTITY_KINDS)}")
        if qualifier == "outcome" and v.lower() not in OUTCOMES:
            raise bad(f"unknown outcome {v!r}; expected one of {', '.join(OUTCOMES)}")
        if qualifier == "entity":
            kind, slash, ident = v.partition("/")
            if not slash or not ident or kind.lower() not in ENTITY_KINDS:
                raise bad(
                    "entity needs KIND/ID or KIND/NAME with a known kind, e.g. entity:application/app-42"
                )
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


# What a qualifier matches in the reader's filter model (storage.filters.Match).
_FIELDS: dict[str, MatchField] = {
    "actor": "actor",
    "action": "action",
    "kind": "kind",
    "entity": "entity",
    "env": "environment",
    "infra": "infrastructure",
    "outcome": "outcome",
    "ip": "ip",
    "contains": "substring",
}
# Where the viewer shows a name, the qualifier takes it too: the directory's kind of each.
_NAMED = {"actor": "user", "env": "environment", "infra": "infrastructure"}


@dataclass(frozen=True)
class Compiled:
    """A search in the reader's filter model, and why it may match nothing when that can
    be told in advance (a name or id the directory does not know)."""

    search: Search
    notes: tuple[str, ...] = ()


def resolve(
    directory: Directory | None, kind: str, values: tuple[str, ...], notes: list[str]
) -> tuple[str, ...]:
    """Ids for names or ids as typed (case-insensitively), the directory's as it is now.

    A value the directory does not know is kept as an id: rows outlive the entities they
    name (a deleted user, a service account), and a note says what was not found."""
    out: list[str] = []
    for value in values:
        ids = directory.resolve(kind, value) if directory is not None else ()
        if not ids:
            if directory is not None:
                notes.append(f"no {kind.replace('_', ' ')} has the id or name {value!r}")
            ids = (value,)
        out.extend(i for i in ids if i not in out)
    return tuple(out)


def compile_query(text: str, *, now: datetime, directory: Directory | None = None) -> Compiled:
    """The query in the reader's filter model (always ANDed inside the caller's scope).

    With `directory`, names become ids (`env:Production`, `actor:"Andrea Fleet"`,
    `entity:application/Billing`); without, values are ids as typed."""
    query = parse(text)
    matches: list[Match] = []
    notes: list[str] = []
    since: int | None = None
    until: int | None = None
    for term in query.terms:
        q, vals = term.qualifier, term.values
        if q in ("after", "before"):
            ms = int(parse_time(vals[0], now=now, token=term.token).timestamp() * 1000)
            # -after:X is before:X and the other way round; several bounds intersect.
            if (q == "after") != term.negated:
                since = ms if since is None else max(since, ms)
            else:
                until = ms if until is None else min(until, ms)
            continue
        if q in _NAMED:
            vals = resolve(directory, _NAMED[q], vals, notes)
        elif q == "entity":
            vals = tuple(
                f"{kind.lower()}/{ident}"
                for v in vals
                for kind, _, label in [v.partition("/")]
                for ident in resolve(directory, kind.lower(), (label,), notes)
            )
        elif q in ("kind", "outcome", "action"):
            vals = tuple(v.lower() for v in vals)
        matches.append(Match(_FIELDS[q], vals, negated=term.negated, quoted=term.token.quoted))
    for item in query.texts:
        matches.append(Match("words", (item.value,), negated=item.negated, quoted=item.token.quoted))
    if since is not None and until is not None and since >= until:
        notes.append("after: is not earlier than before:, so no time is in the range")
    return Compiled(
        Search(matches=tuple(matches), since_ms=since, until_ms=until, source=text.strip()), tuple(notes)
    )
