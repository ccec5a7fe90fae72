"""The OTLP/HTTP exporter against an in-process HTTP server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from pydantic import ValidationError

from otelkit.collector.exporters.otlphttp import (
    OTLPHTTPExporter,
    OTLPHTTPExporterConfig,
    parse_retry_after,
)
from otelkit.collector.pdata.signals import Signal, count_items
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind, Status
from otelkit.collector.runtime.errors import PermanentError, RetryableError
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.collector.builders import logs, metrics, traces
from tests.collector.exporters.fake_servers import FakeHttpServer, HttpAnswer
from tests.support.services import free_port

FAST_RETRY = {"initial_interval": "10ms", "max_interval": "20ms", "max_elapsed_time": "5s"}


def run(
    test: Callable[[OTLPHTTPExporter, FakeHttpServer, SelfTelemetry], Awaitable[None]],
    *,
    server_up: bool = True,
    **config: Any,
) -> None:
    async def main() -> None:
        server = FakeHttpServer()
        if server_up:
            await server.start()
        base = server.url if server_up else f"http://127.0.0.1:{free_port()}"
        telemetry = SelfTelemetry()
        settings = CreateSettings(ComponentID("otlphttp"), Kind.EXPORTER, telemetry)
        cfg = OTLPHTTPExporterConfig.model_validate(
            {"endpoint": base, "retry_on_failure": FAST_RETRY, **config}
        )
        exporter = OTLPHTTPExporter(settings, cfg, frozenset(Signal))
        await exporter.start(ServiceHost())
        try:
            await test(exporter, server, telemetry)
        finally:
            await exporter.shutdown()
            if server_up:
                await server.stop()

    asyncio.run(main())


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_sends_every_signal_to_its_path(compression: str) -> None:
    async def check(exporter: OTLPHTTPExporter, server: FakeHttpServer, _: Any) -> None:
        sent = [traces([[2]]), metrics([1, 2]), logs([[1], [1]])]
        for payload in sent:
            await exporter.send(payload)
        assert server.received == sent
        assert [path for path, _ in server.requests] == ["/v1/traces", "/v1/metrics", "/v1/logs"]
        headers = server.requests[0][1]
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["authorization"] == "Bearer t0k3n"
        assert headers.get("content-encoding") == ("gzip" if compression == "gzip" else None)

    run(check, compression=compression, headers={"Authorization": "Bearer t0k3n"})


def test_json_encoding_sends_otlp_json() -> None:
    async def check(exporter: OTLPHTTPExporter, server: FakeHttpServer, t: SelfTelemetry) -> None:
        server.success_body = b'{"partialSuccess": {"rejectedSpans": "1", "errorMessage": "old"}}'
        server.success_type = "application/json"
        sent = traces([[2], [1]])
        await exporter.send(sent)
        assert server.received == [sent]
        assert server.requests[0][1]["content-type"] == "application/json"
        assert t.total("otelcol_exporter_send_failed_spans_total", reason="rejected") == 1

    run(check, encoding="json")


def test_signal_endpoint_overrides_the_base() -> None:
    async def check(exporter: OTLPHTTPExporter, server: FakeHttpServer, _: Any) -> None:
        await exporter.send(traces([[1]]))
        await exporter.send(logs([[1]]))
        assert [path for path, _ in server.requests] == ["/v1/traces", "/v1/logs"]

    async def main() -> None:
        server = FakeHttpServer()
        await server.start()
        settings = CreateSettings(ComponentID("otlphttp"), Kind.EXPORTER, SelfTelemetry())
        cfg = OTLPHTTPExporterConfig(
            traces_endpoint=f"{server.url}/v1/traces", logs_endpoint=f"{server.url}/v1/logs"
        )
        exporter = OTLPHTTPExporter(settings, cfg, frozenset({Signal.TRACES, Signal.LOGS}))
        await exporter.start(ServiceHost())
        await check(exporter, server, None)
        await exporter.shutdown()
        await server.stop()

    asyncio.run(main())


def test_a_pipeline_signal_without_a_url_is_an_error() -> None:
    settings = CreateSettings(ComponentID("otlphttp"), Kind.EXPORTER, SelfTelemetry())
    cfg = OTLPHTTPExporterConfig(traces_endpoint="http://127.0.0.1:1/v1/traces")
    with pytest.raises(ValueError, match="metrics_endpoint"):
        OTLPHTTPExporter(settings, cfg, frozenset({Signal.METRICS}))


def _status(message: str) -> bytes:
    return status_pb2.Status(code=8, message=message).SerializeToString()


@pytest.mark.parametrize(
    ("answer", "expected", "retry_after", "explanation"),
    [
        (HttpAnswer(429, {"retry-after": "3"}, _status("slow down")), RetryableError, 3.0,
         "slow down"),
        (HttpAnswer(503, {}, _status("overloaded")), RetryableError, None, "overloaded"),
        (HttpAnswer(502, {}, b"bad gateway", "text/plain"), RetryableError, None, "bad gateway"),
        (HttpAnswer(504), RetryableError, None, "Gateway Timeout"),
        (HttpAnswer(400, {}, _status("malformed spans")), PermanentError, None,
         "malformed spans"),
        (HttpAnswer(400, {}, b'{"code": 3, "message": "bad json"}', "application/json"),
         PermanentError, None, "bad json"),
        (HttpAnswer(401), PermanentError, None, "Unauthorized"),
        (HttpAnswer(413, {}, b"too big", "text/plain"), PermanentError, None, "too big"),
        (HttpAnswer(500, {}, b"boom", "text/plain"), PermanentError, None, "boom"),
    ],
)  # fmt: skip
def test_statuses_map_to_retryable_or_permanent(
    answer: HttpAnswer, expected: type[Exception], retry_after: float | None, explanation: str
) -> None:
    async def check(exporter: OTLPHTTPExporter, server: FakeHttpServer, _: Any) -> None:
        server.answers.append(answer)
        with pytest.raises(expected, match=f"HTTP {answer.status}: {explanation}") as caught:
            await exporter.send(traces([[1]]))
        if isinstance(caught.value, RetryableError):
            assert caught.value.retry_after == retry_after

    run(check)


def test_retry_after_as_an_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("soon") is None


def test_retryable_answers_are_retried_until_the_data_arrives() -> None:
    async def check(exporter: OTLPHTTPExporter, server: FakeHttpServer, t: SelfTelemetry) -> None:
        server.answers.extend([HttpAnswer(503), HttpAnswer(429, {"retry-after": "0"})])
        await exporter.consume(traces([[3]]))
        async with asyncio.timeout(5):
            while not t.total("otelcol_exporter_sent_spans_total"):
                await asyncio.sleep(0.01)
        assert t.total("otelcol_exporter_sent_spans_total") == 3

    run(check)


def test_a_server_that_is_down_is_retryable() -> None:
    async def check(exporter: OTLPHTTPExporter, server: FakeHttpServer, _: Any) -> None:
        with pytest.raises(RetryableError, match="ConnectError"):
            await exporter.send(traces([[1]]))

    run(check, server_up=False)


def test_health_shows_an_unreachable_destination() -> None:
    async def check(exporter: OTLPHTTPExporter, server: FakeHttpServer, _: Any) -> None:
        assert exporter.host is not None
        exporter.host.report_status("exporter/otlphttp", Status.OK)
        with pytest.raises(RetryableError):
            await exporter.send(traces([[1]]))
        status, message = exporter.host.component_statuses()["exporter/otlphttp"]
        assert status == Status.RECOVERABLE_ERROR and "ConnectError" in message

    run(check, server_up=False)


def test_partial_success_counts_the_rejected_items() -> None:
    response = ExportTraceServiceResponse()
    response.partial_success.rejected_spans = 1
    response.partial_success.error_message = "one span without a trace ID"

    async def check(exporter: OTLPHTTPExporter, server: FakeHttpServer, t: SelfTelemetry) -> None:
        server.success_body = response.SerializeToString()
        await exporter.send(traces([[3]]))
        assert t.total("otelcol_exporter_send_failed_spans_total", reason="rejected") == 1

    run(check)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "set endpoint"),
        ({"endpoint": "collector:4318"}, "not an HTTP URL"),
        ({"traces_endpoint": "ftp://x/v1/traces"}, "not an HTTP URL"),
        ({"endpoint": "http://c:4318", "headers": {"bad header": "x"}}, "not a valid header"),
    ],
)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OTLPHTTPExporterConfig.model_validate(config)


def test_a_413_lowers_the_limit_and_the_request_is_cut_and_resent() -> None:
    async def check(exporter: OTLPHTTPExporter, server: FakeHttpServer, t: SelfTelemetry) -> None:
        server.max_body = 200_000
        request = traces([[3000]])
        for span in request.resource_spans[0].scope_spans[0].spans:
            span.attributes.add(key="payload").value.string_value = "x" * 300
        await exporter.consume(request)
        async with asyncio.timeout(10):
            while t.total("otelcol_exporter_sent_spans_total") < 3000:
                await asyncio.sleep(0.01)
        assert sum(count_items(r) for r in server.received) == 3000
        assert t.total("otelcol_exporter_send_failed_spans_total") == 0
        assert exporter.request_limit <= 200_000

    run(check)
