"""Retention: how long each infrastructure keeps its rows, the legal holds that suspend it, and
the purge that applies both.

A policy belongs to one infrastructure (its administrators set it): a default period and
rules by environment and by entity kind (the kind of a row's target). A row is kept for
the longest period of the rules that match it, or the default when none does, so a rule
can only lengthen what another matching rule keeps; with no default, rows no rule matches
are kept for ever, and an infrastructure without a policy keeps everything.

A legal hold (by environment, entity (as target or related), actor, time range, or any
conjunction of these; none of them: the whole infrastructure) suspends the purge of every
row it covers for as long as it is not lifted, whatever the policy says.

A purge, in this order, so that nothing is deleted that is not on record:

1. `plan`: counts of what the policies and holds remove now, by infrastructure, rule and
   month, and of what holds keep; nothing is written. The caller records the plan as an
   `audit_log.purge` event in the log itself (one per infrastructure, whose event id
   becomes the purge's id) before anything is removed, and does not go on if it cannot.
2. `execute`: every row to remove is written to `purged_rows` (its log, leaf, event, rule
   and cutoff: the tombstone that lets `auditlog verify` tell it from a deletion), then
   removed with its change-log rows: a month all of whose rows go is dropped as whole
   parts (`DROP PARTITION`), any other by a mutation restricted to the tombstoned ids, so
   a row that arrived after the tombstones were written is never removed without one.

What a purge never removes: the records of retention itself (`RETENTION_ACTIONS`), the
Merkle leaves (the signed tree still verifies and still proves when a purged event
occurred), the event keys (a replay of a purged event is a duplicate, not a new row), and
the tombstones. On a ClickHouse cluster (`cluster=`), the mutations and drops go to each
node's `_local` tables `ON CLUSTER` (storage.cluster_ddl); that path is argued, not tested
(no server runs where this project is tested).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import orjson

from storage.engine import Engine
from storage.migrations import check_identifier
from storage.writer import write_lock

DAY_MS: Final = 86_400_000
MAX_DAYS: Final = 36_500
RETENTION_ACTIONS: Final = (
    "audit_log.purge",
    "audit_log.retention_update",
    "audit_log.legal_hold_create",
    "audit_log.legal_hold_lift",
)
"""Kept whatever the policy: the record of what retention did and of who set it."""
_PARTITION_ID = re.compile(r"^[0-9]{6}$")


@dataclass(frozen=True)
class Rule:
    days: int
    environment: str | None = None
    entity_kind: str | None = None

    def label(self) -> str:
        parts = [f"environment={self.environment}"] if self.environment is not None else []
        if self.entity_kind is not None:
            parts.append(f"entity_kind={self.entity_kind}")
        return f"{' '.join(parts)} ({self.days} days)"


@dataclass(frozen=True)
class Policy:
    default_days: int | None
    rules: tuple[Rule, ...] = ()

    def __post_init__(self) -> None:
        days = [r.days for r in self.rules] + ([self.default_days] if self.default_days is not None else [])
        if any(not 1 <= d <= MAX_DAYS for d in days):
            raise ValueError(f"a retention period is 1 to {MAX_DAYS} days")
        if any(r.environment is None and r.entity_kind is None for r in self.rules):
            raise ValueError("a rule names an environment, an entity kind or both")

    def default_label(self) -> str:
        return f"default ({self.default_days} days)"

    def to_json(self) -> dict[str, Any]:
        return {
            "default_days": self.default_days,
            "rules": [{k: v for k, v in asdict(r).items() if v is not None} for r in self.rules],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        return cls(
            default_days=data.get("default_days"),
            rules=tuple(
                Rule(days=int(r["days"]), environment=r.get("environment"), entity_kind=r.get("entity_kind"))
                for r in data.get("rules", ())
            ),
        )


@dataclass(frozen=True)
class StoredPolicy:
    infrastructure: str
    policy: Policy
    updated_at_ms: int
    updated_by: str


@dataclass(frozen=True)
class LegalHold:
    hold_id: str
    infrastructure: str
    name: str
    reason: str
    created_at_ms: int
    created_by: str
    environment: str | None = None
    entity: str | None = None
    """`kind/id`: rows with the entity as their target or as a related entity."""
    actor: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    lifted_at_ms: int | None = None
    lifted_by: str | None = None

    @property
    def active(self) -> bool:
        return self.lifted_at_ms is None


@dataclass(frozen=True)
class PlanLine:
    infrastructure: str
    rule: str
    month: str
    rows: int
    oldest_ms: int
    newest_ms: int


@dataclass(frozen=True)
class PurgePlan:
    """What a purge at `now_ms` removes and what holds keep, per infrastructure."""

    now_ms: int
    policies: dict[str, Policy]
    holds: dict[str, list[LegalHold]]
    lines: list[PlanLine]
    held: dict[str, int]
    """Rows that the policy would remove but a hold keeps."""

    def rows(self, infrastructure: str) -> int:
        return sum(line.rows for line in self.lines if line.infrastructure == infrastructure)

    def infrastructures(self) -> list[str]:
        return sorted({line.infrastructure for line in self.lines})

    def details(self, infrastructure: str) -> dict[str, Any]:
        """The plan of one infrastructure as its `audit_log.purge` event records it."""
        return {
            "now": self.now_ms,
            "policy": self.policies[infrastructure].to_json(),
            "holds": [h.hold_id for h in self.holds.get(infrastructure, [])],
            "rows": self.rows(infrastructure),
            "held_rows": self.held.get(infrastructure, 0),
            "by_rule": [
                {"rule": line.rule, "month": line.month, "rows": line.rows}
                for line in self.lines
                if line.infrastructure == infrastructure
            ],
        }


@dataclass(frozen=True)
class PurgeResult:
    purged: dict[str, int]
    """Rows tombstoned and removed, per infrastructure."""
    partitions_dropped: list[str] = field(default_factory=list)
    partitions_mutated: list[str] = field(default_factory=list)


class _Sql:
    """Bound parameters for a generated predicate: every value a placeholder, never text."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def bind(self, value: Any, ch_type: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{ch_type}}}"


