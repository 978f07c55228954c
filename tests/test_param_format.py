"""The engine's fast path for string-list parameters formats exactly as clickhouse-connect does."""

from __future__ import annotations

from typing import Any

from clickhouse_connect.driver.binding import format_bind_value
from hypothesis import given
from hypothesis import strategies as st

from storage.engine import Engine, format_param

# Every character clickhouse-connect escapes, and strings that look like the list's own syntax.
_TRICKY = st.sampled_from(["", "a", "'", "\\", "`", "\t", "\n", "é", "app:x", "', '", "]", "\\'"])
_STRINGS = st.text() | _TRICKY
values = st.one_of(
    st.lists(_STRINGS),
    st.lists(st.uuids().map(str), max_size=50),
    _STRINGS,
    st.integers(),
    st.lists(st.integers()),
)


@given(values)
def test_fast_path_is_identical_to_clickhouse_connect(value: Any) -> None:
    assert format_param(value, format_bind_value) == format_bind_value(value, None, True)


def test_plain_strings_never_reach_the_slow_formatter() -> None:
    def slow(*_: Any) -> str:
        raise AssertionError("took clickhouse-connect's per-character path")

    ids = [f"0190b7c2-5d1e-7a3b-8c4d-{i:012x}" for i in range(20_000)]
    assert format_param(ids, slow) == format_bind_value(ids, None, True)
    assert format_param(["app:a", "team:b"], slow) == "['app:a', 'team:b']"


@given(st.lists(st.text(max_size=8) | _TRICKY, max_size=8))
def test_the_store_reads_back_the_same_strings(chdb_engine: Engine, value: list[str]) -> None:
    got = chdb_engine.query("SELECT {v:Array(String)} AS v", params={"v": value})[0]["v"]
    assert got == value
