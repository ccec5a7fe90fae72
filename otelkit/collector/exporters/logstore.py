"""``logstore``: log records into the SQLite or PostgreSQL log store, searchable later.

What a sender's success response means depends on ``durability``:

* ``queue`` (default): the batch is in the exporter's sending queue (in memory, or on
  disk with ``sending_queue.storage``). A down database makes batches wait and retry;
  a killed collector loses what was in an in-memory queue.
* ``commit``: the receiver answers only after the transaction holding the batch has
  committed. The sending queue is bypassed, so a failed write reaches the sender as a
  retryable error (gRPC ``UNAVAILABLE`` / HTTP 503) and the sender retries. Concurrent
  requests share one transaction (group commit). Put no ``batch`` processor in front:
  it acknowledges before the exporter sees the data.

Either way delivery is at least once: a write that times out may still commit, and the
retry stores the records again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, Literal

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from pydantic import Field, field_validator, model_validator

from otelkit.collector.extensions.bearertokenauth import BearerTokenAuth, BearerTokenAuthConfig
from otelkit.collector.pdata.signals import Payload, Signal, count_items, signal_of
from otelkit.collector.runtime.auth import AuthGate, AuthSettings
from otelkit.collector.runtime.component import (
    ComponentConfig,
    CreateSettings,
    Host,
    exporter_factory,
)
from otelkit.collector.runtime.errors import InvalidDataError, PermanentError, RetryableError
from otelkit.collector.runtime.exporterhelper import Backoff, ExporterHelperConfig, QueuedExporter
from otelkit.collector.runtime.http import ASGIApp, HttpServer
from otelkit.collector.runtime.listeners import Destination, Listener
from otelkit.collector.runtime.origin import sender_waits
from otelkit.collector.runtime.scrub import redact_url
from otelkit.collector.runtime.tls import TLSServerSettings
from otelkit.collector.runtime.types import ByteSize, Duration, Endpoint, Secret
from otelkit.logstore.api import guarded, search_app
from otelkit.logstore.records import rows_from_request
from otelkit.logstore.sqlite import path_from_url
from otelkit.logstore.store import LogStore, StoreError, StoreUnavailableError, open_store

log = logging.getLogger("otelkit.logstore")


class ApiSettings(ComponentConfig):
    """``GET /api/logs``: off unless set; always needs credentials and an allowed Host."""

    endpoint: Endpoint = Field(description="Where GET /api/logs is served, e.g. 127.0.0.1:8890.")
    auth: AuthSettings | None = Field(None, description="An authenticator extension.")
    token: Secret | None = Field(
        None, description="Or a bearer token of its own, usually ${env:NAME}."
    )
    tls: TLSServerSettings | None = Field(
        None, description="Serve HTTPS: needed when the API is reachable beyond loopback."
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="Host header names accepted (stops DNS rebinding); '.example.com' "
        "takes a domain, '*' any.",
    )

    @model_validator(mode="after")
    def _credentials(self) -> ApiSettings:
        if (self.auth is None) == (self.token is None):
            raise ValueError(
                "the search API serves every stored record: set auth: {authenticator: "
                "<extension>} or a token of its own (not both)"
            )
        if self.token is not None and not self.token.get_secret_value().strip():
            raise ValueError("token is empty; is its environment variable set?")
        return self


class LogStoreConfig(ExporterHelperConfig):
    url: str = Field(
        description="sqlite:///relative/logs.db, sqlite:////absolute/logs.db or "
        "postgresql://user@host/db"
    )
    retention: Duration = Field(7 * 86400.0, description="Age past which records are pruned; 0 keeps all.")  # fmt: skip
    max_size: ByteSize | None = Field(None, description="SQLite only: prune oldest beyond this.")
    prune_interval: Duration = Field(60.0, gt=0)
    durability: Literal["queue", "commit"] = "queue"
    synchronous: Literal["normal", "full"] = Field(
        "full",
        description="SQLite: full fsyncs each commit (survives a power loss); normal "
        "survives a crash of the collector only.",
    )
    max_batch_records: int = Field(20_000, ge=1, description="Records per write transaction.")
    api: ApiSettings | None = None

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        if not url.startswith(("sqlite:", "postgresql://", "postgres://")):
            raise ValueError(
                f"{redact_url(url)!r} is not a log store URL: expected sqlite:///path/to/logs.db or "
                "postgresql://user@host:5432/db"
            )
        if url.startswith("sqlite:"):
            try:
                path_from_url(url)
            except StoreError as exc:
                raise ValueError(str(exc)) from exc
        return url

    def single_writer(self) -> bool:
        """With ``--workers N``: SQLite takes one writer, and the search API one listener,
        so such a store runs in one worker and the others hand it their records."""
        return self.url.startswith("sqlite:") or self.api is not None

    def listeners(self) -> list[Listener]:
        if self.api is None:
            return []
        protocol = "HTTPS" if self.api.tls else "HTTP"
        return [
            Listener("log search API", self.api.endpoint, True, protocol=protocol, path="/api/logs")
        ]

    @model_validator(mode="after")
    def _size_needs_sqlite(self) -> LogStoreConfig:
        if self.max_size is not None and not self.url.startswith("sqlite:"):
            raise ValueError(
                "max_size applies to SQLite stores only (PostgreSQL frees space through "
                "VACUUM); use retention for PostgreSQL"
            )
        return self


class LogStoreExporter(QueuedExporter):
    def __init__(self, settings: CreateSettings, config: LogStoreConfig) -> None:
        super().__init__(settings, config)
        self.config = config
        self.store: LogStore = open_store(config.url, synchronous=config.synchronous)
        self._commit = config.durability == "commit"
        self._unwritten = 0  # acknowledged records handed to the writer, not written yet
        self._writing: set[asyncio.Future[int]] = set()
        # Tasks finding the records a database refused, or writing records again later.
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._room = asyncio.Event()  # set while at most max_batch_records are unwritten
        self._outage = False  # acknowledged records are waiting for the store to come back
        self._api: HttpServer | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._pruned = settings.telemetry.counter(
            "otelkit_logstore_pruned_log_records", "Log records removed by retention", ("exporter",)
        )
        write_errors = settings.telemetry.counter(
            "otelkit_logstore_write_errors",
            "Write transactions that failed (unavailable: retried; rejected: dropped)",
            ("exporter", "reason"),
        )
        self._unavailable = write_errors.labels(self.name, "unavailable")
        self._rejected = write_errors.labels(self.name, "rejected")
        repaired = settings.telemetry.counter(
            "otelkit_logstore_repaired_log_records",
            "Log records stored with a value no sender should send replaced "
            "(time: far in the future; severity: outside 0-24)",
            ("exporter", "value"),
        )
        self.store.repaired = lambda value, count: repaired.labels(self.name, value).inc(count)

    def destinations(self) -> list[Destination]:
        return [Destination("log records", self.store.backend.location)]

    @property
    def acknowledges_durably(self) -> bool:
        return self._commit or super().acknowledges_durably

    @property
    def api_port(self) -> int:
        return self._api.port if self._api else 0

    async def start_sending(self, host: Host) -> None:
        log.info(
            "exporter %s: log records go to %s (durability: %s)",
            self.name, self.store.backend.location, self.config.durability,
        )  # fmt: skip
        if not self.acknowledges_durably:
            log.warning(
                "exporter %s: records acknowledged to senders wait in memory until written; "
                "a killed collector loses them. Set durability: commit, or "
                "sending_queue.storage for a database that may be down",
                self.name,
            )
        try:
            await asyncio.to_thread(self.store.start_writer, self.config.max_batch_records)
        except StoreUnavailableError as exc:
            # A shared database may be down now and up later: batches wait and retry.
            log.warning("exporter %s: log store not reachable yet: %s", self.name, exc)
            self.store.start_writer_thread(self.config.max_batch_records)
        if self.config.api is not None:
            app = self._guarded_api(host, self.config.api)
            self._api = HttpServer(
                self.config.api.endpoint, app, name=f"{self.name}-api", tls=self.config.api.tls
            )
            await self._api.start()
        if self.config.retention or self.config.max_size is not None:
            self._pruner = asyncio.create_task(self._prune_loop(), name=f"{self.name}-prune")

    def _guarded_api(self, host: Host, api: ApiSettings) -> ASGIApp:
        refused = self.telemetry.counter(
            "otelkit_logstore_api_refused_requests",
            "Search API requests refused (unauthenticated, or a Host not allowed)",
            ("exporter", "reason"),
        )
        for reason in ("unauthenticated", "host"):  # from zero, for rate()
            refused.labels(self.name, reason)
        gate = AuthGate(
            api.auth,
            f"exporter/{self.name} API",
            log,
            lambda: refused.labels(self.name, "unauthenticated").inc(),
        )
        if api.token is not None:
            own = BearerTokenAuth(self.settings, BearerTokenAuthConfig(token=api.token))
            gate.use(own)
        else:
            gate.start(host)
        return guarded(
            search_app(self.store),
            gate,
            api.allowed_hosts,
            lambda: refused.labels(self.name, "host").inc(),
        )

    async def stop_sending(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self._api is not None:
            await self._api.stop()
        self._stopping.set()  # records waiting for the store get one last write
        while self._writing or self._background:  # acknowledged records are written first
            pending: list[asyncio.Future[Any]] = [*self._writing, *self._background]
            await asyncio.wait(pending)
        await asyncio.to_thread(self.store.close)

    async def consume(self, payload: Payload) -> None:
        if not self._commit:
            await super().consume(payload)
            return
        if not sender_waits() and isinstance(payload, ExportLogsServiceRequest):
            await self._write_acknowledged(payload)
            return
        # durability: commit — answer the sender only once the transaction committed.
        signal, items = signal_of(payload), count_items(payload)
        try:
            await asyncio.wait_for(self.send(payload), self.helper_config.timeout or None)
        except InvalidDataError as exc:  # store the records that can be, drop the others
            await self.deliver_valid_items(payload, exc)
            return
        except PermanentError:
            self.telemetry.exporter_send_failed(self.name, signal, items, "permanent")
            raise
        except Exception as exc:
            raise RetryableError(f"exporter {self.name}: {exc}", retry_after=1.0) from exc
        self.telemetry.exporter_sent(self.name, signal, items)

    async def _write_acknowledged(self, payload: ExportLogsServiceRequest) -> None:
        """Records whose senders were answered long ago (made by a connector from traces
        a whole-trace processor released on its timer): nobody waits for their commit, so
        the caller does not either. The writer then takes the records of many released
        batches into one transaction and one fsync, instead of one each. At most
        ``max_batch_records`` such records wait to be written; beyond that the caller
        waits (up to ``timeout``), so a slow database slows the release down instead of
        filling memory. While the database cannot be reached they wait and are written
        again with ``retry_on_failure``'s backoff, still counted as unwritten."""
        items = count_items(payload)
        self._unwritten += items
        self._submit_acknowledged(payload, items)
        if self._unwritten > self.config.max_batch_records:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), self.helper_config.timeout or None)
        else:
            await asyncio.sleep(0)  # the receivers run between two released batches

    def _submit_acknowledged(
        self, payload: ExportLogsServiceRequest, items: int, backoff: Backoff | None = None
    ) -> asyncio.Future[int]:
        written = asyncio.wrap_future(self.store.submit(payload))
        done = functools.partial(self._acknowledged_written, payload, items, backoff)
        written.add_done_callback(done)
        self._writing.add(written)
        return written

    def _acknowledged_written(
        self,
        payload: ExportLogsServiceRequest,
        items: int,
        backoff: Backoff | None,
        written: asyncio.Future[int],
    ) -> None:
        self._writing.discard(written)
        error = None if written.cancelled() else written.exception()
        if isinstance(error, StoreUnavailableError):
            self._unavailable.inc()
            if self._retry_acknowledged(payload, items, backoff, error):
                return  # still unwritten
        self._unwritten -= items
        if self._unwritten <= self.config.max_batch_records:
            self._room.set()
        if written.cancelled():
            return
        if error is None:
            self.telemetry.exporter_sent(self.name, Signal.LOGS, items)
            if self._outage:
                self._outage = False
                log.warning("exporter %s: log store reachable again", self.name)
        elif isinstance(error, StoreUnavailableError):
            self.telemetry.exporter_send_failed(self.name, Signal.LOGS, items, "unavailable")
            log.warning("exporter %s: %d log records dropped: %s", self.name, items, error)
        else:  # the database refused a value: store the other records
            self._rejected.inc()
            self._track(self._isolate(payload, InvalidDataError(str(error))))

    def _retry_acknowledged(
        self,
        payload: ExportLogsServiceRequest,
        items: int,
        backoff: Backoff | None,
        error: StoreUnavailableError,
    ) -> bool:
        """Schedule another write of records nobody will send again; False when the
        retries are used up (or off, or the exporter is stopping)."""
        retry = self.helper_config.retry_on_failure
        if not retry.enabled or self._stopping.is_set():
            return False
        backoff = backoff or Backoff(retry)
        wait = backoff.next_wait(None)
        if wait is None:
            return False
        if not self._outage:
            self._outage = True
            log.warning(
                "exporter %s: log store unavailable (%s); acknowledged records wait and are "
                "written again",
                self.name, error,
            )  # fmt: skip
        self._track(self._write_again(payload, items, backoff, wait))
        return True

    async def _write_again(
        self, payload: ExportLogsServiceRequest, items: int, backoff: Backoff, wait: float
    ) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), wait)
        await asyncio.wait([self._submit_acknowledged(payload, items, backoff)])

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _isolate(self, payload: ExportLogsServiceRequest, error: InvalidDataError) -> None:
        try:
            await self.deliver_valid_items(payload, error)
        except Exception as exc:
            log.warning("exporter %s: log records dropped: %s", self.name, exc)

    async def send(self, payload: Payload) -> None:
        if signal_of(payload) is not Signal.LOGS:
            raise PermanentError(f"exporter {self.name} stores logs only")
        assert isinstance(payload, ExportLogsServiceRequest)
        try:
            await asyncio.wrap_future(await self._submit(payload))
        except StoreUnavailableError as exc:
            self._unavailable.inc()
            raise RetryableError(str(exc)) from exc
        except StoreError as exc:  # the database refused a value: find the record(s)
            self._rejected.inc()
            raise InvalidDataError(str(exc)) from exc

    async def _submit(self, payload: ExportLogsServiceRequest) -> Future[int]:
        """While the writer is busy, a request's rows are built on a worker thread, so that
        building them overlaps the writer's time inside SQLite/PostgreSQL. An idle writer
        builds them itself: nothing to overlap, and a thread hop fewer (the records of a
        request from the accesslog or findings connector cost about as much again as one
        hop)."""
        if self.store.writer_busy:
            repairs: Counter[str] = Counter()
            rows = await asyncio.to_thread(rows_from_request, payload, None, repairs)
            return self.store.submit_rows(rows, repairs)
        return self.store.submit(payload)

    async def prune_now(self) -> int:
        """Apply retention once; the background loop calls this every ``prune_interval``."""
        retention = self.config.retention or None
        removed = await asyncio.to_thread(self.store.prune, retention, self.config.max_size)
        if removed:
            self._pruned.labels(self.name).inc(removed)
            log.info("exporter %s: retention removed %d log records", self.name, removed)
        return removed

    async def _prune_loop(self) -> None:
        while True:
            try:
                await self.prune_now()
            except StoreError as exc:
                log.warning("exporter %s: pruning failed: %s", self.name, exc)
            except Exception:
                # Keep pruning later: a failed run must not end retention for good.
                log.exception("exporter %s: pruning failed", self.name)
            await asyncio.sleep(self.config.prune_interval)


def _create(
    settings: CreateSettings, config: LogStoreConfig, signals: frozenset[Signal]
) -> LogStoreExporter:
    return LogStoreExporter(settings, config)


factory = exporter_factory("logstore", LogStoreConfig, _create, frozenset({Signal.LOGS}))