def _period(sql: _Sql, policy: Policy) -> tuple[str, str]:
    """(days kept, rule applied) of a row of this policy's infrastructure, as SQL."""
    terms = []
    matches = []
    for rule in policy.rules:
        conds = []
        if rule.environment is not None:
            conds.append(f"environment = {sql.bind(rule.environment, 'String')}")
        if rule.entity_kind is not None:
            conds.append(f"target_kind = {sql.bind(rule.entity_kind, 'String')}")
        match = " AND ".join(conds)
        days = sql.bind(rule.days, "UInt32")
        terms.append(f"if({match}, {days}, 0)")
        matches.append((match, days, sql.bind(rule.label(), "String")))
    default = sql.bind(policy.default_days or 0, "UInt32")
    longest = f"greatest(0, {', '.join(terms)})" if terms else "0"
    period = f"if({longest} = 0, {default}, {longest})"
    label_terms = [f"{m} AND {d} = {longest}, {label}" for m, d, label in matches]
    default_label = sql.bind(policy.default_label(), "String")
    label = f"multiIf({', '.join(label_terms)}, {default_label})" if label_terms else default_label
    return period, label


def _hold(sql: _Sql, hold: LegalHold) -> str:
    conds = ["1"]
    if hold.environment is not None:
        conds.append(f"environment = {sql.bind(hold.environment, 'String')}")
    if hold.entity is not None:
        conds.append(f"has(entity_keys, {sql.bind(hold.entity, 'String')})")
    if hold.actor is not None:
        conds.append(f"actor_id = {sql.bind(hold.actor, 'String')}")
    if hold.since_ms is not None:
        conds.append(f"occurred_at >= fromUnixTimestamp64Milli({sql.bind(hold.since_ms, 'Int64')}, 'UTC')")
    if hold.until_ms is not None:
        conds.append(f"occurred_at < fromUnixTimestamp64Milli({sql.bind(hold.until_ms, 'Int64')}, 'UTC')")
    return "(" + " AND ".join(conds) + ")"


@dataclass(frozen=True)
class _Selection:
    sql: str
    """SELECT ... FROM audit_events: each row to remove with its rule, cutoff and purge id."""
    held: str
    """SELECT infrastructure, count(): the rows a hold keeps."""
    params: dict[str, Any]


