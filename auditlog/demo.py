"""`auditlog demo`: seed a realistic installation into a store, print how to use it, serve it.

The first run builds the directory (`demo_data.build_directory`), creates one
API key per persona, generates the events ending now and ingests them through
the same parse -> normalize -> enrich -> write steps as every other path. A
second run finds the `demo_meta` row and reuses the store: same events, same
keys. A run interrupted while ingesting resumes: the events are a function of
(seed, count, days, end), all kept in `demo_meta`, so they are regenerated
identically and the writer skips the ones already stored.

DEMO ONLY: the personas' plain API keys are kept in `demo_meta` so that a
second run can print them again. Real keys are only ever stored as digests.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import orjson

from auditlog.demo_data import (
    ANDREA,
    ANDREA_APPS,
    DEVELOPER,
    INFRASTRUCTURE_ID,
    PERSONAS,
    PRIYA,
    TOMAS,
    TOMAS_TEAMS,
    build_directory,
    generate_events,
)
from producers.contract.directory import Directories, Directory
from producers.contract.permissions import Caller, scope_for
from producers.ids import uuid7
from query_api.settings import ApiSettings
from storage.reader import EventFilter, View
from storage.store import Store

BATCH_EVENTS = 20_000
_STATE_KEY = "state"


@dataclass
class DemoState:
    """What `demo_meta` remembers about the seeded demo."""

    seed: int
    events: int
    days: int
    end_ms: int
    status: str = "seeding"  # "seeding" until every event is stored, then "complete"
    keys: dict[str, str] = field(default_factory=dict)
    stored: int = 0
    generate_seconds: float = 0.0
    ingest_seconds: float = 0.0
    seeded_at_ms: int = 0

    @classmethod
    def from_json(cls, raw: str) -> DemoState:
        data: dict[str, Any] = orjson.loads(raw)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()


# -- demo_meta ------------------------------------------------------------------------


def _ensure_meta(store: Store) -> None:
    store.engine.command(
        f"CREATE TABLE IF NOT EXISTS {store.database}.demo_meta "
        "(key String, value String, version UInt64) ENGINE = ReplacingMergeTree(version) ORDER BY key"
    )


def load_state(store: Store) -> DemoState | None:
    """The demo seeded into `store`, if any."""
    _ensure_meta(store)
    rows = store.engine.query(
        f"SELECT argMax(value, version) AS value FROM {store.database}.demo_meta "
        "WHERE key = {k:String} GROUP BY key",
        params={"k": _STATE_KEY},
    )
    return DemoState.from_json(rows[0]["value"]) if rows else None


def _save_state(store: Store, state: DemoState) -> None:
    store.engine.command(
        f"INSERT INTO {store.database}.demo_meta (key, value, version) "
        "VALUES ({k:String}, {v:String}, {ver:UInt64})",
        params={"k": _STATE_KEY, "v": state.to_json(), "ver": time.time_ns()},
    )


# -- seeding ----------------------------------------------------------------------------


def _ensure_keys(store: Store, state: DemoState, directory: Directory) -> bool:
    """One key per persona (the administrator's may ingest). True if a key had to be (re)made."""
    changed = False
    for user_id, label, _ in PERSONAS:
        if user_id not in directory.users:
            continue
        key = state.keys.get(user_id)
        found = store.keys.lookup(key) if key else None
        if found is None or found.user_id != user_id or not found.usable(int(time.time() * 1000)):
            state.keys[user_id], _ = store.keys.create(
                infrastructure=directory.infrastructure,
                user_id=user_id,
                label=f"demo: {label}",
                can_ingest=user_id == PRIYA,
            )
            changed = True
    return changed


def _progress(out: TextIO, done: int, total: int, started: float) -> None:
    elapsed = max(time.perf_counter() - started, 1e-9)
    pct = 100.0 * done / total if total else 100.0
    out.write(f"\r  ingested {done:>9,} / {total:,} events ({pct:5.1f}%), {done / elapsed:,.0f} events/s ")
    out.flush()


def _seed(store: Store, state: DemoState, err: TextIO) -> None:
    directory = build_directory(state.seed)
    store.directory.replace(directory)
    _ensure_keys(store, state, directory)
    _save_state(store, state)

    from stream.batch_ingest import BatchIngestor

    directories = Directories([directory])
    ingestor = BatchIngestor(store, lambda: directories, source="demo")
    end = datetime.fromtimestamp(state.end_ms / 1000, tz=UTC)
    events = generate_events(directory, count=state.events, days=state.days, seed=state.seed, end=end)
    started = time.perf_counter()
    generate_s = ingest_s = 0.0
    done = stored = duplicates = rejected = 0
    batch: list[Any] = []

    def flush() -> None:
        nonlocal ingest_s, done, stored, duplicates, rejected
        t0 = time.perf_counter()
        report = ingestor.ingest(batch, received_at_ms=int(time.time() * 1000))
        ingest_s += time.perf_counter() - t0
        done += report.received
        stored += report.stored
        duplicates += report.duplicates
        rejected += len(report.rejected)
        for r in report.rejected[:3]:
            err.write(f"\n  rejected event {r.event_id}: {r.reason}\n")
        batch.clear()
        _progress(err, done, state.events, started)

    t0 = time.perf_counter()
    for event in events:
        batch.append(event)
        if len(batch) >= BATCH_EVENTS:
            generate_s += time.perf_counter() - t0
            flush()
            t0 = time.perf_counter()
    generate_s += time.perf_counter() - t0
    if batch:
        flush()
    err.write("\n")
    total_s = time.perf_counter() - started
    err.write(
        f"  {done:,} events in {total_s:.1f} s ({done / max(total_s, 1e-9):,.0f} events/s): "
        f"generating {generate_s:.1f} s, ingesting {ingest_s:.1f} s "
        f"(validate, normalize, enrich, write; {done / max(ingest_s, 1e-9):,.0f} events/s)\n"
    )
    if duplicates:
        err.write(f"  {duplicates:,} were already stored (resumed an interrupted run)\n")
    if rejected:
        # The generator's events must all pass the contract; a reject is a bug worth shouting about.
        err.write(f"  WARNING: {rejected:,} events were rejected (see the dead_letters table)\n")
    state.status = "complete"
    state.stored = store.event_count()
    state.generate_seconds = round(generate_s, 2)
    state.ingest_seconds = round(ingest_s, 2)
    state.seeded_at_ms = int(time.time() * 1000)
    _save_state(store, state)


# -- the printed guide --------------------------------------------------------------------


def _count(store: Store, directory: Directory, user_id: str, view: View | None = None) -> int:
    scope = scope_for(
        Caller(user_id=user_id, infrastructure=directory.infrastructure), Directories([directory])
    )
    return store.reader.count(scope=scope, view=view or View(), filters=EventFilter())


def _curl(base: str, key: str, path: str) -> str:
    return f"curl -s -H {shlex.quote('Authorization: Bearer ' + key)} {shlex.quote(base + path)}"


def _ingest_example(base: str, key: str, now_ms: int) -> str:
    # A UUIDv7 of now, so that pasting the command twice shows the dedupe (duplicates: 1).
    event = {
        "schema_version": 1,
        "event_id": str(uuid7(now_ms, now_ms & 0xFFFFFFFF)),
        "occurred_at": datetime.fromtimestamp(now_ms / 1000, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "infrastructure": INFRASTRUCTURE_ID,
        "environment": "env-prod",
        "actor": {"id": PRIYA, "type": "user", "ip": "10.12.0.20"},
        "action": "environment.configure",
        "target": {"kind": "environment", "id": "env-prod"},
        "changes": [{"field": "settings.log_level", "old": "Information", "new": "Warning"}],
        "source": {"service": "lifetime", "host": "lt-01.acme.internal", "version": "11.18.1"},
    }
    return (
        f"curl -s -X POST -H {shlex.quote('Authorization: Bearer ' + key)} "
        f"-H 'Content-Type: application/json' {shlex.quote(base + '/v1/events')} "
        f"-d {shlex.quote(orjson.dumps(event).decode())}"
    )


def _print_guide(
    store: Store, state: DemoState, directory: Directory, settings: ApiSettings, out: TextIO, *, reused: bool
) -> None:
    base = f"http://{settings.host}:{settings.port}"
    total = store.event_count()
    start = datetime.fromtimestamp((state.end_ms - state.days * 86_400_000) / 1000, tz=UTC)
    end = datetime.fromtimestamp(state.end_ms / 1000, tz=UTC)
    andrea_activity = _count(store, directory, PRIYA, View(kind="activity", actor_id=ANDREA))
    developer_log = _count(
        store, directory, PRIYA, View(kind="entity", entity_kind="role", entity_id=DEVELOPER)
    )

    w = out.write
    w("\n")
    w("=" * 100 + "\n")
    w(f"auditlog demo: ACME Corp infrastructure '{INFRASTRUCTURE_ID}' ({'reused' if reused else 'seeded'})\n")
    w("=" * 100 + "\n")
    w(
        f"store        {store.engine.name} database {store.database!r}: {total:,} events from "
        f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC\n"
    )
    w(
        f"directory    {len(directory.users)} users, {len(directory.roles)} roles, "
        f"{len(directory.teams)} teams, "
        f"{len(directory.applications)} applications, {len(directory.deployment_plans)} deployment plans, "
        f"{len(directory.environments)} environments\n"
    )
    if state.ingest_seconds:
        w(
            f"seeding      {state.events:,} events generated in {state.generate_seconds:.1f} s, ingested in "
            f"{state.ingest_seconds:.1f} s ({state.events / max(state.ingest_seconds, 1e-9):,.0f} events/s)\n"
        )
    w("\nURLs\n")
    urls = [
        ("audit log viewer (sign in with a key below)", "/ui/"),
        ("API docs (Authorize with a key below)", "/docs"),
        ("global audit log", "/v1/events?limit=20"),
        (f"Andrea Fleet's activity log ({andrea_activity:,} tasks)", f"/v1/users/{ANDREA}/activity"),
        (
            f"the Developer role's change log ({developer_log:,} tasks)",
            f"/v1/entities/role/{DEVELOPER}/changes",
        ),
        ("search: failed or denied deployments to Production", f"/v1/events?{_failed_prod_query()}"),
        ("who am I, what may I read", "/v1/me"),
    ]
    width = max(len(label) for label, _ in urls) + 2
    for label, path in urls:
        w(f"  {label.ljust(width)}{base}{path}\n")

    w("\nPersonas (each key sees a different slice; the same rules apply to every endpoint)\n")
    examples = {
        PRIYA: [f"/v1/users/{ANDREA}/activity?limit=5", f"/v1/entities/role/{DEVELOPER}/changes?limit=5"],
        TOMAS: [f"/v1/entities/team/{TOMAS_TEAMS[0]}/changes?limit=5", "/v1/events?limit=5"],
        ANDREA: [f"/v1/entities/application/{ANDREA_APPS[0]}/changes?limit=5", "/v1/events?limit=5"],
    }
    refused = {
        TOMAS: f"/v1/users/{ANDREA}/activity",
        ANDREA: f"/v1/entities/role/{DEVELOPER}/changes",
    }
    for user_id, label, description in PERSONAS:
        key = state.keys.get(user_id)
        if user_id not in directory.users or key is None:
            w(f"\n  {label}: user {user_id!r} is not in the stored directory; skipped\n")
            continue
        visible = _count(store, directory, user_id)
        ingest = " (may also ingest)" if user_id == PRIYA else ""
        w(f"\n  {label}: {directory.users[user_id].name} ({user_id})\n")
        w(f"    API key{ingest}: {key}\n")
        w(f"    sees {visible:,} of {total:,} events. {description}\n")
        for path in examples.get(user_id, []):
            w(f"    {_curl(base, key, path)}\n")
        if user_id in refused:
            w(f"    refused with 403: {_curl(base, key, refused[user_id])}\n")

    admin_key = state.keys.get(PRIYA)
    if admin_key:
        w("\nIngest (the administrator's key may ingest; run it twice to see the duplicate skipped)\n")
        w(f"  {_ingest_example(base, admin_key, int(time.time() * 1000))}\n")
    w("\n")
    out.flush()


def _failed_prod_query() -> str:
    return "q=" + quote("action:application.deploy,deployment_plan.execute env:env-prod -outcome:success")


# -- entry point ------------------------------------------------------------------------


def _api_settings(args: argparse.Namespace) -> ApiSettings:
    settings = ApiSettings()
    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    return settings.model_copy(update=updates) if updates else settings


def run_demo(
    args: argparse.Namespace,
    store: Store | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Seed (or reuse) the demo store, print the guide, and serve unless `args.no_serve`.

    `store` lets a caller that already opened one pass it in (chDB opens one data
    folder per process); otherwise the store of `args.store` is opened and closed here.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    owned = store is None
    if store is None:
        from auditlog.cli import _open_store

        store = _open_store(args)
    try:
        return _run(args, store, out, err)
    finally:
        if owned:
            store.close()


def _run(args: argparse.Namespace, store: Store, out: TextIO, err: TextIO) -> int:
    state = load_state(store)
    reused = state is not None and state.status == "complete"
    if state is None:
        # Never mix the demo into a store someone is using for real.
        existing = store.event_count()
        demo = build_directory(args.seed)
        loaded = store.directory.load()
        current = loaded.get(demo.infrastructure)
        foreign_directory = any(d.infrastructure != demo.infrastructure for d in loaded) or (
            current is not None and bool(current.users) and current.model_copy(update={"version": 0}) != demo
        )
        if existing or foreign_directory:
            what = f"{existing:,} events" if existing else "a directory"
            err.write(
                f"error: database {store.database!r} already holds {what} that are not demo data; "
                "point --store at a new folder for the demo\n"
            )
            return 2
        if args.events < 1 or args.days < 1:
            err.write("error: --events and --days must be at least 1\n")
            return 2
        state = DemoState(seed=args.seed, events=args.events, days=args.days, end_ms=int(time.time() * 1000))
        err.write(
            f"seeding the demo: {state.events:,} events over {state.days} days, seed {state.seed}, "
            f"batches of {BATCH_EVENTS:,}\n"
        )
        _seed(store, state, err)
    elif state.status != "complete":
        err.write(
            f"resuming an interrupted seeding ({state.events:,} events, seed {state.seed}); "
            "events already stored are skipped\n"
        )
        _seed(store, state, err)
    else:
        asked = (args.events, args.days, args.seed)
        if asked != (state.events, state.days, state.seed):
            err.write(
                f"note: this store holds the demo seeded with --events {state.events} --days {state.days} "
                f"--seed {state.seed}; reusing it (point --store at a new folder to seed another)\n"
            )
        else:
            err.write("reusing the demo already in this store (nothing ingested)\n")

    checkpoint_dir = _checkpoint(store, args, err)
    directory = store.directory.load().get(build_directory(state.seed).infrastructure) or Directory()
    if _ensure_keys(store, state, directory):
        _save_state(store, state)
    settings = _api_settings(args)
    _print_guide(store, state, directory, settings, out, reused=reused)
    if checkpoint_dir is not None:
        store_flag = f" --store {args.store}" if getattr(args, "store", None) else ""
        out.write(
            f"\ntamper evidence: signed checkpoints in {checkpoint_dir}; check the store against them with\n"
            f"  auditlog verify{store_flag}\n"
        )
    if getattr(args, "no_serve", False):
        return 0
    return _serve(store, settings, err, args)


def _checkpoint(store: Store, args: argparse.Namespace, err: TextIO) -> Path | None:
    """Sign a checkpoint of the seeded logs: an auditor can verify the demo from its first minute."""
    from auditlog.cli import _store_settings
    from stream.checkpointer import Checkpointer, CheckpointSettings

    settings = CheckpointSettings().beside(_store_settings(args))
    if not settings.enabled:
        return None
    for made in Checkpointer.from_settings(store.tree, settings).run(force=True):
        err.write(f"  checkpoint signed: {made.origin}, {made.checkpoint.size:,} leaves\n")
    return settings.anchor_dir


def _serve(store: Store, settings: ApiSettings, err: TextIO, args: argparse.Namespace) -> int:
    import uvicorn

    from auditlog.cli import _store_settings
    from auditlog.embedded import build_embedded
    from auditlog.retention_job import start_purges
    from stream.checkpointer import start_checkpoints

    embedded = build_embedded(store, api_settings=settings)
    ticker = start_checkpoints(store, _store_settings(args))
    purges = start_purges(store, embedded.services.auditor)
    err.write(f"serving on http://{settings.host}:{settings.port} (Ctrl-C to stop)\n")
    # uvicorn handles SIGINT itself; a second Ctrl-C during shutdown can still surface here.
    try:
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.run(embedded.app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        if purges is not None:
            purges.stop()
        if ticker is not None:
            ticker.stop()
    err.write("stopped\n")
    return 0
