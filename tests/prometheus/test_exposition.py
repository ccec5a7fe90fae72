"""What a scraper gets from ``/metrics``: both formats, valid for real parsers and promtool."""

from __future__ import annotations

import asyncio
import subprocess

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from otelkit.collector.exporters.prometheus.exposition import (
    render_openmetrics,
    render_text,
    wants_openmetrics,
)
from otelkit.collector.exporters.prometheus.store import CumulativeStore
from otelkit.collector.exporters.prometheus.translation import TranslationOptions, translate
from tests.prometheus.payloads import (
    gauge_metric,
    histogram_metric,
    kvs,
    metrics_request,
    sum_metric,
)
from tests.prometheus.scrape import running_exporter
from tests.support.services import require_binary

TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN_ID = bytes.fromhex("b7ad6b7169203331")
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def sdk_metrics() -> ExportMetricsServiceRequest:
    """Every instrument kind, as the real SDK encodes it."""
    reader = InMemoryMetricReader()
    resource = Resource.create({"service.name": "shop", "service.instance.id": "i-1",
                                "deployment.environment": "test"})  # fmt: skip
    meter = MeterProvider(metric_readers=[reader], resource=resource).get_meter("shop.meter", "1.0")
    meter.create_counter("orders.placed", unit="{order}", description='Orders "placed"\nok').add(
        3, {"region": 'e"u\\1', "http.route": "/orders/{id}"}
    )
    meter.create_histogram("http.server.request.duration", unit="s").record(
        0.3, {"http.route": "/"}
    )
    meter.create_gauge("queue.utilization", unit="1").set(0.25)
    meter.create_up_down_counter("db.connections", unit="{connection}").add(4)
    return encode_metrics(reader.get_metrics_data())


def with_exemplars_and_summary() -> ExportMetricsServiceRequest:
    hist = histogram_metric("span.duration", [10, 100], [1, 1, 0], 60.0, unit="ms")
    ex = hist.histogram.data_points[0].exemplars.add(
        trace_id=TRACE_ID, span_id=SPAN_ID, as_double=55.0, time_unix_nano=1_700_000_000_500_000_000
    )
    assert ex.as_double == 55.0
    summary = Metric(name="rpc.latency", unit="ms")
    dp = summary.summary.data_points.add(count=10, sum=50.0, time_unix_nano=1)
    dp.quantile_values.add(quantile=0.5, value=4.0)
    dp.quantile_values.add(quantile=0.99, value=9.5)
    return metrics_request(hist, summary)


async def scrape_both() -> tuple[httpx.Response, httpx.Response]:
    async with running_exporter() as exporter:
        await exporter.consume(sdk_metrics())
        await exporter.consume(with_exemplars_and_summary())
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        async with httpx.AsyncClient() as client:
            text = await client.get(url)
            openmetrics = await client.get(url, headers={"Accept": PROMETHEUS_ACCEPT})
    return text, openmetrics


@pytest.fixture(scope="module")
def scrapes() -> tuple[httpx.Response, httpx.Response]:
    return asyncio.run(scrape_both())


def test_plain_scrapers_get_text_format(scrapes: tuple[httpx.Response, httpx.Response]) -> None:
    text, _ = scrapes
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parse_text(text.text)}
    assert families["orders_placed"].type == "counter"
    sample = families["orders_placed"].samples[0]
    assert sample.value == 3
    assert sample.labels["region"] == 'e"u\\1'
    assert sample.labels["job"] == "shop" and sample.labels["instance"] == "i-1"
    assert families["http_server_request_duration_seconds"].type == "histogram"
    assert families["queue_utilization_ratio"].samples[0].value == 0.25
    assert families["db_connections"].type == "gauge"
    assert families["rpc_latency_milliseconds"].type == "summary"
    info = families["target_info"].samples[0].labels
    assert info["deployment_environment"] == "test"
    assert " # {" not in text.text, "exemplars only belong in OpenMetrics"


