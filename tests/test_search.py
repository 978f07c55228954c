"""The search-box language: grammar, errors that point at the token, and SQL that binds every value."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.contract.directory import Directory
from producers.contract.event import parse_event
from producers.contract.permissions import ReadScope
from query_api.search import SearchSyntaxError, compile_query, parse, parse_time, tokenize
from storage.filters import Search, where
from storage.reader import EventFilter, View
from storage.store import Store
from stream.messages import Lineage
from stream.transform import process
from tests.grants import ALL, scope, served

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_tokenize_keeps_quoted_runs() -> None:
    tokens = tokenize('actor:"Andrea Fleet" "connection refused"  -kind:role')
    assert [(t.text, t.position) for t in tokens] == [
        ("actor:Andrea Fleet", 0),
        ("connection refused", 21),
        ("-kind:role", 43),
    ]


def test_parse_terms_negation_and_or() -> None:
    q = parse("action:role.* -outcome:failure,denied env:env-prod deploy")
    assert [(t.qualifier, t.values, t.negated) for t in q.terms] == [
        ("action", ("role.*",), False),
        ("outcome", ("failure", "denied"), True),
        ("env", ("env-prod",), False),
    ]
    assert [(t.value, t.negated) for t in q.texts] == [("deploy", False)]


@pytest.mark.parametrize(
    ("text", "token", "position", "message"),
    [
        ("actor:u1 colour:red", "colour:red", 9, "unknown qualifier"),
        ("outcome:maybe", "outcome:maybe", 0, "unknown outcome"),
        ("kind:server", "kind:server", 0, "unknown entity kind"),
        ('actor:u1 "unterminated', '"unterminated', 9, "unterminated quote"),
        ("actor:", "actor:", 0, "empty value"),
        ("outcome:failure,", "outcome:failure,", 0, "empty value"),
        ("after:yesterday", "after:yesterday", 0, "not a time"),
        ("entity:app-1", "entity:app-1", 0, "KIND/ID"),
        ("action:ro*le", "action:ro*le", 0, "prefix wildcard"),
        ("  before:2026-13-45", "before:2026-13-45", 2, "not a time"),
    ],
)
def test_syntax_errors_name_the_token_and_position(
    text: str, token: str, position: int, message: str
) -> None:
    with pytest.raises(SearchSyntaxError) as info:
        compile_query(text, now=NOW)
    assert info.value.token == token
    assert info.value.position == position
    assert message in info.value.message


def test_relative_and_absolute_times() -> None:
    assert parse_time("-7d", now=NOW) == NOW - timedelta(days=7)
    assert parse_time("-12h", now=NOW) == NOW - timedelta(hours=12)
    assert parse_time("-2w", now=NOW) == NOW - timedelta(weeks=2)
    assert parse_time("2026-11-01", now=NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_time("2026-11-01T10:00:00+01:00", now=NOW) == datetime(2026, 11, 1, 9, tzinfo=UTC)


_SQL_VOCABULARY = {
    *("actor_id", "actor_name", "target_id", "target_name", "target_kind", "related_names"),
    *("related_ids", "reason", "details", "changes", "action", "environment", "infrastructure"),
    *("outcome", "actor_ip", "occurred_at", "entity_keys", "UTC", "IN", "OR", "AND", "NOT"),
    *("ILIKE", "startsWith", "hasAny", "hasAllTokens", "match", "concatWithSeparator", "arrayStringConcat"),
    *("positionCaseInsensitiveUTF8", "fromUnixTimestamp64Milli", "0"),
}


@given(st.text(max_size=200))
def test_values_never_reach_the_sql_text(text: str) -> None:
    try:
        compiled = compile_query(text, now=NOW, directory=DIRECTORY)
    except SearchSyntaxError:
        return
    clauses = where(EventFilter(search=compiled.search), ALL)
    sql = " AND ".join([*clauses.keys, *clauses.rows])
    # Only fixed column names, functions, operators and {pN:Type} placeholders make up the SQL.
    skeleton = re.sub(r"\{p\d+:(String|Int64|Array\(String\))\}", " ", sql)
    words = set(re.findall(r"[A-Za-z0-9_]+", skeleton))
    assert words <= _SQL_VOCABULARY, words - _SQL_VOCABULARY
    assert set(re.sub(r"[A-Za-z0-9_\s]", "", skeleton)) <= set("()',>=<")


DIRECTORY = Directory.model_validate(
    {
        "infrastructure": "acme",
        "users": [{"id": "u-priya", "name": "Priya Raman"}, {"id": "u-andrea", "name": "Andrea Fleet"}],
        "environments": [{"id": "env-prod", "name": "Production"}, {"id": "env-test", "name": "Test"}],
        "applications": [{"id": "app-billing", "name": "Billing"}],
    }
)


def _ev(i: int, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(uuid.UUID(int=i + 1)),
        "occurred_at": (NOW - timedelta(days=i)).isoformat(),
        "infrastructure": "acme",
        "environment": "env-prod",
        "actor": {"id": "u-andrea", "name": "Andrea Fleet", "ip": "10.0.0.7"},
        "action": "application.deploy",
        "target": {"kind": "application", "id": "app-billing", "name": "Billing"},
    }
    base.update(over)
    return base


def _search(q: str) -> Search:
    return compile_query(q, now=NOW, directory=DIRECTORY).search


def _ids(store: Store, q: str, scope: ReadScope = ALL) -> list[int]:
    page = store.reader.page(scope=scope, view=View(), filters=EventFilter(search=_search(q)), limit=1000)
    return sorted(uuid.UUID(r["event_id"]).int - 1 for r in page.items)


def test_queries_against_the_store(store: Store) -> None:
    events = [
        _ev(0),
        _ev(1, outcome="failure", reason="Connection refused by env-test", environment="env-test"),
        _ev(2, action="role.update", target={"kind": "role", "id": "developer", "name": "Developer"}),
        _ev(3, actor={"id": "u-priya", "name": "Priya Raman", "ip": "10.0.0.9"}, outcome="denied"),
        _ev(20, details={"version": "v1.2.3-hotfix"}),
        _ev(
            4,
            action="team.member_add",
            target={"kind": "team", "id": "t-pay"},
            related=[{"kind": "user", "id": "u-bob", "name": "Bob Stone"}],
        ),
    ]
    lineage = Lineage(source="test", received_at_ms=0)
    store.writer.write([process(parse_event(e), served(), lineage) for e in events])
    assert _ids(store, "") == [0, 1, 2, 3, 4, 20]
    assert _ids(store, "action:role.*") == [2]
    assert _ids(store, "action:role.*,team.*") == [2, 4]
    assert _ids(store, "-action:application.*") == [2, 4]
    assert _ids(store, "outcome:failure,denied") == [1, 3]
    assert _ids(store, "actor:u-priya") == [3]
    assert _ids(store, 'actor:"Priya Raman"') == [3]
    assert _ids(store, "kind:role,team") == [2, 4]
    assert _ids(store, "entity:user/u-bob") == [4]
    assert _ids(store, "env:env-test") == [1]
    assert _ids(store, "ip:10.0.0.9") == [3]
    assert _ids(store, '"connection REFUSED"') == [1]
    assert _ids(store, "hotfix") == [20]
    assert _ids(store, "bob") == [4]
    assert _ids(store, "after:-2d") == [0, 1, 2]  # inclusive
    assert _ids(store, "before:-3d -kind:team") == [20]
    assert _ids(store, "after:-5d before:-1d outcome:success") == [2, 4]  # before is exclusive
    # Words, not substrings: "refus" is no word of row 1; a prefix and contains: find it.
    assert _ids(store, "refus") == []
    assert _ids(store, "refus*") == [1]
    assert _ids(store, "conn* refused") == [1]
    assert _ids(store, "contains:efuse") == [1]
    assert _ids(store, "-contains:efuse kind:application") == [0, 3, 20]
    assert _ids(store, '"refused connection"') == []  # a phrase keeps its order
    assert _ids(store, "v1.2.3-hotfix") == [20]
    assert _ids(store, "v1.2.3-hotfi*") == [20]
    assert _ids(store, "2.3-hotfix") == [20]
    assert _ids(store, '"hot*"') == []  # quoted: * is a character
    assert _ids(store, "-bob kind:team") == []
    # Names where the viewer shows names, and ids, in any case.
    assert _ids(store, 'actor:"priya RAMAN"') == [3]
    assert _ids(store, "actor:U-PRIYA") == [3]
    assert _ids(store, "env:test") == [1]
    assert _ids(store, "env:Production,ENV-TEST -kind:team,role") == [0, 1, 3, 20]
    assert _ids(store, "entity:application/billing kind:Application outcome:DENIED") == [3]
    assert _ids(store, "-after:-3d") == [4, 20]
    # The same query through a narrower scope never widens it.
    dev = scope(apps=["app-billing"])
    assert _ids(store, "", dev) == [0, 1, 3, 20]
    assert _ids(store, "kind:role", dev) == []
    assert _ids(store, "-kind:application", dev) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    q=st.lists(
        st.sampled_from(
            [
                "action:role.*",
                "-action:application.*",
                "kind:team",
                "-kind:application",
                "outcome:failure,denied",
                "-outcome:success",
                "actor:u-andrea",
                "bob",
                "-bob",
                "entity:application/app-billing",
                "after:-3d",
                "' OR 1=1 --",
                '"\\"); DROP TABLE x; --"',
            ]
        ),
        max_size=4,
    ).map(" ".join),
    apps=st.sets(st.sampled_from(["app-billing", "app-other"])),
    teams=st.sets(st.sampled_from(["t-pay", "t-other"])),
    infra=st.booleans(),
)
def test_a_query_never_returns_a_row_outside_the_scope(
    store: Store, q: str, apps: set[str], teams: set[str], infra: bool
) -> None:
    if store.event_count() == 0:
        events = [
            _ev(0),
            _ev(1, action="role.update", target={"kind": "role", "id": "developer"}),
            _ev(
                2,
                action="team.member_add",
                target={"kind": "team", "id": "t-pay"},
                outcome="failure",
                related=[{"kind": "user", "id": "u-bob", "name": "Bob"}],
            ),
            _ev(3, target={"kind": "application", "id": "app-other"}, outcome="denied"),
        ]
        store.writer.write([process(parse_event(e), served(), Lineage("t", 0)) for e in events])
    caller = scope(infra=infra, apps=apps, manage_teams=teams)
    scoped = store.reader.page(scope=caller, view=View(), filters=EventFilter(search=_search(q)), limit=1000)
    for row in scoped.items:
        assert caller.allows(_scope_of(store, row["event_id"]))
    # And the scoped result is exactly the unscoped result filtered by the rule.
    everything = store.reader.page(scope=ALL, view=View(), filters=EventFilter(search=_search(q)), limit=1000)
    expected = {r["event_id"] for r in everything.items if caller.allows(_scope_of(store, r["event_id"]))}
    assert {r["event_id"] for r in scoped.items} == expected


def _scope_of(store: Store, event_id: str) -> str:
    rows = store.engine.query(
        f"SELECT scope_key FROM {store.database}.audit_events WHERE event_id = toUUID({{e:String}})",
        params={"e": event_id},
    )
    token: str = rows[0]["scope_key"]
    return token


def test_what_the_directory_does_not_know_is_kept_as_an_id_with_a_note() -> None:
    compiled = compile_query(
        "env:staging actor:u-gone,Andrea entity:application/Billing", now=NOW, directory=DIRECTORY
    )
    matches = {m.field: m.values for m in compiled.search.matches}
    assert matches == {
        "environment": ("staging",),
        "actor": ("u-gone", "Andrea"),
        "entity": ("application/app-billing",),
    }
    assert compiled.notes == (
        "no environment has the id or name 'staging'",
        "no user has the id or name 'u-gone'",
        "no user has the id or name 'Andrea'",
    )
    assert compile_query("after:-1d before:-2d", now=NOW).notes == (
        "after: is not earlier than before:, so no time is in the range",
    )


def test_relative_time_queries_page_across_requests(store: Store) -> None:
    events = [_ev(i) for i in range(30)]
    store.writer.write([process(parse_event(e), served(), Lineage("t", 0)) for e in events])
    first = store.reader.page(
        scope=ALL, view=View(), filters=EventFilter(search=_search("after:-60d")), limit=10
    )
    assert first.next_cursor is not None
    # The next request compiles -60d against a later clock: the cursor must still be accepted.
    later = NOW + timedelta(seconds=5)
    second = store.reader.page(
        scope=ALL,
        view=View(),
        filters=EventFilter(search=compile_query("after:-60d", now=later).search),
        limit=10,
        cursor=first.next_cursor,
    )
    assert {r["event_id"] for r in second.items}.isdisjoint({r["event_id"] for r in first.items})
    assert len(second.items) == 10
