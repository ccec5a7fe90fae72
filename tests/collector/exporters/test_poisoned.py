"""One bad item never costs a batch: in every exporter, items that cannot be exported as
they are are dropped one by one, counted with ``reason="invalid"``, and everything else in
the batch is delivered (the sender is not told to retry the same data forever)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as parse_text

from otelkit.collector.exporters.debug import DebugExporter, DebugExporterConfig
from otelkit.collector.exporters.file import FileExporter, FileExporterConfig, read_requests
from otelkit.collector.exporters.logstore import LogStoreConfig, LogStoreExporter
from otelkit.collector.exporters.otlphttp import OTLPHTTPExporter, OTLPHTTPExporterConfig
from otelkit.collector.exporters.prometheus.exporter import PrometheusConfig, PrometheusExporter
from otelkit.collector.exporters.prometheusremotewrite.exporter import (
    RemoteWriteConfig,
    RemoteWriteExporter,
)
from otelkit.collector.pdata.signals import Signal, count_items
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Exporter, Kind
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from otelkit.logstore.query import build_query
from otelkit.logstore.store import open_store
from tests.collector.builders import item_names, poisoned_metrics, poisoned_traces, traces
from tests.collector.exporters.fake_servers import FakeHttpServer
from tests.prometheus.test_remotewrite import FakeEndpoint


def invalid(telemetry: SelfTelemetry, signal: Signal) -> float:
    name = f"otelcol_exporter_send_failed_{signal.item_name}_total"
    return telemetry.total(name, reason="invalid")


def sent(telemetry: SelfTelemetry, signal: Signal) -> float:
    return telemetry.total(f"otelcol_exporter_sent_{signal.item_name}_total")


def settings(type_: str) -> CreateSettings:
    return CreateSettings(ComponentID(type_), Kind.EXPORTER, SelfTelemetry())


@asynccontextmanager
async def started(exporter: Exporter) -> AsyncIterator[Exporter]:
    await exporter.start(ServiceHost())
    try:
        yield exporter
    finally:
        await exporter.shutdown()


async def until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_prometheus_scrapes_every_valid_point_and_counts_the_rest() -> None:
    request, valid, bad = poisoned_metrics()

    async def main() -> tuple[str, str, SelfTelemetry]:
        s = settings("prometheus")
        exporter = PrometheusExporter(s, PrometheusConfig(endpoint="127.0.0.1:0"))
        async with started(exporter):
            await exporter.consume(request)
            text = b"".join(await exporter.exposition(False)).decode()
            openmetrics = b"".join(await exporter.exposition(True)).decode()
        return text, openmetrics, s.telemetry

    text, openmetrics, telemetry = asyncio.run(main())
    names = {f.name for f in parse_text(text)}
    assert {"ok0", "ok1", "latency_seconds"} <= names
    assert not any(name.startswith("bad") for name in names)
    assert list(text_string_to_metric_families(openmetrics))  # the whole scrape parses
    assert invalid(telemetry, Signal.METRICS) == bad
    assert sent(telemetry, Signal.METRICS) == valid


def test_remote_write_sends_every_valid_point_and_counts_the_rest() -> None:
    request, valid, bad = poisoned_metrics()
    endpoint = FakeEndpoint([])

    async def main() -> SelfTelemetry:
        await endpoint.server.start()
        s = settings("prometheusremotewrite")
        config = RemoteWriteConfig(endpoint=f"http://127.0.0.1:{endpoint.server.port}/w")
        async with started(RemoteWriteExporter(s, config)) as exporter:
            await exporter.consume(request)
            await until(lambda: sent(s.telemetry, Signal.METRICS) == valid)
        await endpoint.server.stop()
        return s.telemetry

    telemetry = asyncio.run(main())
    names = {lb.value for ts in endpoint.bodies[0].timeseries for lb in ts.labels
             if lb.name == "__name__"}  # fmt: skip
    assert "ok0_total" in names and not any(n.startswith("bad") for n in names)
    assert all(math.isfinite(s.value) for ts in endpoint.bodies[0].timeseries for s in ts.samples)
    assert invalid(telemetry, Signal.METRICS) == bad


@pytest.mark.parametrize("fmt", ["json", "proto"])
def test_file_writes_every_item_it_can_encode_and_counts_the_rest(fmt: str, tmp_path: Path) -> None:
    request, bad_index = poisoned_traces()
    names = item_names(request)
    path = tmp_path / f"out.{fmt}"

    async def main() -> SelfTelemetry:
        s = settings("file")
        config = FileExporterConfig(path=str(path), format=fmt)  # type: ignore[arg-type]
        async with started(FileExporter(s, config)) as exporter:
            await exporter.consume(request)
            await until(lambda: sent(s.telemetry, Signal.TRACES) >= len(names) - 1)
        return s.telemetry

    telemetry = asyncio.run(main())
    read = read_requests(path, format=fmt, signal=Signal.TRACES)  # type: ignore[arg-type]
    written = [n for r in read for n in item_names(r)]
    if fmt == "json":  # a 20-byte trace ID has no OTLP/JSON form
        assert sorted(written) == sorted(n for i, n in enumerate(names) if i != bad_index)
        assert invalid(telemetry, Signal.TRACES) == 1
    else:  # protobuf carries it as it came
        assert sorted(written) == sorted(names)
        assert invalid(telemetry, Signal.TRACES) == 0


def test_file_writes_an_applications_spans_batched_with_many_it_cannot_encode(
    tmp_path: Path,
) -> None:
    """A batch processor joins a sender's 40 spans to the end of a hostile batch in which
    one span in three has a 15-byte trace ID: every one of the 40 reaches the file."""
    request = traces([[60], [40]])
    for i, span in enumerate(request.resource_spans[0].scope_spans[0].spans):
        if i % 3 == 0:
            span.trace_id = b"\x01" * 15
    path = tmp_path / "out.json"

    async def main() -> SelfTelemetry:
        s = settings("file")
        async with started(FileExporter(s, FileExporterConfig(path=str(path)))) as exporter:
            await exporter.consume(request)
            await until(
                lambda: (
                    sent(s.telemetry, Signal.TRACES) + invalid(s.telemetry, Signal.TRACES) == 100
                )
            )
        return s.telemetry

    telemetry = asyncio.run(main())
    written = {n for r in read_requests(path) for n in item_names(r)}
    assert {f"s1.0.{i}" for i in range(40)} <= written
    assert invalid(telemetry, Signal.TRACES) == 20


def test_otlphttp_json_sends_every_item_it_can_encode_and_counts_the_rest() -> None:
    request, bad_index = poisoned_traces()
    names = item_names(request)

    async def main() -> tuple[FakeHttpServer, SelfTelemetry]:
        server = FakeHttpServer()
        await server.start()
        s = settings("otlphttp")
        config = OTLPHTTPExporterConfig(endpoint=server.url, encoding="json")
        async with started(OTLPHTTPExporter(s, config, frozenset(Signal))) as exporter:
            await exporter.consume(request)
            await until(lambda: sent(s.telemetry, Signal.TRACES) == len(names) - 1)
        await server.stop()
        return server, s.telemetry

    server, telemetry = asyncio.run(main())
    delivered = sorted(n for r in server.received for n in item_names(r))
    assert delivered == sorted(n for i, n in enumerate(names) if i != bad_index)
    assert invalid(telemetry, Signal.TRACES) == 1


@pytest.mark.parametrize("verbosity", ["basic", "normal", "detailed"])
def test_debug_prints_odd_values_without_failing(verbosity: str) -> None:
    metrics, valid, bad = poisoned_metrics()
    spans, _ = poisoned_traces()

    async def main() -> SelfTelemetry:
        s = settings("debug")
        config = DebugExporterConfig(verbosity=verbosity, sampling_initial=10)  # type: ignore[arg-type]
        async with started(DebugExporter(s, config)) as exporter:
            await exporter.consume(metrics)
            await exporter.consume(spans)
            await until(lambda: sent(s.telemetry, Signal.TRACES) == count_items(spans))
            await until(lambda: sent(s.telemetry, Signal.METRICS) == valid + bad)
        return s.telemetry

    telemetry = asyncio.run(main())
    assert invalid(telemetry, Signal.METRICS) == invalid(telemetry, Signal.TRACES) == 0


def poisoned_logs() -> ExportLogsServiceRequest:
    """Records with values at the edges of what OTLP allows, among ordinary ones."""
    request = ExportLogsServiceRequest()
    scope = request.resource_logs.add().scope_logs.add()
    for i in range(20):
        scope.log_records.add(
            time_unix_nano=1_700_000_000_000_000_000 + i
        ).body.string_value = f"ordinary {i}"
    odd = scope.log_records
    odd.add(time_unix_nano=2**64 - 1, observed_time_unix_nano=2**64 - 1).body.string_value = "t"
    odd.add(severity_number=2**31 - 1).body.double_value = float("nan")  # type: ignore[arg-type]
    odd.add(trace_id=b"\x01" * 40, span_id=b"\x02").body.bytes_value = b"\x00\xff" * 10
    odd.add().body.string_value = "nul \x00 in text \u0000"
    deep = odd.add()
    value = deep.body
    for _ in range(60):
        value = value.kvlist_value.values.add(key="k").value
    value.int_value = -(2**63)
    big = odd.add()
    big.attributes.add(key="\x00").value.int_value = 2**63 - 1
    big.body.string_value = "attributes at the edge"
    return request


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_logstore_stores_records_with_values_at_the_edges(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'logs.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    payload = poisoned_logs()
    total = count_items(payload)

    async def main() -> SelfTelemetry:
        s = settings("logstore")
        # Retention off: the records at the edges include times long past, which the
        # background pruning would otherwise remove as soon as it runs.
        config = LogStoreConfig(url=url, durability="commit", retention="0")
        async with started(LogStoreExporter(s, config)) as exporter:
            await exporter.consume(payload)
        return s.telemetry

    telemetry = asyncio.run(main())
    store = open_store(url, create=False)
    try:
        stored = store.query(build_query(limit=1000)).records
    finally:
        store.close()
    assert len(stored) == total
    assert sent(telemetry, Signal.LOGS) == total


@pytest.fixture
def pg_url() -> Any:
    from tests.logstore.conftest import drop_postgres_schema, postgres_url

    url = postgres_url()
    yield url
    drop_postgres_schema(url)
