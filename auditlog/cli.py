"""`auditlog`: the command line. Each subcommand lives in its own function below."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

import orjson

from auditlog.admin_client import AdminClient, AdminError
from producers.contract import strict_json
from producers.contract.directory import DirectoryError, load_directory
from producers.contract.event import RejectCode
from storage.engine import StoreLocked
from storage.store import Store, StoreSettings


class CliError(Exception):
    """A mistake of the command line's user: one line, exit code 2."""


Command = Callable[[argparse.Namespace], int]


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store", type=Path, help="chDB data folder (env AUDITLOG_STORE_PATH; default ./auditlog-data)"
    )


def _store_settings(args: argparse.Namespace) -> StoreSettings:
    settings = StoreSettings()
    if getattr(args, "store", None):
        settings = settings.model_copy(update={"path": args.store})
    return settings


_OPENED: list[Store] = []


def _open_store(args: argparse.Namespace) -> Store:
    store = Store.open(_store_settings(args))
    _OPENED.append(store)
    return store


def cmd_migrate(args: argparse.Namespace) -> int:
    store = _open_store(args)
    print(f"schema is current in database {store.database!r} ({store.engine.name})")
    return 0


def _remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("AUDITLOG_URL"),
        help="go through a running server instead of opening the store (env AUDITLOG_URL)",
    )
    p.add_argument(
        "--key",
        default=os.environ.get("AUDITLOG_KEY"),
        help="API key for --url: Manage Infrastructure and Users (env AUDITLOG_KEY)",
    )


def _remote(args: argparse.Namespace) -> AdminClient | None:
    if not args.url:
        return None
    if not args.key:
        raise CliError("--url needs --key (or AUDITLOG_KEY): an API key with Manage Infrastructure and Users")
    return AdminClient(args.url, args.key)


def _infrastructure(args: argparse.Namespace, store: Store) -> str:
    served = store.directory.load().served
    if args.infrastructure:
        if args.infrastructure not in served:
            raise CliError(
                f"infrastructure {args.infrastructure!r} has no directory here; served: {list(served)}"
            )
        return str(args.infrastructure)
    if len(served) == 1:
        return served[0]
    raise CliError(
        f"pass --infrastructure: this store serves {list(served) or 'none yet (load a directory)'}"
    )


def cmd_directory_load(args: argparse.Namespace) -> int:
    directory = load_directory(args.file, infrastructure=args.infrastructure)
    remote = _remote(args)
    if remote is not None:
        summary = remote.replace_directory(directory)
        where = f"through {args.url}"
    else:
        store = _open_store(args)
        store.directory.replace(directory)
        summary = {k: len(getattr(directory, k)) for k in ("users", "roles", "teams", "applications")}
        where = f"into {store.database!r}"
    print(
        f"directory of {directory.infrastructure!r} loaded {where}: {summary['users']} users, "
        f"{summary['roles']} roles, {summary['teams']} teams, {summary['applications']} applications"
    )
    return 0


def cmd_directory_publish(args: argparse.Namespace) -> int:
    from producers.directory_publisher import publish_directory
    from producers.publisher import ProducerSettings

    directory = load_directory(args.file, infrastructure=args.infrastructure)
    settings = ProducerSettings()
    if args.bootstrap:
        settings = settings.model_copy(update={"bootstrap_servers": args.bootstrap})
    sent = publish_directory(directory, settings, removed=tuple(args.remove), topic=args.topic)
    print(f"published {sent} directory records to {args.topic} at {settings.bootstrap_servers}")
    return 0


def _expiry(args: argparse.Namespace) -> datetime | None:
    if args.expires_in_days is not None:
        if args.expires_in_days <= 0:
            raise CliError("--expires-in-days must be positive")
        return datetime.now(UTC) + timedelta(days=args.expires_in_days)
    return None


