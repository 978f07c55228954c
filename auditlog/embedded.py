"""Wiring of the embedded mode: one process, one chDB store, the pipeline steps and the API."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from fastapi import FastAPI

from producers.contract.directory import Directory
from query_api.app import create_app
from query_api.deps import DirectoryPublisher, DirectorySource, Ingestor, KeyCache, ReadSlots, Services
from query_api.read_audit import ReadAuditor
from query_api.sessions import SessionStore
from query_api.settings import ApiSettings
from storage.store import Store
from stream.batch_ingest import BatchIngestor


@dataclass
class Embedded:
    store: Store
    services: Services
    app: FastAPI


def build_embedded(
    store: Store,
    *,
    api_settings: ApiSettings | None = None,
    directory: Directory | None = None,
    ingestor: Ingestor | None = None,
    directory_publisher: DirectoryPublisher | None = None,
) -> Embedded:
    """The API over `store`. Ingest (and the audit of reads) goes to the store directly,
    or through `ingestor` when given (Kafka mode: events then reach audit.raw like any other);
    directory changes go to `directory_publisher` too when given (audit.directory)."""
    settings = api_settings or ApiSettings()
    directories = DirectorySource(store, publish=directory_publisher)
    if directory is not None:
        directories.replace(directory)
    if ingestor is None:
        ingestor = BatchIngestor(
            store, directories.get, source="api", max_future_s=settings.max_future_skew_s
        )
    auditor = None
    if settings.audit_reads:
        auditor = ReadAuditor(ingestor, service_host=socket.gethostname(), fail_open=settings.audit_fail_open)
    services = Services(
        store=store,
        directory=directories,
        keys=KeyCache(store, ttl=settings.key_cache_seconds),
        read_slots=ReadSlots(per_key=settings.reads_per_key, wait_s=30.0),
        sessions=SessionStore(
            absolute_seconds=settings.session_absolute_seconds, idle_seconds=settings.session_idle_seconds
        ),
        ingestor=ingestor,
        settings=settings,
        auditor=auditor,
    )
    return Embedded(store=store, services=services, app=create_app(services))
