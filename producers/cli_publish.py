"""``auditlog publish FILE``: registered into `auditlog.cli` when confluent-kafka is installed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from producers.publish_file import Progress, publish_ndjson
from producers.publisher import ProducerSettings

SHOWN_INVALID = 20
EXIT_INVALID = 1
EXIT_SPOOLED = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "publish",
        help="publish an NDJSON file of events to Kafka",
        description=(
            "Validate every line of an NDJSON file and publish the valid events to Kafka, batched "
            "into envelopes. Invalid lines are reported with their line number and not sent. "
            "Settings come from AUDITLOG_KAFKA_* (see producers.publisher.ProducerSettings); the "
            "options below override them. Exit status: 0 all delivered, 1 invalid lines or events "
            "refused by Kafka, 3 events left in the spool (broker unreachable: they are sent by "
            "the next run that uses the same spool directory)."
        ),
    )
    p.add_argument("file", help="NDJSON file, one event per line ('-' for stdin)")
    p.add_argument(
        "--bootstrap-servers", help="Kafka bootstrap servers (env AUDITLOG_KAFKA_BOOTSTRAP_SERVERS)"
    )
    p.add_argument("--topic", help="topic (env AUDITLOG_KAFKA_TOPIC, default audit.raw)")
    p.add_argument("--spool-dir", type=Path, help="spool directory (env AUDITLOG_KAFKA_SPOOL_DIR)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for spooled events to be re-sent before giving up (default 60)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    updates: dict[str, Any] = {}
    if args.bootstrap_servers:
        updates["bootstrap_servers"] = args.bootstrap_servers
    if args.topic:
        updates["topic"] = args.topic
    if args.spool_dir:
        updates["spool_dir"] = args.spool_dir
    settings = ProducerSettings().model_copy(update=updates)

    def show(progress: Progress) -> None:
        rate = progress.published / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
        print(
            f"\r{progress.lines:,} lines, {progress.published:,} published, "
            f"{progress.invalid:,} invalid ({rate:,.0f} events/s)",
            end="",
            file=sys.stderr,
            flush=True,
        )

    try:
        summary = publish_ndjson(
            args.file, settings, None if args.quiet else show, drain_timeout=args.drain_timeout
        )
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(file=sys.stderr)
    for bad in summary.invalid[:SHOWN_INVALID]:
        print(f"line {bad.line}: {bad.reason}", file=sys.stderr)
    if summary.invalid_count > SHOWN_INVALID:
        print(f"... and {summary.invalid_count - SHOWN_INVALID:,} more invalid lines", file=sys.stderr)
    if summary.in_spool:
        print(
            f"warning: {summary.in_spool:,} events wait in the spool {settings.resolved_spool_dir()} "
            "(Kafka unreachable); run again with the same spool directory to send them",
            file=sys.stderr,
        )
    print(orjson.dumps(summary.to_dict()).decode())
    if summary.invalid_count or summary.failed:
        return EXIT_INVALID
    if summary.in_spool or summary.pending:
        return EXIT_SPOOLED
    return 0