def cmd_keys_create(args: argparse.Namespace) -> int:
    expires = _expiry(args)
    remote = _remote(args)
    if remote is not None:
        created = remote.create_key(
            user_id=args.user,
            label=args.label,
            can_ingest=args.ingest,
            can_publish_directory=args.directory_publisher,
            expires_at=expires,
        )
        key = str(created["key"])
        public = {k: v for k, v in created.items() if k != "key"}
    else:
        store = _open_store(args)
        infrastructure = _infrastructure(args, store)
        directory = store.directory.load().get(infrastructure)
        service_only = args.directory_publisher and not args.ingest
        if not service_only and (directory is None or args.user not in directory.users):
            raise CliError(f"user {args.user!r} is not in the directory of {infrastructure!r}; load it first")
        key, made = store.keys.create(
            infrastructure=infrastructure,
            user_id=args.user,
            label=args.label or "",
            can_ingest=args.ingest,
            can_publish_directory=args.directory_publisher,
            expires_at_ms=int(expires.timestamp() * 1000) if expires else None,
        )
        public = made.to_public()
    print(key)
    expiry = f", expires {public['expires_at']}" if public["expires_at"] else ""
    print(
        f"key {public['key_id']} for {public['user_id']} in {public['infrastructure']}{expiry}",
        file=sys.stderr,
    )
    return 0


def _key_state(key: dict[str, object]) -> str:
    if key["revoked"]:
        return "revoked"
    expires = key["expires_at"]
    if isinstance(expires, str) and datetime.fromisoformat(expires) <= datetime.now(UTC):
        return "expired"
    return "active"


