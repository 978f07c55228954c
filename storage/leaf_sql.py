"""The leaf hash of a stored row, in SQL: `producers.contract.tlog.leaf` computed by ClickHouse.

The view that records a row's leaf (migration 10) and `auditlog verify`'s check of
every row use this one expression, built from the contract's field list, so the
store hashes exactly the bytes a third party's verifier does (tests/test_tlog.py
compares both on real rows).
"""

from __future__ import annotations

from collections.abc import Sequence

from producers.contract.tlog.leaf import PUBLIC_FIELDS, SEALED_FIELDS, VERSION, Kind


def _netstring(expr: str) -> str:
    return f"concat(toString(length({expr})), ':', {expr}, ',')"


def _text(column: str, kind: Kind) -> str:
    if kind == "strs":
        return f"arrayStringConcat(arrayMap(v -> {_netstring('v')}, {column}))"
    if kind == "ms":
        return f"toString(toUnixTimestamp64Milli({column}))"
    if kind in ("int", "uuid"):
        return f"toString({column})"
    return f"toString({column})"  # LowCardinality(String) to String


def _fields(fields: Sequence[tuple[str, Kind]], prefix: str) -> list[str]:
    return [_netstring(_text(prefix + name, kind)) for name, kind in fields]


def sealed_sql(prefix: str = "") -> str:
    """The row's sealed digest (lowercase hex): what a proof carries in place of the internal
    columns it does not disclose."""
    return f"lower(hex(SHA256(concat({', '.join(_fields(SEALED_FIELDS, prefix))}))))"


def body_sql(prefix: str = "") -> str:
    """The leaf's body digest (`producers.contract.tlog.leaf.body_digest`), raw: FixedString(32)."""
    return f"SHA256(concat({', '.join([*_fields(PUBLIC_FIELDS, prefix), _netstring(sealed_sql(prefix))])}))"


def leaf_hash_of_sql(log: str, index: str, occurred_at: str, body: str) -> str:
    """SHA-256(0x00 || leaf data) from a leaf's parts (columns or expressions; `body` raw)."""
    parts = [
        _netstring(f"'{VERSION}'"),
        _netstring(f"toString({log})"),
        _netstring(f"toString({index})"),
        _netstring(f"toString(toUnixTimestamp64Milli({occurred_at}))"),
        _netstring(f"lower(hex({body}))"),
    ]
    return f"SHA256(concat(unhex('00'), {', '.join(parts)}))"


def leaf_hash_sql(prefix: str = "") -> str:
    """SHA-256(0x00 || leaf data) of the row, as FixedString(32); `prefix` qualifies columns."""
    return leaf_hash_of_sql(f"{prefix}log", f"{prefix}leaf_index", f"{prefix}occurred_at", body_sql(prefix))