def test_openmetrics_is_served_with_exemplars_when_asked(
    scrapes: tuple[httpx.Response, httpx.Response],
) -> None:
    _, om = scrapes
    assert om.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om.text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(om.text)}
    assert families["orders_placed"].type == "counter"
    assert families["orders_placed"].samples[0].name == "orders_placed_total"
    buckets = [
        s for s in families["span_duration_milliseconds"].samples if s.name.endswith("_bucket")
    ]
    exemplar = next(s.exemplar for s in buckets if s.exemplar is not None)
    assert exemplar.labels == {"trace_id": TRACE_ID.hex(), "span_id": SPAN_ID.hex()}
    assert exemplar.value == 55.0
    le_of_exemplar = next(s.labels["le"] for s in buckets if s.exemplar is not None)
    assert le_of_exemplar == "100.0"


def promtool_check(text: bytes) -> tuple[int, list[str]]:
    promtool = require_binary("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            timeout=30, check=False)  # fmt: skip
    return result.returncode, (result.stdout + result.stderr).decode().splitlines()


def test_promtool_accepts_a_scrape_of_sdk_metrics() -> None:
    async def run() -> bytes:
        async with running_exporter() as exporter:
            await exporter.consume(sdk_metrics())
            async with httpx.AsyncClient() as client:
                return (await client.get(f"http://127.0.0.1:{exporter.port}/metrics")).content

    code, problems = promtool_check(asyncio.run(run()))
    assert code == 0, problems


def test_promtool_only_advises_base_units_for_millisecond_metrics(
    scrapes: tuple[httpx.Response, httpx.Response],
) -> None:
    """The OTLP unit is the user's (spanmetrics defaults to ms, as upstream): the name must
    keep it, so promtool's base-unit advice is the one thing it may say."""
    text, _ = scrapes
    code, problems = promtool_check(text.content)
    assert code in (0, 3), problems  # 1 would be a parse error
    assert problems == [
        'rpc_latency_milliseconds use base unit "seconds" instead of "milliseconds"',
        'span_duration_milliseconds use base unit "seconds" instead of "milliseconds"',
    ]


def test_head_other_paths_and_methods() -> None:
    async def run() -> tuple[int, int, int, bytes]:
        async with running_exporter() as exporter:
            base = f"http://127.0.0.1:{exporter.port}"
            async with httpx.AsyncClient() as client:
                missing = await client.get(base + "/")
                post = await client.post(base + "/metrics")
                head = await client.head(base + "/metrics")
        return missing.status_code, post.status_code, head.status_code, head.content

    assert asyncio.run(run()) == (404, 405, 200, b"")


def test_disabling_openmetrics_always_serves_text() -> None:
    async def run() -> str:
        async with (
            running_exporter(enable_open_metrics=False) as exporter,
            httpx.AsyncClient() as client,
        ):
            url = f"http://127.0.0.1:{exporter.port}/metrics"
            response = await client.get(url, headers={"Accept": PROMETHEUS_ACCEPT})
        return response.headers["content-type"]

    assert asyncio.run(run()).startswith("text/plain")


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (PROMETHEUS_ACCEPT, True),
        ("", False),
        ("*/*", False),
        ("text/plain;version=0.0.4", False),
        ("application/openmetrics-text;version=1.0.0;q=0.2,text/plain;q=0.9", False),
        ("application/openmetrics-text", True),
    ],
)
def test_content_negotiation(accept: str, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


def test_namespace_const_labels_and_timestamps() -> None:
    async def run() -> str:
        async with running_exporter(namespace="acme", const_labels={"cluster": "eu-1"},
                                    send_timestamps=True) as exporter:  # fmt: skip
            await exporter.consume(sdk_metrics())
            async with httpx.AsyncClient() as client:
                return (await client.get(f"http://127.0.0.1:{exporter.port}/metrics")).text

    families = {f.name: f for f in parse_text(asyncio.run(run()))}
    sample = families["acme_orders_placed"].samples[0]
    assert sample.labels["cluster"] == "eu-1"
    assert sample.timestamp is not None and sample.timestamp > 1_600_000_000


def test_a_large_batch_is_ingested_without_holding_the_event_loop() -> None:
    """Other tasks (receivers, scrapes) get turns while thousands of points go in."""
    request = metrics_request(*(gauge_metric(f"g{i}", float(i)) for i in range(2000)))

    async def run() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        async with running_exporter() as exporter:
            task = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            before = ticks
            await exporter.consume(request)
            during = ticks - before
            task.cancel()
            async with httpx.AsyncClient() as client:  # a body of several chunks
                scrape = await client.get(f"http://127.0.0.1:{exporter.port}/metrics")
            families = {f.name for f in parse_text(scrape.text)}
            return during, len(families)

    during, families = asyncio.run(run())
    assert families == 2000
    assert during >= 5, "the ticker should run between ingestion chunks"


def rendered(*metrics: Metric) -> tuple[str, str]:
    """The text and OpenMetrics expositions of ``metrics``."""
    store = CumulativeStore(0)
    store.ingest(translate(metrics_request(*metrics), TranslationOptions()))
    snapshot = store.snapshot()
    return (b"".join(render_text(snapshot)).decode(),
            b"".join(render_openmetrics(snapshot)).decode())  # fmt: skip


def test_sums_openmetrics_cannot_carry_are_left_out_of_it_alone() -> None:
    """OpenTelemetry allows negative measurements; OpenMetrics takes a histogram's sum as
    a counter (never NaN or negative, none beside a negative bound, and no count without
    a sum) and a summary's sum and quantile values likewise: a parser refuses the whole
    scrape otherwise. The text format keeps them."""
    summary = Metric(name="rpc.delta", unit="s")
    dp = summary.summary.data_points.add(count=2, sum=-3.0, time_unix_nano=1)
    dp.quantile_values.add(quantile=0.5, value=-2.0)
    dp.quantile_values.add(quantile=0.9, value=float("nan"))
    text, om = rendered(
        histogram_metric("offset", [-5.0, 0.0, 5.0], [1, 1, 1, 0], 1.0),
        histogram_metric("skew", [1.0], [2, 0], -4.0),
        histogram_metric("broken", [1.0], [2, 0], float("nan")),
        histogram_metric("fine", [1.0], [2, 0], 1.5),
        summary,
    )
    om_samples = {s.name: s for f in parse_openmetrics(om) for s in f.samples}
    text_samples = {s.name: s for f in parse_text(text) for s in f.samples}
    for name in ("offset_seconds", "skew_seconds", "broken_seconds"):
        assert f"{name}_sum" not in om_samples and f"{name}_count" not in om_samples
        assert f"{name}_sum" in text_samples and f"{name}_count" in text_samples
    assert om_samples["fine_seconds_sum"].value == 1.5
    assert om_samples["fine_seconds_count"].value == 2
    assert "rpc_delta_seconds_sum" not in om_samples
    assert om_samples["rpc_delta_seconds_count"].value == 2
    assert [s.labels["quantile"] for f in parse_openmetrics(om) for s in f.samples
            if s.name == "rpc_delta_seconds"] == ["0.9"]  # fmt: skip
    assert text_samples["rpc_delta_seconds_sum"].value == -3.0


def test_exemplar_labels_that_need_escaping_are_left_out_of_openmetrics() -> None:
    """prometheus_client reads an escaped quote in an exemplar as the value's end."""
    metric = sum_metric("orders", 1.0)
    exemplar = metric.sum.data_points[0].exemplars.add(as_double=1.0, trace_id=TRACE_ID)
    exemplar.filtered_attributes.extend(kvs({"quote": 'a"b', "newline": "a\nb", "plain": "ok"}))
    _, om = rendered(metric)
    (sample,) = [s for f in parse_openmetrics(om) for s in f.samples]
    assert sample.exemplar is not None
    assert sample.exemplar.labels == {"trace_id": TRACE_ID.hex(), "plain": "ok"}
