"""prometheusremotewrite: the wire format, the status-code contract, and a real Prometheus."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import cramjam

from otelkit.collector.exporters.prometheus.translation import TranslationOptions, translate
from otelkit.collector.exporters.prometheusremotewrite import prompb
from otelkit.collector.exporters.prometheusremotewrite.exporter import (
    RemoteWriteConfig,
    RemoteWriteExporter,
    build_write_requests,
)
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.http import HttpServer, Receive, Scope, Send, read_body, respond
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.prometheus.payloads import (
    DELTA,
    SECOND,
    T0,
    gauge_metric,
    histogram_metric,
    metrics_request,
    sum_metric,
)
from tests.prometheus.promserver import prometheus, remote_write

RESOURCE = {"service.name": "shop", "service.instance.id": "i-1", "host.name": "node-1"}


def decode(requests: Any) -> dict[tuple[tuple[str, str], ...], Any]:
    return {
        tuple((lb.name, lb.value) for lb in ts.labels): ts for r in requests for ts in r.timeseries
    }


def test_series_have_sorted_labels_a_name_and_millisecond_samples() -> None:
    request = metrics_request(
        sum_metric("http.requests", 7, attrs={"http.route": "/a"}),
        histogram_metric("latency", [0.1, 1], [1, 2, 3], 9.0),
        resource=RESOURCE,
    )
    series = decode(build_write_requests(translate(request, TranslationOptions()), 3_000_000))
    for labels in series:
        assert list(labels) == sorted(labels)
    by_name = {
        dict(labels)["__name__"] + str(dict(labels).get("le", "")): ts
        for labels, ts in series.items()
    }
    counter = by_name["http_requests_total"]
    assert dict((lb.name, lb.value) for lb in counter.labels)["http_route"] == "/a"
    assert [(s.value, s.timestamp) for s in counter.samples] == [(7.0, (T0 + SECOND) // 10**6)]
    assert [
        by_name[f"latency_seconds_bucket{le}"].samples[0].value for le in ("0.1", "1.0", "+Inf")
    ] == [1, 3, 6]
    assert by_name["latency_seconds_count"].samples[0].value == 6
    info = dict(next(labels for labels in series if dict(labels)["__name__"] == "target_info"))
    assert info["host_name"] == "node-1" and info["job"] == "shop" and info["instance"] == "i-1"


def test_samples_of_one_series_are_grouped_in_time_order() -> None:
    later = sum_metric("c", 2, end=T0 + 2 * SECOND)
    earlier = sum_metric("c", 1, end=T0 + SECOND)
    series = decode(
        build_write_requests(
            translate(metrics_request(later, earlier), TranslationOptions()), 10**6
        )
    )
    (ts,) = [ts for labels, ts in series.items() if ("__name__", "c_total") in labels]
    assert [s.value for s in ts.samples] == [1, 2]


def test_requests_are_split_at_the_size_limit() -> None:
    metrics = [gauge_metric(f"g{i}", float(i)) for i in range(50)]
    requests = list(
        build_write_requests(translate(metrics_request(*metrics), TranslationOptions()), 500)
    )
    assert len(requests) > 1
    assert all(r.ByteSize() <= 500 for r in requests)
    assert sum(len(r.timeseries) for r in requests) == 50


def test_no_recorded_value_is_sent_as_the_stale_marker() -> None:
    request = metrics_request(sum_metric("c", 0, flags=1))
    (ts,) = decode(build_write_requests(translate(request, TranslationOptions()), 10**6)).values()
    assert math.isnan(ts.samples[0].value)


class FakeEndpoint:
    """A remote-write endpoint answering scripted statuses, recording what it got."""

    def __init__(self, statuses: list[int], headers: dict[str, str] | None = None) -> None:
        self.statuses = statuses
        self.headers = headers or {}
        self.bodies: list[Any] = []
        self.request_headers: list[dict[str, str]] = []
        self.server = HttpServer("127.0.0.1:0", self.app, name="fake-remote-write")

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive, 10**7) or b""
        self.request_headers.append({k.decode(): v.decode() for k, v in scope["headers"]})
        self.bodies.append(
            prompb.WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(body)))
        )
        status = self.statuses.pop(0) if self.statuses else 204
        headers = [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await respond(send, status, b"answer", "text/plain", headers)


async def export_to(endpoint: FakeEndpoint, **extra: Any) -> SelfTelemetry:
    await endpoint.server.start()
    telemetry = SelfTelemetry()
    config = RemoteWriteConfig.model_validate({
        "endpoint": f"http://127.0.0.1:{endpoint.server.port}/api/v1/write",
        "retry_on_failure": {"initial_interval": "10ms", "max_interval": "20ms", "max_elapsed_time": "5s"},
        "sending_queue": {"enabled": False},
        **extra,
    })  # fmt: skip
    settings = CreateSettings(ComponentID("prometheusremotewrite"), Kind.EXPORTER, telemetry)
    exporter = RemoteWriteExporter(settings, config)
    await exporter.start(ServiceHost())
    try:
        await exporter.consume(metrics_request(sum_metric("c", 1)))
    except Exception:
        pass
    finally:
        await exporter.shutdown()
        await endpoint.server.stop()
    return telemetry


def sent(telemetry: SelfTelemetry) -> float:
    return telemetry.total("otelcol_exporter_sent_metric_points_total")


def failed(telemetry: SelfTelemetry, reason: str) -> float:
    return telemetry.total("otelcol_exporter_send_failed_metric_points_total", reason=reason)


def test_protocol_headers_and_custom_headers() -> None:
    endpoint = FakeEndpoint([204])
    asyncio.run(export_to(endpoint, headers={"Authorization": "Bearer t"}))
    headers = endpoint.request_headers[0]
    assert headers["content-encoding"] == "snappy"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-prometheus-remote-write-version"] == "0.1.0"
    assert headers["authorization"] == "Bearer t"


def test_a_4xx_answer_is_permanent() -> None:
    endpoint = FakeEndpoint([400, 204])
    telemetry = asyncio.run(export_to(endpoint))
    assert len(endpoint.bodies) == 1, "not retried"
    assert failed(telemetry, "permanent") == 1 and sent(telemetry) == 0


def test_5xx_and_429_are_retried() -> None:
    endpoint = FakeEndpoint([503, 429, 204], headers={"Retry-After": "0"})
    telemetry = asyncio.run(export_to(endpoint))
    assert len(endpoint.bodies) == 3
    assert sent(telemetry) == 1


def test_delta_points_are_dropped_and_counted() -> None:
    endpoint = FakeEndpoint([])

    async def run() -> SelfTelemetry:
        await endpoint.server.start()
        telemetry = SelfTelemetry()
        config = RemoteWriteConfig(endpoint=f"http://127.0.0.1:{endpoint.server.port}/w")
        exporter = RemoteWriteExporter(
            CreateSettings(ComponentID("prw"), Kind.EXPORTER, telemetry), config
        )
        await exporter.start(ServiceHost())
        await exporter.send(
            metrics_request(sum_metric("d", 1, temporality=DELTA), gauge_metric("g", 1))
        )
        await exporter.shutdown()
        await endpoint.server.stop()
        return telemetry

    telemetry = asyncio.run(run())
    assert failed(telemetry, "delta_temporality") == 1
    names = {
        lb.value
        for ts in endpoint.bodies[0].timeseries
        for lb in ts.labels
        if lb.name == "__name__"
    }
    assert names == {"g"}


def test_a_real_prometheus_receives_remote_written_series(tmp_path: Path) -> None:
    now = time.time_ns()
    hist = histogram_metric("latency", [0.1, 1], [1, 2, 3], 9.0, start=now - SECOND, end=now)
    ex = hist.histogram.data_points[0].exemplars.add(
        trace_id=b"\xab" * 16, span_id=b"\xcd" * 8, as_double=0.5, time_unix_nano=now
    )
    assert ex.span_id
    request = metrics_request(
        sum_metric("orders", 42, start=now - SECOND, end=now, attrs={"region": "eu"}), hist,
        resource=RESOURCE,
    )  # fmt: skip
    with prometheus(tmp_path, remote_write_receiver=True) as prom:
        telemetry = remote_write(prom, request, external_labels={"cluster": "test"}, namespace="rw")
        assert sent(telemetry) == 2 and not failed(telemetry, "permanent")
        (counter,) = prom.wait_for("rw_orders_total")
        assert counter["metric"] == {"__name__": "rw_orders_total", "region": "eu", "job": "shop",
                                     "instance": "i-1", "cluster": "test",
                                     "otel_scope_name": "test.scope"}  # fmt: skip
        assert counter["value"][1] == "42"
        (p50,) = prom.wait_for("histogram_quantile(0.5, rw_latency_seconds_bucket)")
        assert 0.1 < float(p50["value"][1]) <= 1
        (info,) = prom.wait_for("target_info")
        assert info["metric"]["host_name"] == "node-1"
        exemplars = prom.api("query_exemplars", query="rw_latency_seconds_bucket",
                             start=(now // SECOND) - 60, end=(now // SECOND) + 60)  # fmt: skip
        labels = [e["labels"] for series in exemplars for e in series["exemplars"]]
        assert {"trace_id": "ab" * 16, "span_id": "cd" * 8} in labels


def test_one_sender_by_default_so_samples_of_a_series_stay_in_order() -> None:
    config = RemoteWriteConfig(endpoint="http://127.0.0.1:9/api/v1/write")
    assert config.sending_queue.num_consumers == 1
