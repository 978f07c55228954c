"""`auditlog`: the command line. Each subcommand lives in its own function below."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from producers.directory import DirectoryError, load_directory
from storage.store import Store, StoreSettings

Command = Callable[[argparse.Namespace], int]


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store", type=Path, help="chDB data folder (env AUDITLOG_STORE_PATH; default ./auditlog-data)"
    )


def _open_store(args: argparse.Namespace) -> Store:
    settings = StoreSettings()
    if getattr(args, "store", None):
        settings = settings.model_copy(update={"path": args.store})
    return Store.open(settings)


def cmd_migrate(args: argparse.Namespace) -> int:
    store = _open_store(args)
    print(f"schema is current in database {store.database!r} ({store.engine.name})")
    return 0


def cmd_directory_load(args: argparse.Namespace) -> int:
    directory = load_directory(args.file)
    store = _open_store(args)
    store.directory.replace(directory)
    print(
        f"directory loaded: {len(directory.users)} users, {len(directory.roles)} roles, "
        f"{len(directory.teams)} teams, {len(directory.applications)} applications"
    )
    return 0


def cmd_directory_publish(args: argparse.Namespace) -> int:
    from producers.directory_publisher import publish_directory
    from producers.publisher import ProducerSettings

    directory = load_directory(args.file)
    settings = ProducerSettings()
    if args.bootstrap:
        settings = settings.model_copy(update={"bootstrap_servers": args.bootstrap})
    sent = publish_directory(directory, settings, removed=tuple(args.remove), topic=args.topic)
    print(f"published {sent} directory records to {args.topic} at {settings.bootstrap_servers}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    store = _open_store(args)
    directory = store.directory.load()
    if args.user not in directory.users:
        print(f"error: user {args.user!r} is not in the directory; load it first", file=sys.stderr)
        return 2
    key = store.keys.create(user_id=args.user, label=args.label or "", can_ingest=args.ingest)
    print(key)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest an NDJSON file into the embedded store through the pipeline steps."""
    from storage.writer import DeadLetter
    from stream.batch_ingest import BatchIngestor
    from stream.steps import ms_to_ch_time

    store = _open_store(args)
    directory = store.directory.load()
    ingestor = BatchIngestor(store, lambda: directory, source="file")
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
                batch.append(orjson.loads(line))
                lines.append(number)
            except orjson.JSONDecodeError as exc:
                # Not an event at all: kept as a dead letter with its bytes, never dropped.
                reason = f"line {number} is not valid JSON: {exc}"
                store.writer.write_dead_letters(
                    [DeadLetter(received_at=ms_to_ch_time(int(time.time() * 1000)), source="file",
                                reason=reason, payload=line.rstrip(b"\n"))]
                )  # fmt: skip
                totals["received"] += 1
                totals["rejected"] += 1
                print(f"  rejected {reason}", file=sys.stderr)
            if len(batch) >= args.batch:
                flush()
    if batch:
        flush()
    print(file=sys.stderr)
    print(orjson.dumps(totals).decode())
    return 0 if totals["rejected"] == 0 else 1


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from auditlog.embedded import build_embedded
    from query_api.settings import ApiSettings

    settings = ApiSettings()
    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = settings.model_copy(update=updates)
    directory = load_directory(args.directory) if args.directory else None
    store = _open_store(args)
    ingestor = None
    if settings.ingest == "kafka":
        # Kafka mode: POST /v1/events (and the audit of reads) go to audit.raw, so that
        # workers store them and SIEMs see them on audit.events.v1 like any other event.
        from producers.publisher import ProducerSettings
        from stream.kafka_ingestor import KafkaIngestor

        ingestor = KafkaIngestor(ProducerSettings())
    embedded = build_embedded(store, api_settings=settings, directory=directory, ingestor=ingestor)
    print(
        f"serving on http://{settings.host}:{settings.port}/docs (ingest: {settings.ingest})", file=sys.stderr
    )
    try:
        uvicorn.run(embedded.app, host=settings.host, port=settings.port, log_level="warning")
    finally:
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
    q = dsub.add_parser("load", help="replace the stored directory with a JSON or YAML file")
    _store_args(q)
    q.add_argument("file", type=Path)
    q.set_defaults(func=cmd_directory_load)
    q = dsub.add_parser("publish", help="publish a directory file to the compacted topic audit.directory")
    q.add_argument("file", type=Path)
    q.add_argument("--bootstrap", help="Kafka bootstrap servers (env AUDITLOG_KAFKA_BOOTSTRAP_SERVERS)")
    q.add_argument("--remove", action="append", default=[], metavar="KIND/ID", help="also send a tombstone")
    q.add_argument("--topic", default="audit.directory")
    q.set_defaults(func=cmd_directory_publish)

    p = sub.add_parser("keys", help="manage API keys")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    q = ksub.add_parser("create", help="create an API key for a directory user (printed once)")
    _store_args(q)
    q.add_argument("--user", required=True)
    q.add_argument("--label", default="")
    q.add_argument("--ingest", action="store_true", help="the key may also ingest events")
    q.set_defaults(func=cmd_keys_create)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Subcommands of other components (publish, worker, ...) register here.
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = []

try:
    from stream.cli_worker import register as _register_worker

    _EXTRA_COMMANDS.append(_register_worker)
except ImportError:
    pass

try:
    from producers.cli_publish import register as _register_publish

    _EXTRA_COMMANDS.append(_register_publish)
except ImportError:  # installed without the producer extra (confluent-kafka)
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
    except DirectoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
