"""An analyst's SELECT, run as the caller: over the analyst views cut to the caller's rows, nothing else.

The query is checked by ClickHouse's own parser (`EXPLAIN AST`), never by a reading of the
text of ours, on exactly the text that runs:

    WITH analyst_events AS (SELECT * FROM <db>.analyst_events_for(<the caller's scope>)),
         analyst_log_reads AS (SELECT * FROM <db>.analyst_log_reads_for(<likewise>))
    SELECT * FROM (
    <the query>
    ) SETTINGS <limits>

The scope is applied inside parameterized views (`storage.analyst_view`, migration 12), its
values bound: a view's body is resolved apart from the query that calls it, where a CTE's
body is resolved inside the caller's query, and a lambda it defines under a function's name
(`WITH (x, y) -> 1 AS equals`) would replace that function in the scope's own predicate
(found in review; `tests/test_analyst_sql.py` keeps it out).

- The query must stay inside those parentheses: the tree of `SELECT * FROM (...)` must be one
  SELECT over one subquery, so a `) UNION ALL (SELECT ...` or `) INTO OUTFILE` that breaks
  out is refused, and a second statement, `FORMAT` or `INTO OUTFILE` inside is a syntax error.
- Every table it names is unqualified: `analyst_events` and `analyst_log_reads` are then the
  scoped CTEs above (ClickHouse resolves a CTE's name in every subquery, join, union and CTE
  below it), a CTE of the query's own is itself made of those, and any other name is
  looked up in the connection's current database, which must hold no table
  (`ensure_sandbox`): it fails as unknown. No identifier may start with a database's name
  (`system.tables`, `auditlog.audit_events`, `x IN system.users`).
- Only kinds of node that `EXPLAIN AST` prints with all their children (`_KINDS`): a
  `* APPLY(f)` prints as a bare ColumnsApplyTransformer, hiding what it runs, so it is refused,
  as is any kind not known to be transparent.
- No named lambda: it would be looked up by the function calls of the CTE bodies too (the
  scope's bound values are written as `_CAST(value, type)` there).
- No table function (any function in a FROM clause), no function that reads outside the rows
  (`file`, dictionary and join-table lookups, the server's settings and catalogue), no
  `SETTINGS`, no query parameters.

The time and memory limits are those of every read (`ReadLimits`); the result may hold
`max_rows` rows, past which the query fails with the server's TOO_MANY_ROWS (396).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from producers.contract.permissions import ReadScope
from storage.analyst_view import VIEWS, scoped_name
from storage.engine import Engine, StoreError
from storage.migrations import check_identifier
from storage.reader import ReadLimits
from storage.scope_predicate import SCOPE_VIEW_TYPES, scope_view_args

MAX_QUERY_CHARS: Final = 20_000
FORMATS: Final = {"json": "JSONEachRow", "csv": "CSVWithNames", "parquet": "Parquet"}
# The head of the tree of `SELECT * FROM (<query>)`: one SELECT of `*` over one subquery.
_FRAME: Final = (
    "SelectWithUnionQuery (children 1)",
    " ExpressionList (children 1)",
    "  SelectQuery (children 2)",
    "   ExpressionList (children 1)",
    "    Asterisk",
    "   TablesInSelectQuery (children 1)",
    "    TablesInSelectQueryElement (children 1)",
    "     TableExpression (children 1)",
    "      Subquery (children 1)",
)
_INSIDE: Final = len(_FRAME[-1]) - len(_FRAME[-1].lstrip()) + 1
_NODE = re.compile(r"^(?P<indent> *)(?P<kind>[\w:]+)(?: (?P<name>[^ ]+))?")
# The kinds of node a query may hold: those `EXPLAIN AST` prints with every child, so that
# nothing it runs escapes this check. Any other kind is refused: `* APPLY(f)` prints as a bare
# ColumnsApplyTransformer, hiding the function and any subquery it runs (found in review).
_KINDS: Final = frozenset(
    {
        "ArrayJoin",
        "Asterisk",
        "ColumnsExceptTransformer",
        "ColumnsListMatcher",
        "ColumnsRegexpMatcher",
        "ColumnsReplaceTransformer",
        "ColumnsReplaceTransformer::Replacement",
        "ColumnsTransformerList",
        "ExpressionList",
        "Function",
        "Identifier",
        "InterpolateElement",
        "Literal",
        "OrderByElement",
        "QualifiedAsterisk",
        "QualifiedColumnsListMatcher",
        "QualifiedColumnsRegexpMatcher",
        "SampleRatio",
        "SelectIntersectExceptQuery",
        "SelectQuery",
        "SelectWithUnionQuery",
        "Subquery",
        "TableExpression",
        "TableIdentifier",
        "TableJoin",
        "TablesInSelectQuery",
        "TablesInSelectQueryElement",
        "WindowDefinition",
        "WithElement",
    }
)
# Functions that read outside the rows given: files, other stores, the server's configuration
# and catalogue. (A function in a FROM clause is a table function: refused whatever its name.)
_OUTSIDE: Final = frozenset(
    {
        "file",
        "getserversetting",
        "getsetting",
        "getsettingordefault",
        "hascolumnintable",
        "filesystemavailable",
        "filesystemcapacity",
        "filesystemunreserved",
        "getmacro",
        "serveruuid",
        "currentprofiles",
        "currentroles",
        "enabledroles",
        "defaultroles",
        "getclienthttpheader",
        # The server's identity, build, configuration and state (found in review).
        "getmergetreesetting",
        "getserverport",
        "tcpport",
        "displayname",
        "hostname",
        "fqdn",
        "getoskernelversion",
        "buildid",
        "uptime",
        "currentuser",
        "authenticateduser",
        "pggetuserbyid",
        "enabledprofiles",
        "defaultprofiles",
        "currentschemas",
        "currentqueryid",
        "queryid",
        "initialqueryid",
        "initialquerystarttime",
        "zookeepersessionuptime",
        "transactionid",
        "globalvariable",
        "getmaxtablenamelengthfordatabase",
        "logtrace",
        "showcertificate",
        "generateserialid",
        "demangle",
        "__getscalar",
        "__scalarsubqueryresult",
    }
)
# Prefixes of the same kind: symbol introspection, model files, region dictionaries.
_OUTSIDE_PREFIXES: Final = ("addressto", "naivebayesclassifier", "regionto", "regionin", "regionhierarchy")
_LOOKUPS: Final = ("dictget", "dicthas", "dictisin", "joinget")
# Table functions that are also plain string functions: `format('{} did {}', a, b)`.
_SCALAR_TOO: Final = frozenset({"format"})
_BREAKS: Final = frozenset({"\r", "\x0b", "\x0c", "\x00", "\x85", "\u2028", "\u2029"})


class SqlRefused(ValueError):
    """The query is not one this endpoint runs; the message says why."""


@dataclass(frozen=True)
class SqlResult:
    fmt: str
    data: bytes


class AnalystSql:
    def __init__(self, engine: Engine, *, database: str, limits: ReadLimits) -> None:
        self._engine = engine
        self._db = check_identifier(database)
        self._limits = limits
        self._table_functions: frozenset[str] | None = None

    def _catalogue(self) -> tuple[frozenset[str], frozenset[str]]:
        # The databases as they are now (one may have been made since); the table functions
        # are the server's build.
        databases = frozenset(
            r["name"].lower() for r in self._engine.query("SELECT name FROM system.databases")
        )
        if self._table_functions is None:
            self._table_functions = frozenset(
                r["name"].lower() for r in self._engine.query("SELECT name FROM system.table_functions")
            )
        return databases, self._table_functions

    def ensure_sandbox(self) -> None:
        """Unqualified names other than the views' must resolve to nothing."""
        [row] = self._engine.query(
            "SELECT currentDatabase() AS db, (SELECT count() FROM system.tables "
            "WHERE database = currentDatabase()) AS tables"
        )
        if int(row["tables"]) or row["db"] == self._db:
            raise StoreError(
                f"the store connection's current database {row['db']!r} holds tables: analyst SQL "
                "needs one without any (connect to the server's `default` database, empty)"
            )

    def check(self, query: str) -> None:
        if not query.strip():
            raise SqlRefused("the query is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise SqlRefused(f"the query is longer than {MAX_QUERY_CHARS} characters")
        # No query needs these, and one in a name would print as lines of its author's choosing
        # in the parser's tree (found in review). A line feed in a backquoted name still can:
        # such lines only add nodes to check, and cannot come between a FROM and its function.
        if any(ch in query for ch in _BREAKS):
            raise SqlRefused("control characters and line separators other than a line feed are not allowed")
        try:
            # TSV: a literal's line breaks stay escaped, one node a line.
            tree = self._engine.query_raw(f"EXPLAIN AST SELECT * FROM (\n{query}\n)", fmt="TSV")
        except StoreError as exc:
            raise SqlRefused(f"not one SELECT ClickHouse can parse: {_server_message(exc)}") from None
        lines = tree.decode().split("\n")
        while lines and not lines[-1]:
            lines.pop()
        if tuple(lines[: len(_FRAME)]) != _FRAME:
            raise SqlRefused("one SELECT only: the query must not reach outside its own parentheses")
        databases, table_functions = self._catalogue()
        parents: list[tuple[int, str]] = []  # (indent, kind) of the nodes above this one
        for line in lines[len(_FRAME) :]:
            node = _NODE.match(line)
            if node is None:
                raise SqlRefused(f"cannot check this part of the query: {line.strip()[:80]!r}")
            depth, kind, name = len(node["indent"]), node["kind"], (node["name"] or "")
            if depth < _INSIDE:
                raise SqlRefused("one SELECT only: the query must not reach outside its own parentheses")
            while parents and parents[-1][0] >= depth:
                parents.pop()
            parent = parents[-1][1] if parents else ""
            parents.append((depth, kind))
            if kind == "Set":
                raise SqlRefused("SETTINGS are not allowed: the limits are the server's")
            if kind == "QueryParameter":
                raise SqlRefused("query parameters ({name:Type}) are not allowed: write the values")
            if kind not in _KINDS:
                raise SqlRefused(f"{kind} is not allowed in an analyst query")
            lowered = name.lower()
            if kind == "Function" and lowered == "lambda" and "(alias " in line:
                # A named lambda is looked up by every function call the query's scope holds,
                # ours included: `WITH (v, t) -> '1' AS _CAST` rewrote the scope's bound values,
                # which ClickHouse writes as _CAST(value, type) (found in review).
                raise SqlRefused("a named lambda (WITH ... -> ... AS name) is not allowed: write it out")
            if kind == "Function" and "." in name and name.split(".", 1)[0].lower() in databases:
                raise SqlRefused(f"{name}(): only the analyst views can be read")
            if kind == "Function" and (
                parent == "TableExpression"
                or (lowered in table_functions and lowered not in _SCALAR_TOO)
                or lowered in _OUTSIDE
                or lowered.startswith(_LOOKUPS)
                or lowered.startswith(_OUTSIDE_PREFIXES)
            ):
                if parent == "TableExpression" or lowered in table_functions:
                    raise SqlRefused(f"{name}(): table functions are not allowed, only the analyst views")
                raise SqlRefused(f"{name}() reads outside the analyst views: not allowed")
            if kind in ("Identifier", "TableIdentifier") and "." in name:
                first = name.split(".", 1)[0]
                if kind == "TableIdentifier" or first.lower() in databases:
                    views = ", ".join(VIEWS)
                    raise SqlRefused(f"{name}: only the analyst views can be read ({views}), unqualified")

    def run(self, query: str, scope: ReadScope, *, fmt: str, max_rows: int) -> SqlResult:
        """Check, then run the query over the caller's rows only."""
        if fmt not in FORMATS:
            raise SqlRefused(f"format {fmt!r}: one of {', '.join(FORMATS)}")
        self.check(query)
        self.ensure_sandbox()
        params = scope_view_args(scope)
        args = ", ".join(f"{k} = {{{k}:{t}}}" for k, t in SCOPE_VIEW_TYPES.items())
        # A CTE's body is resolved inside the caller's query, where a lambda it defines under a
        # function's name would replace that function: the bodies here call the parameterized
        # views (resolved apart), with the scope's values bound.
        ctes = ",\n".join(
            f"{name} AS (SELECT * FROM {self._db}.{scoped_name(name)}({args}))" for name in VIEWS
        )
        # Numbers from typed settings, never from the request: SETTINGS takes no bound parameters.
        settings = (
            f"{self._limits.clause()}, max_result_rows = {int(max_rows)}, result_overflow_mode = 'throw'"
        )
        sql = f"WITH {ctes}\nSELECT * FROM (\n{query}\n)\nSETTINGS {settings}"
        return SqlResult(fmt, self._engine.query_raw(sql, params=params, fmt=FORMATS[fmt]))


def _server_message(exc: StoreError) -> str:
    text = str(exc)
    # "Code: 62. DB::Exception: Syntax error: ..." -> what follows the exception name.
    text = text.split("DB::Exception: ", 1)[-1]
    return text.split(" (version ", 1)[0][:500]


def describe_error(exc: StoreError) -> dict[str, Any]:
    """What a failed analyst query tells its author: the server's code and message (their own
    query's problem: an unknown column, a type mismatch, a limit). An unknown table's message
    names the store's real tables ("Maybe you meant ..."): it is replaced."""
    if exc.code in (60, 81):
        views = " and ".join(VIEWS)
        return {"code": exc.code, "detail": f"unknown table: only {views} (or CTEs made of them) can be read"}
    return {"code": exc.code, "detail": _server_message(exc)}