def _selection(
    db: str,
    now_ms: int,
    policies: Mapping[str, Policy],
    holds: Mapping[str, Sequence[LegalHold]],
    purge_ids: Mapping[str, str],
) -> _Selection:
    sql = _Sql()
    now = sql.bind(now_ms, "Int64")
    periods, labels, held, ids = [], [], [], []
    shortest = MAX_DAYS
    for infra in sorted(policies):
        policy = policies[infra]
        is_infra = f"infrastructure = {sql.bind(infra, 'String')}"
        period, label = _period(sql, policy)
        periods += [is_infra, period]
        labels += [is_infra, label]
        active = [h for h in holds.get(infra, []) if h.active]
        if active:
            held += [is_infra, " OR ".join(_hold(sql, h) for h in active)]
        ids += [is_infra, f"toUUID({sql.bind(purge_ids.get(infra, str(uuid.UUID(int=0))), 'String')})"]
        shortest = min([shortest, *(r.days for r in policy.rules), policy.default_days or MAX_DAYS])
    period_sql = f"multiIf({', '.join(periods)}, 0)"
    label_sql = f"multiIf({', '.join(labels)}, '')"
    held_sql = f"multiIf({', '.join(held)}, 0)" if held else "0"
    cutoff = f"{now} - toInt64({period_sql}) * {DAY_MS}"
    expired = (
        # The coarse bound first: it lets ClickHouse skip every month younger than the shortest period.
        f"occurred_at < fromUnixTimestamp64Milli({now} - {shortest * DAY_MS}, 'UTC') "
        f"AND infrastructure IN {sql.bind(sorted(policies), 'Array(String)')} "
        f"AND action NOT IN {sql.bind(list(RETENTION_ACTIONS), 'Array(String)')} "
        f"AND {period_sql} > 0 AND toUnixTimestamp64Milli(occurred_at) < {cutoff}"
    )
    select = (
        f"SELECT log, leaf_index, event_id, occurred_at, infrastructure, {label_sql} AS rule, "
        f"fromUnixTimestamp64Milli({cutoff}, 'UTC') AS cutoff, "
        f"multiIf({', '.join(ids)}, toUUID('00000000-0000-0000-0000-000000000000')) AS purge_id "
        f"FROM {db}.audit_events WHERE {expired} AND NOT {held_sql}"
    )
    held_count = (
        f"SELECT infrastructure, count() AS n FROM {db}.audit_events WHERE {expired} AND {held_sql} "
        "GROUP BY infrastructure"
    )
    return _Selection(select, held_count, sql.params)


def _ms(value: Any) -> int | None:
    return None if value is None else int(value)


