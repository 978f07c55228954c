"""`auditlog worker`: run the stream worker, optionally with the query API in the same process.

Flags override the environment (AUDITLOG_WORKER_*, AUDITLOG_STORE_*, AUDITLOG_API_*).
With `--with-api` the API serves from a thread of this process over the same
Store object, because chDB opens one data folder per process; its ingest
endpoint then publishes to `audit.raw` instead of writing to the store, so that
every event takes the one path through the worker.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("auditlog.worker")

_FLAGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("--bootstrap", "bootstrap_servers", {"help": "Kafka bootstrap servers (host:port,...)"}),
    ("--group", "group_id", {"help": "consumer group id"}),
    ("--raw-topic", "raw_topic", {}),
    ("--events-topic", "events_topic", {}),
    ("--dlq-topic", "dlq_topic", {}),
    ("--directory-topic", "directory_topic", {}),
    ("--partitions", "topic_partitions", {"type": int, "help": "partitions of topics created at start"}),
    ("--batch-size", "batch_size", {"type": int, "help": "messages per batch (default 20000)"}),
    ("--batch-seconds", "batch_seconds", {"type": float, "help": "batch window in s (default 0.5)"}),
    ("--max-batch-bytes", "max_batch_bytes", {"type": int, "help": "slice batches to about this size"}),
    ("--max-message-bytes", "max_message_bytes", {"type": int}),
    ("--max-reject-ratio", "max_reject_ratio", {"type": float, "help": "stop above this reject share"}),
    ("--max-consecutive-rejects", "max_consecutive_rejects", {"type": int}),
    ("--reject-min-sample", "reject_min_sample", {"type": int}),
    ("--session-timeout", "session_timeout_s", {"type": float, "help": "consumer group session timeout (s)"}),
    ("--instance-id", "instance_id", {"help": "static group membership id (e.g. the pod name)"}),
    ("--stats-file", "stats_path", {"type": Path, "help": "write the counters here (JSON) per batch"}),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="consume audit.raw into the store, audit.events.v1 and audit.dlq")
    p.add_argument(
        "--store", type=Path, help="chDB data folder (env AUDITLOG_STORE_PATH; default ./auditlog-data)"
    )
    for flag, dest, extra in _FLAGS:
        p.add_argument(flag, dest=dest, default=None, **extra)
    p.add_argument(
        "--ocsf", action="store_true", default=None, help="emit audit.events.v1 in OCSF (API Activity, ...)"
    )
    p.add_argument("--with-api", action="store_true", help="also serve the query API from this process")
    p.add_argument("--host", default=None, help="API host (with --with-api)")
    p.add_argument("--port", type=int, default=None, help="API port (with --with-api)")
    p.set_defaults(func=cmd_worker)


def _settings(args: argparse.Namespace) -> Any:
    from stream.settings import WorkerSettings

    settings = WorkerSettings()
    updates = {dest: getattr(args, dest) for _, dest, _ in _FLAGS if getattr(args, dest) is not None}
    if args.ocsf:
        updates["ocsf"] = True
    if args.store is not None:
        updates["store"] = settings.store.model_copy(update={"path": args.store})
    return WorkerSettings.model_validate({**settings.model_dump(), **updates})


class _ApiThread:
    """uvicorn in a thread: it installs no signal handlers off the main thread, so faust keeps them."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, name="query-api", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def cmd_worker(args: argparse.Namespace) -> int:
    from stream.faust_edge import WorkerRuntime, build_app, run_faust

    settings = _settings(args)
    if args.with_api and not settings.signing_key:
        # The API's record of reads must reach the store through this worker: sign it with a
        # key of this process. Other workers of the group (and this one after a restart) do
        # not know it: with several, set AUDITLOG_WORKER_SIGNING_KEY on all of them.
        log.warning("no AUDITLOG_WORKER_SIGNING_KEY: this process signs its API's record of reads alone")
        settings = settings.model_copy(update={"signing_key": secrets.token_hex(32)})
    runtime = WorkerRuntime(settings)
    api: _ApiThread | None = None
    ingestor: Any = None
    try:
        if args.with_api:
            from auditlog.embedded import build_embedded
            from producers.directory_publisher import snapshot_publisher
            from producers.publisher import ProducerSettings
            from query_api.settings import ApiSettings
            from stream.kafka_ingestor import KafkaIngestor

            api_settings = ApiSettings()
            updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
            api_settings = api_settings.model_copy(update=updates)
            producer_settings = ProducerSettings().model_copy(
                update={
                    **settings.connection().model_dump(),
                    "topic": settings.raw_topic,
                    # One spool per worker: a spool directory is locked by its publisher.
                    "client_id": f"auditlog-api-{settings.group_id}",
                    "signing_key": settings.signing_key,
                }
            )
            ingestor = KafkaIngestor(producer_settings)
            embedded = build_embedded(
                runtime.store,
                api_settings=api_settings,
                ingestor=ingestor,
                directory_publisher=snapshot_publisher(settings.connection(), topic=settings.directory_topic),
            )
            api = _ApiThread(embedded.app, api_settings.host, api_settings.port)
            api.start()
            log.warning("query API on http://%s:%d/docs", api_settings.host, api_settings.port)
        app = build_app(runtime)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        return run_faust(app, loglevel=level if isinstance(level, str) else "WARNING")
    finally:
        if api is not None:
            api.stop()
        if ingestor is not None:
            ingestor.close()
        runtime.close()
        # chDB shut down here, by its own close, not by its static destructors after the
        # interpreter's: those crash (SIGSEGV, "ShutdownTablesThreadPool is not initialized")
        # depending on what else the process had loaded (tests/test_worker_e2e.py).
        runtime.store.close()