def cmd_keys_list(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote is not None:
        keys = remote.list_keys()
    else:
        store = _open_store(args)
        keys = [k.to_public() for k in store.keys.list(infrastructure=args.infrastructure or None)]
    header = (
        ("KEY ID", 17),
        ("INFRASTRUCTURE", 20),
        ("USER", 20),
        ("STATE", 8),
        ("RIGHTS", 17),
        ("EXPIRES", 25),
    )
    print(" ".join(f"{name:<{width}}" for name, width in header) + " LABEL")
    for k in keys:
        rights = [
            r for r, on in (("ingest", k["can_ingest"]), ("directory", k["can_publish_directory"])) if on
        ]
        print(
            f"{k['key_id']:<17} {k['infrastructure']:<20} {k['user_id']:<20} {_key_state(k):<8} "
            f"{','.join(rights) or 'read':<17} {k['expires_at'] or 'never':<25} {k['label']}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    remote = _remote(args)
    if remote is not None:
        revoked = remote.revoke_key(args.key_id)
    else:
        store = _open_store(args)
        found = store.keys.revoke(args.key_id)
        if found is None:
            raise CliError(f"no key {args.key_id!r} in this store (see: auditlog keys list)")
        revoked = found.to_public()
    print(f"revoked key {revoked['key_id']} of {revoked['user_id']} in {revoked['infrastructure']}")
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """Refused input as NDJSON, newest first: every infrastructure's and the unattributed
    (an operator's view, with the store; administrators read theirs at /v1/dead-letters)."""
    store = _open_store(args)
    page = store.dead_letters.page(infrastructure=args.infrastructure, code=args.code, limit=args.limit)
    for item in page.items:
        print(orjson.dumps(item).decode())
    if page.more:
        print(f"(more than {args.limit} match; raise --limit)", file=sys.stderr)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest an NDJSON file into the embedded store through the pipeline steps."""
    from storage.writer import DeadLetter
    from stream.batch_ingest import BatchIngestor
    from stream.checkpointer import start_checkpoints
    from stream.messages import ms_to_ch_time

    store = _open_store(args)
    directory = store.directory.load()
    ingestor = BatchIngestor(store, lambda: directory, source="file")
    # Signed every minute of a long file, and once more at its end.
    ticker = start_checkpoints(store, _store_settings(args))
    batch: list[object] = []
    lines: list[int] = []
    totals = {"received": 0, "stored": 0, "duplicates": 0, "rejected": 0}

    def flush() -> None:
        report = ingestor.ingest(batch, received_at_ms=int(time.time() * 1000))
        totals["received"] += report.received
        totals["stored"] += report.stored
        totals["duplicates"] += report.duplicates
        totals["rejected"] += len(report.rejected)
        for r in report.rejected[:5]:
            print(f"  rejected line {lines[r.index]}: {r.reason}", file=sys.stderr)
        batch.clear()
        lines.clear()
        print(f"\r{totals['received']:,} read, {totals['stored']:,} stored", end="", file=sys.stderr)

    with open(args.file, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                batch.append(strict_json.loads(line))
                lines.append(number)
            except strict_json.StrictJSONError as exc:
                # Not an event at all: kept as a dead letter with its bytes, never dropped.
                reason = f"line {number} is not valid JSON: {exc.message}"
                store.writer.write_dead_letters(
                    [DeadLetter(received_at=ms_to_ch_time(int(time.time() * 1000)), source="file",
                                reason=reason, payload=line.rstrip(b"\n"), code="not_json")]
                )  # fmt: skip
                totals["received"] += 1
                totals["rejected"] += 1
                print(f"  rejected {reason}", file=sys.stderr)
            if len(batch) >= args.batch:
                flush()
    if batch:
        flush()
    if ticker is not None:
        ticker.stop()
    print(file=sys.stderr)
    print(orjson.dumps(totals).decode())
    return 0 if totals["rejected"] == 0 else 1


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from auditlog.embedded import build_embedded
    from auditlog.retention_job import start_purges
    from query_api.settings import ApiSettings
    from stream.checkpointer import start_checkpoints

    settings = ApiSettings()
    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.model_copy(update=updates)
    directory = load_directory(args.directory) if args.directory else None
    store = _open_store(args)
    ingestor = None
    directory_publisher = None
    if settings.ingest == "kafka":
        # Kafka mode: POST /v1/events (and the audit of reads) go to audit.raw, so that
        # workers store them and SIEMs see them on audit.events.v1 like any other event;
        # PUT /v1/directory goes to audit.directory, which the workers follow.
        from producers.directory_publisher import snapshot_publisher
        from producers.publisher import ProducerSettings
        from stream.kafka_ingestor import KafkaIngestor

        ingestor = KafkaIngestor(ProducerSettings())
        directory_publisher = snapshot_publisher(ProducerSettings())
    embedded = build_embedded(
        store,
        api_settings=settings,
        directory=directory,
        ingestor=ingestor,
        directory_publisher=directory_publisher,
    )
    print(
        f"serving on http://{settings.host}:{settings.port}/docs (ingest: {settings.ingest})", file=sys.stderr
    )
    # Kafka mode: the workers write the store's logs and sign their checkpoints.
    ticker = start_checkpoints(store, _store_settings(args)) if ingestor is None else None
    purges = start_purges(store, embedded.services.auditor)
    try:
        uvicorn.run(embedded.app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        if purges is not None:
            purges.stop()
        if ticker is not None:
            ticker.stop()
        if ingestor is not None:
            ingestor.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from auditlog.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auditlog", description="Audit log pipeline of the infrastructure console"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="seed a realistic installation into a local store and serve it")
    _store_args(p)
    p.add_argument("--events", type=int, default=120_000, help="events to generate (default 120000)")
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--no-serve", action="store_true", help="seed and print the personas, then exit")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="serve the query API over the embedded store")
    _store_args(p)
    p.add_argument("--directory", type=Path, help="load this directory file (JSON or YAML) first")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("ingest", help="ingest an NDJSON file into the embedded store")
    _store_args(p)
    p.add_argument("file", type=Path)
    p.add_argument("--batch", type=int, default=20_000)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("migrate", help="create or upgrade the schema")
    _store_args(p)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("directory", help="manage the directory")
    dsub = p.add_subparsers(dest="directory_command", required=True)
    q = dsub.add_parser("load", help="replace one infrastructure's directory with a JSON or YAML file")
    _store_args(q)
    _remote_args(q)
    q.add_argument("file", type=Path)
    q.add_argument("--infrastructure", help="the infrastructure it is for, if the file does not say")
    q.set_defaults(func=cmd_directory_load)
    q = dsub.add_parser("publish", help="publish a directory file to the compacted topic audit.directory")
    q.add_argument("file", type=Path)
    q.add_argument("--bootstrap", help="Kafka bootstrap servers (env AUDITLOG_KAFKA_BOOTSTRAP_SERVERS)")
    q.add_argument("--infrastructure", help="the infrastructure it is for, if the file does not say")
    q.add_argument("--remove", action="append", default=[], metavar="KIND/ID", help="also send a tombstone")
    q.add_argument("--topic", default="audit.directory")
    q.set_defaults(func=cmd_directory_publish)

    p = sub.add_parser("keys", help="manage API keys")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    q = ksub.add_parser("create", help="create an API key for a directory user (printed once)")
    _store_args(q)
    _remote_args(q)
    q.add_argument("--user", required=True)
    q.add_argument("--infrastructure", help="the user's infrastructure (default: the only one served)")
    q.add_argument("--label", default="")
    q.add_argument("--ingest", action="store_true", help="the key may also ingest events")
    q.add_argument(
        "--directory-publisher",
        action="store_true",
        help="the key may replace the directory (PUT /v1/directory)",
    )
    q.add_argument("--expires-in-days", type=float, help="the key stops working after this many days")
    q.set_defaults(func=cmd_keys_create)
    q = ksub.add_parser("list", help="list API keys (ids, users, rights, expiry; never the keys)")
    _store_args(q)
    _remote_args(q)
    q.add_argument("--infrastructure")
    q.set_defaults(func=cmd_keys_list)
    q = ksub.add_parser("revoke", help="revoke an API key by its id (see keys list)")
    _store_args(q)
    _remote_args(q)
    q.add_argument("key_id")
    q.set_defaults(func=cmd_keys_revoke)

    p = sub.add_parser("dead-letters", help="list refused input (NDJSON, newest first) with its reason")
    _store_args(p)
    p.add_argument("--infrastructure", help="only letters of this infrastructure ('' for unattributed)")
    p.add_argument("--code", choices=get_args(RejectCode))
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_dead_letters)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Subcommands of other components (publish, worker, ...) register here.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []

try:
    from auditlog.worker import register as _register_worker

    _EXTRA_COMMANDS.append(_register_worker)
except ImportError:
    pass

try:
    from producers.cli_publish import register as _register_publish

    _EXTRA_COMMANDS.append(_register_publish)
except ImportError:  # installed without the producer extra (confluent-kafka)
    pass


try:
    from auditlog.cli_tlog import register as _register_tlog

    _EXTRA_COMMANDS.append(_register_tlog)
except ImportError:  # installed without the store extra (cryptography)
    pass

try:
    from auditlog.retention_job import register as _register_retention

    _EXTRA_COMMANDS.append(_register_retention)
except ImportError:  # installed without the api extra
    pass

try:
    from auditlog.cli_schema import register as _register_schema

    _EXTRA_COMMANDS.append(_register_schema)
except ImportError:
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    func: Command = args.func
    try:
        return func(args)
    except (DirectoryError, CliError, AdminError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StoreLocked as exc:
        print(
            f"error: {exc}; chDB opens a store in one process only. "
            "Stop it, or run this command through it: add --url http://HOST:PORT --key KEY",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        # chDB shut down by its own close, not by its static destructors after the
        # interpreter's, which can crash (see auditlog.worker).
        while _OPENED:
            _OPENED.pop().close()


if __name__ == "__main__":
    sys.exit(main())