class RetentionStore:
    def __init__(self, engine: Engine, *, database: str, cluster: str | None = None) -> None:
        self._engine = engine
        self._db = check_identifier(database)
        self._cluster = check_identifier(cluster) if cluster else None

    # Policies --------------------------------------------------------------------------

    def policies(self, infrastructure: str | None = None) -> dict[str, StoredPolicy]:
        where = "WHERE infrastructure = {infra:String}" if infrastructure is not None else ""
        rows = self._engine.query(
            "SELECT infrastructure, argMax(policy, version) AS policy, "
            "argMax(toUnixTimestamp64Milli(updated_at), version) AS at, argMax(updated_by, version) AS by "
            f"FROM {self._db}.retention_policies {where} GROUP BY infrastructure",
            params={"infra": infrastructure},
        )
        return {
            r["infrastructure"]: StoredPolicy(
                r["infrastructure"], Policy.from_json(orjson.loads(r["policy"])), int(r["at"]), r["by"]
            )
            for r in rows
        }

    def policy(self, infrastructure: str) -> StoredPolicy | None:
        return self.policies(infrastructure).get(infrastructure)

    def set_policy(self, infrastructure: str, policy: Policy, *, by: str, now_ms: int) -> StoredPolicy:
        self._engine.command(
            f"INSERT INTO {self._db}.retention_policies "
            "(infrastructure, version, policy, updated_at, updated_by) "
            "VALUES ({infra:String}, {v:UInt64}, {p:String}, fromUnixTimestamp64Milli({at:Int64}, 'UTC'), "
            "{by:String})",
            params={
                "infra": infrastructure,
                "v": time_version(now_ms),
                "p": orjson.dumps(policy.to_json()).decode(),
                "at": now_ms,
                "by": by,
            },
        )
        return StoredPolicy(infrastructure, policy, now_ms, by)

    # Legal holds -----------------------------------------------------------------------

    def holds(self, infrastructure: str | None = None, *, include_lifted: bool = False) -> list[LegalHold]:
        where = "WHERE infrastructure = {infra:String}" if infrastructure is not None else ""
        having = "" if include_lifted else "HAVING lifted_at IS NULL"
        rows = self._engine.query(
            "SELECT hold_id, infrastructure, argMax(hold, version) AS hold, "
            "argMax(toUnixTimestamp64Milli(lifted_at), version) AS lifted_at, "
            "argMax(lifted_by, version) AS lifted_by "
            f"FROM {self._db}.legal_holds {where} GROUP BY infrastructure, hold_id {having} "
            "ORDER BY infrastructure, hold_id",
            params={"infra": infrastructure},
        )
        out = []
        for r in rows:
            fields = orjson.loads(r["hold"])
            out.append(
                LegalHold(
                    **fields,
                    lifted_at_ms=_ms(r["lifted_at"]),
                    lifted_by=r["lifted_by"] if r["lifted_at"] is not None else None,
                )
            )
        return out

    def _write_hold(self, hold: LegalHold, *, version: int) -> None:
        body = {k: v for k, v in asdict(hold).items() if k not in ("lifted_at_ms", "lifted_by")}
        self._engine.command(
            f"INSERT INTO {self._db}.legal_holds "
            "(infrastructure, hold_id, version, hold, lifted_at, lifted_by) "
            "VALUES ({infra:String}, {id:String}, {v:UInt64}, {hold:String}, "
            "if({lifted:Nullable(Int64)} IS NULL, NULL, "
            "fromUnixTimestamp64Milli({lifted:Nullable(Int64)}, 'UTC')), {by:String})",
            params={
                "infra": hold.infrastructure,
                "id": hold.hold_id,
                "v": version,
                "hold": orjson.dumps(body).decode(),
                "lifted": hold.lifted_at_ms,
                "by": hold.lifted_by or "",
            },
        )

    def create_hold(self, hold: LegalHold) -> LegalHold:
        self._write_hold(hold, version=time_version(hold.created_at_ms))
        return hold

    def hold(self, infrastructure: str, hold_id: str) -> LegalHold | None:
        """One hold of the infrastructure, lifted or not."""
        found = [h for h in self.holds(infrastructure, include_lifted=True) if h.hold_id == hold_id]
        return found[0] if found else None

    def lift(self, hold: LegalHold, *, by: str, now_ms: int) -> LegalHold:
        lifted = LegalHold(**{**asdict(hold), "lifted_at_ms": now_ms, "lifted_by": by})
        self._write_hold(lifted, version=time_version(now_ms))
        return lifted

    def lift_hold(self, infrastructure: str, hold_id: str, *, by: str, now_ms: int) -> LegalHold | None:
        found = self.hold(infrastructure, hold_id)
        if found is None or not found.active:
            return found
        return self.lift(found, by=by, now_ms=now_ms)

    def rows_covered(self, hold: LegalHold) -> int:
        """How many stored rows the hold covers now: a hold that covers none was probably
        meant otherwise, and whoever made it is told."""
        sql = _Sql()
        infra = sql.bind(hold.infrastructure, "String")
        [row] = self._engine.query(
            f"SELECT count() AS n FROM {self._db}.audit_events WHERE infrastructure = {infra} "
            f"AND {_hold(sql, hold)}",
            params=sql.params,
        )
        return int(row["n"])

    # Purges ----------------------------------------------------------------------------

    def plan(self, now_ms: int, *, infrastructures: Sequence[str] | None = None) -> PurgePlan:
        """What a purge now removes, and what holds keep; nothing is written."""
        policies = {i: p.policy for i, p in self.policies().items()}
        if infrastructures is not None:
            policies = {i: p for i, p in policies.items() if i in infrastructures}
        holds: dict[str, list[LegalHold]] = {}
        for hold in self.holds():
            holds.setdefault(hold.infrastructure, []).append(hold)
        if not policies:
            return PurgePlan(now_ms, {}, holds, [], {})
        sel = _selection(self._db, now_ms, policies, holds, {})
        lines = [
            PlanLine(
                r["infrastructure"], r["rule"], r["month"], int(r["n"]), int(r["oldest"]), int(r["newest"])
            )
            for r in self._engine.query(
                "SELECT infrastructure, rule, toString(toYYYYMM(occurred_at)) AS month, count() AS n, "
                "toUnixTimestamp64Milli(min(occurred_at)) AS oldest, "
                f"toUnixTimestamp64Milli(max(occurred_at)) AS newest FROM ({sel.sql}) "
                "GROUP BY infrastructure, rule, month ORDER BY infrastructure, month, rule",
                params=sel.params,
            )
        ]
        held = {r["infrastructure"]: int(r["n"]) for r in self._engine.query(sel.held, params=sel.params)}
        return PurgePlan(now_ms, policies, holds, lines, held)

    def execute(self, plan: PurgePlan, purge_ids: Mapping[str, str]) -> PurgeResult:
        """Tombstone, then remove, what `plan` covers, under `purge_ids` (one per infrastructure:
        the ids of the `audit_log.purge` events already recorded)."""
        policies = {i: plan.policies[i] for i in purge_ids}
        if not policies:
            return PurgeResult({})
        # The holds of the plan and any placed since it was recorded: a hold placed while a
        # purge runs keeps what it covers (one lifted meanwhile still keeps it, this once).
        holds = {i: list(hs) for i, hs in plan.holds.items()}
        planned = {h.hold_id for hs in plan.holds.values() for h in hs}
        for hold in self.holds():
            if hold.hold_id not in planned:
                holds.setdefault(hold.infrastructure, []).append(hold)
        sel = _selection(self._db, plan.now_ms, policies, holds, purge_ids)
        ids = list(purge_ids.values())
        self._engine.command_aside(
            f"INSERT INTO {self._db}.purged_rows "
            "(log, leaf_index, event_id, occurred_at, infrastructure, rule, cutoff, purge_id) "
            "SELECT log, leaf_index, event_id, occurred_at, infrastructure, rule, cutoff, purge_id "
            f"FROM ({sel.sql})",
            params=sel.params,
        )
        dropped: list[str] = []
        mutated: list[str] = []
        for part, whole in self._months(ids).items():
            if whole:
                # Counted again under the writers' lock, and dropped before it is let go: a row
                # written there meanwhile (by this process) makes it a month to mutate instead.
                with write_lock(self._engine, self._db):
                    whole = self._months(ids, month=part).get(part, False)
                    if whole:
                        self._drop(part)
                        dropped.append(part)
            if not whole:
                self._mutate(part, ids)
                mutated.append(part)
        counts = self._engine.query(
            "SELECT infrastructure, uniqExact(event_id) AS n "
            f"FROM {self._db}.purged_rows WHERE purge_id IN {{ids:Array(UUID)}} GROUP BY infrastructure",
            params={"ids": ids},
        )
        return PurgeResult({r["infrastructure"]: int(r["n"]) for r in counts}, dropped, mutated)

    def _months(self, ids: list[str], *, month: str | None = None) -> dict[str, bool]:
        """The months holding rows these purges tombstoned, each with whether every row there
        is (the partition key, which a Distributed table reads too, where _partition_id is not)."""
        only = " AND toYYYYMM(occurred_at) = {month:UInt32}" if month is not None else ""
        rows = self._engine.query(
            "SELECT toString(toYYYYMM(occurred_at)) AS part, count() AS n, "
            f"countIf(event_id IN (SELECT event_id FROM {self._db}.purged_rows "
            "WHERE purge_id IN {ids:Array(UUID)})) AS gone "
            f"FROM {self._db}.audit_events WHERE toYYYYMM(occurred_at) IN "
            f"(SELECT DISTINCT toYYYYMM(occurred_at) FROM {self._db}.purged_rows "
            f"WHERE purge_id IN {{ids:Array(UUID)}}){only} GROUP BY part ORDER BY part",
            params={"ids": ids, "month": int(month) if month is not None else None},
        )
        months = {}
        for r in rows:
            if not _PARTITION_ID.match(r["part"]):
                raise ValueError(f"unexpected partition id {r['part']!r}")
            if int(r["gone"]):
                months[r["part"]] = int(r["gone"]) == int(r["n"])
        return months

    def _targets(self) -> list[str]:
        on = f" ON CLUSTER {self._cluster}" if self._cluster else ""
        suffix = "_local" if self._cluster else ""
        return [f"{self._db}.{table}{suffix}{on}" for table in ("audit_events", "audit_entity_index")]

    def _drop(self, part: str) -> None:
        for target in self._targets():
            # A partition id is the month's digits (checked by _months), not a value to bind:
            # ALTER ... PARTITION ID takes a literal only.
            self._engine.command(f"ALTER TABLE {target} DROP PARTITION ID '{part}'")

    def _mutate(self, part: str, ids: list[str]) -> None:
        # A replicated table runs a mutation whose subquery reads another table only when
        # told to: every replica reads the same tombstones (written before, never changed),
        # so each removes the same rows.
        replicated = ", allow_nondeterministic_mutations = 1" if self._cluster else ""
        for target in self._targets():
            self._engine.command_aside(
                f"ALTER TABLE {target} DELETE WHERE toYYYYMM(occurred_at) = {{part:UInt32}} "
                f"AND event_id IN (SELECT event_id FROM {self._db}.purged_rows "
                "WHERE purge_id IN {ids:Array(UUID)}) "
                f"SETTINGS mutations_sync = 2{replicated}",
                params={"part": int(part), "ids": ids},
            )

    def purge(
        self,
        now_ms: int,
        *,
        record: Callable[[str, dict[str, Any]], str],
        infrastructures: Sequence[str] | None = None,
        dry_run: bool = False,
    ) -> tuple[PurgePlan, PurgeResult]:
        """Plan, record each infrastructure's plan (`record(infrastructure, details)` stores its
        `audit_log.purge` event and returns the event's id, or raises: then nothing of that
        infrastructure is removed), then execute. `dry_run`: the plan only."""
        plan = self.plan(now_ms, infrastructures=infrastructures)
        if dry_run:
            return plan, PurgeResult({})
        ids = {infra: record(infra, plan.details(infra)) for infra in plan.infrastructures()}
        return plan, self.execute(plan, ids)

    def purges(self, infrastructure: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """The purges of an infrastructure, newest first: each `audit_log.purge` event's plan, and
        how many rows its tombstones hold."""
        rows = self._engine.query(
            "SELECT toString(e.event_id) AS purge_id, toUnixTimestamp64Milli(e.occurred_at) AS at, "
            "e.details AS details, ifNull(t.n, 0) AS purged FROM "
            f"(SELECT event_id, occurred_at, details FROM {self._db}.audit_events "
            "WHERE infrastructure = {infra:String} AND action = 'audit_log.purge' "
            "ORDER BY occurred_at DESC LIMIT {limit:UInt32}) AS e LEFT JOIN "
            f"(SELECT purge_id, uniqExact(event_id) AS n FROM {self._db}.purged_rows "
            "WHERE infrastructure = {infra:String} GROUP BY purge_id) AS t ON t.purge_id = e.event_id "
            "ORDER BY at DESC SETTINGS join_use_nulls = 1",
            params={"infra": infrastructure, "limit": limit},
        )
        return [
            {"purge_id": r["purge_id"], "at_ms": int(r["at"]), "purged_rows": int(r["purged"]),
             "plan": orjson.loads(r["details"])}
            for r in rows
        ]  # fmt: skip

    def tombstones(self, log: str) -> dict[int, Tombstone]:
        """Every purged position of a log, with the purge that removed it (`auditlog verify`)."""
        rows = self._engine.query(
            "SELECT leaf_index, toString(event_id) AS event_id, toUnixTimestamp64Milli(cutoff) AS cutoff, "
            "toString(purge_id) AS purge_id, rule, "
            "purge_id IN (SELECT event_id FROM {db}.audit_events WHERE action = 'audit_log.purge') "
            "AS recorded "
            "FROM {db}.purged_rows WHERE log = {log:String}".replace("{db}", self._db),
            params={"log": log},
        )
        return {
            int(r["leaf_index"]): Tombstone(
                r["event_id"], int(r["cutoff"]), r["purge_id"], r["rule"], bool(int(r["recorded"]))
            )
            for r in rows
        }


@dataclass(frozen=True)
class Tombstone:
    event_id: str
    cutoff_ms: int
    purge_id: str
    rule: str
    recorded: bool
    """The purge's own `audit_log.purge` event is in the log."""


_VERSION_GUARD = threading.Lock()
_last_version = 0


def time_version(ms: int) -> int:
    """The version of a policy or hold written at `ms`: later writes win, even within one
    millisecond of this process."""
    global _last_version
    with _VERSION_GUARD:
        _last_version = max(_last_version + 1, ms * 1000)
        return _last_version
