"""Retention on a schedule, and `auditlog retention show | set | purge`.

The purge itself is `storage.retention`; this module gives it a recorder (the query
service's auditor: each infrastructure's plan becomes an `audit_log.purge` event of the
system actor `auditlog-retention` before anything is removed) and a clock.

Where it runs: in the process that owns the store. Embedded, that is `auditlog serve`
(chDB opens a store in one process). On a ClickHouse server, run it in one replica of the
query service, or as a scheduled `auditlog retention purge` (deploy/kubernetes): two
purges at once remove the same rows, each under its own record, and nothing more.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

import orjson
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from query_api.read_audit import ReadAuditor
from query_api.retention import RETENTION_ACTOR
from storage.retention import Policy, RetentionStore, Rule
from storage.store import Store

log = logging.getLogger("auditlog.retention")


class RetentionSettings(BaseSettings):
    """Env prefix AUDITLOG_RETENTION_."""

    model_config = SettingsConfigDict(env_prefix="AUDITLOG_RETENTION_")

    interval_s: float = Field(
        default=3600,
        ge=0,
        description="how often the serving process purges what expired; 0: never by itself",
    )


def recorder(auditor: ReadAuditor) -> Any:
    def record(infrastructure: str, details: dict[str, Any]) -> str:
        return auditor.record_system(
            infrastructure, actor_id=RETENTION_ACTOR, action="audit_log.purge", details=details
        )

    return record


def purge_once(retention: RetentionStore, auditor: ReadAuditor, *, dry_run: bool = False) -> dict[str, Any]:
    plan, result = retention.purge(int(time.time() * 1000), record=recorder(auditor), dry_run=dry_run)
    return {
        "dry_run": dry_run,
        "planned": {i: plan.rows(i) for i in plan.infrastructures()},
        "held": plan.held,
        "purged": result.purged,
        "partitions_dropped": result.partitions_dropped,
        "partitions_mutated": result.partitions_mutated,
    }


class PurgeTicker:
    """Purges every `interval_s` in a thread of its own; a failed run is logged and tried at the next."""

    def __init__(self, retention: RetentionStore, auditor: ReadAuditor, *, interval_s: float) -> None:
        self._retention = retention
        self._auditor = auditor
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="auditlog-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                summary = purge_once(self._retention, self._auditor)
                if summary["purged"]:
                    log.info("retention purged %s", summary["purged"])
            except Exception:
                log.exception("retention purge failed; tried again in %.0f s", self._interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)


def start_purges(store: Store, auditor: ReadAuditor | None) -> PurgeTicker | None:
    settings = RetentionSettings()
    if auditor is None or settings.interval_s == 0:
        return None
    ticker = PurgeTicker(store.retention, auditor, interval_s=settings.interval_s)
    ticker.start()
    return ticker


# -- the command line ---------------------------------------------------------------------


class RetentionCliError(Exception):
    """A mistake of the command line's user (exit code 2)."""


def _auditor(store: Store) -> ReadAuditor:
    from stream.batch_ingest import BatchIngestor

    directories = store.directory.load()
    return ReadAuditor(BatchIngestor(store, lambda: directories, source="cli"))


def _rule(text: str) -> Rule:
    """`environment=env-prod:2555`, `kind=user:1095` or `environment=env-dev,kind=user:30`."""
    scope, _, days = text.rpartition(":")
    fields: dict[str, str] = {}
    for part in scope.split(","):
        name, _, value = part.partition("=")
        if name not in ("environment", "kind") or not value:
            raise RetentionCliError(f"rule {text!r}: write environment=ID, kind=KIND or both, then :DAYS")
        fields[name] = value
    if not days.isdigit():
        raise RetentionCliError(f"rule {text!r}: the days after ':' are a whole number")
    return Rule(days=int(days), environment=fields.get("environment"), entity_kind=fields.get("kind"))


def cmd_show(args: argparse.Namespace) -> int:
    from auditlog.cli import _open_store

    store = _open_store(args)
    infrastructures = [args.infrastructure] if args.infrastructure else None
    policies = store.retention.policies(args.infrastructure)
    for infra, stored in sorted(policies.items()):
        line = {"infrastructure": infra, "policy": stored.policy.to_json(), "updated_by": stored.updated_by}
        print(orjson.dumps(line).decode())
    for hold in store.retention.holds(args.infrastructure):
        print(orjson.dumps({"legal_hold": asdict(hold)}).decode())
    plan = store.retention.plan(int(time.time() * 1000), infrastructures=infrastructures)
    for infra in plan.infrastructures():
        print(orjson.dumps({"infrastructure": infra, "due": plan.details(infra)}).decode())
    if not policies:
        print("no retention policy: nothing is ever purged", file=sys.stderr)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    from auditlog.cli import _open_store

    if args.keep_forever == (args.default_days is not None):
        raise RetentionCliError("give --default-days N or --keep-forever")
    try:
        policy = Policy(default_days=args.default_days, rules=tuple(_rule(r) for r in args.rule or ()))
    except ValueError as exc:
        raise RetentionCliError(str(exc)) from None
    store = _open_store(args)
    directory = store.directory.load().get(args.infrastructure)
    known = set(directory.environments) if directory is not None else set()
    for rule in policy.rules:
        if rule.environment is not None and rule.environment not in known:
            raise RetentionCliError(
                f"{rule.environment!r} is no environment id of {args.infrastructure!r}'s directory"
            )
    before = store.retention.policy(args.infrastructure)
    # On record before it applies, like the API's PUT /v1/retention.
    _auditor(store).record_system(
        args.infrastructure,
        actor_id="auditlog-cli",
        action="audit_log.retention_update",
        details={
            "before": before.policy.to_json() if before else None,
            "after": policy.to_json(),
            "os_user": getpass.getuser(),
        },
    )
    now_ms = int(time.time() * 1000)
    store.retention.set_policy(args.infrastructure, policy, by=f"cli:{getpass.getuser()}", now_ms=now_ms)
    print(orjson.dumps({"infrastructure": args.infrastructure, "policy": policy.to_json()}).decode())
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from auditlog.cli import _open_store

    store = _open_store(args)
    print(orjson.dumps(purge_once(store.retention, _auditor(store), dry_run=args.dry_run)).decode())
    return 0


def _wrap(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except RetentionCliError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def register(sub: Any) -> None:
    from auditlog.cli import _store_args

    p = sub.add_parser("retention", help="retention policies, legal holds and purges (storage.retention)")
    rsub = p.add_subparsers(dest="retention_command", required=True)
    q = rsub.add_parser("show", help="policies, holds in force, and what a purge now would remove (NDJSON)")
    _store_args(q)
    q.add_argument("--infrastructure", help="only this infrastructure")
    q.set_defaults(func=_wrap(cmd_show))
    q = rsub.add_parser("set", help="set an infrastructure's policy (recorded as audit_log.retention_update)")
    _store_args(q)
    q.add_argument("--infrastructure", required=True)
    q.add_argument("--default-days", type=int, help="keep rows no rule matches this many days")
    q.add_argument("--keep-forever", action="store_true", help="keep rows no rule matches for ever")
    q.add_argument("--rule", action="append", help="environment=ID:DAYS, kind=KIND:DAYS or both (repeatable)")
    q.set_defaults(func=_wrap(cmd_set))
    q = rsub.add_parser("purge", help="remove what expired and no hold keeps, each purge on record first")
    _store_args(q)
    q.add_argument("--dry-run", action="store_true", help="count, remove nothing")
    q.set_defaults(func=_wrap(cmd_purge))
