"""The OTLP/gRPC exporter against an in-process gRPC server."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from otelkit.collector.exporters.otlp import OTLPExporter, OTLPExporterConfig
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind, Status
from otelkit.collector.runtime.errors import PermanentError, RetryableError
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.collector.builders import item_names, logs, metrics, traces
from tests.collector.exporters.fake_servers import FakeGrpcServer, GrpcFailure
from tests.support.services import free_port, require_binary

FAST_RETRY = {"initial_interval": "10ms", "max_interval": "20ms", "max_elapsed_time": "5s"}


def run(
    test: Callable[[OTLPExporter, FakeGrpcServer, SelfTelemetry], Awaitable[None]],
    *,
    server_up: bool = True,
    **config: Any,
) -> None:
    async def main() -> None:
        host = ServiceHost()
        host.report_status("exporter/otlp", Status.OK)
        server = FakeGrpcServer()
        if server_up:
            await server.start()
        port = server.port or free_port()
        telemetry = SelfTelemetry()
        settings = CreateSettings(ComponentID("otlp"), Kind.EXPORTER, telemetry)
        cfg = OTLPExporterConfig.model_validate(
            {"endpoint": f"127.0.0.1:{port}", "tls": {"insecure": True},
             "retry_on_failure": FAST_RETRY, **config}
        )  # fmt: skip
        exporter = OTLPExporter(settings, cfg)
        await exporter.start(host)
        try:
            await test(exporter, server, telemetry)
        finally:
            await exporter.shutdown()
            if server_up:
                await server.stop()

    asyncio.run(main())


def test_sends_every_signal_with_headers() -> None:
    async def check(exporter: OTLPExporter, server: FakeGrpcServer, _: SelfTelemetry) -> None:
        sent = [traces([[2, 1]]), metrics([3]), logs([[2]])]
        for payload in sent:
            await exporter.send(payload)
        assert server.received == sent
        assert server.metadata[0]["x-tenant"] == "blue"

    run(check, headers={"X-Tenant": "blue"})


@pytest.mark.parametrize(
    ("failure", "expected", "retry_after"),
    [
        (GrpcFailure(grpc.StatusCode.UNAVAILABLE), RetryableError, None),
        (GrpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED), RetryableError, None),
        (GrpcFailure(grpc.StatusCode.ABORTED), RetryableError, None),
        (GrpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.25), RetryableError, 0.25),
        (
            GrpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay=0.5, bare_retry_info=True),
            RetryableError,
            0.5,
        ),
        (GrpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED), PermanentError, None),
        (GrpcFailure(grpc.StatusCode.INVALID_ARGUMENT), PermanentError, None),
        (GrpcFailure(grpc.StatusCode.UNAUTHENTICATED), PermanentError, None),
    ],
)
def test_status_codes_map_to_retryable_or_permanent(
    failure: GrpcFailure, expected: type[Exception], retry_after: float | None
) -> None:
    async def check(exporter: OTLPExporter, server: FakeGrpcServer, _: SelfTelemetry) -> None:
        server.failures.append(failure)
        with pytest.raises(expected, match=failure.code.name) as caught:
            await exporter.send(traces([[1]]))
        if retry_after is not None:
            assert isinstance(caught.value, RetryableError)
            assert caught.value.retry_after == pytest.approx(retry_after)

    run(check)


def test_retryable_failures_are_retried_until_the_data_arrives() -> None:
    async def check(exporter: OTLPExporter, server: FakeGrpcServer, t: SelfTelemetry) -> None:
        server.failures.extend([GrpcFailure(grpc.StatusCode.UNAVAILABLE)] * 3)
        await exporter.consume(traces([[4]]))
        async with asyncio.timeout(5):
            while not t.total("otelcol_exporter_sent_spans_total"):
                await asyncio.sleep(0.01)
        assert item_names(server.received[0]) == [f"s0.0.{i}" for i in range(4)]
        assert t.total("otelcol_exporter_sent_spans_total", exporter="otlp") == 4

    run(check)


def test_health_shows_an_unreachable_destination_until_it_answers() -> None:
    async def check(exporter: OTLPExporter, server: FakeGrpcServer, _: SelfTelemetry) -> None:
        assert exporter.host is not None
        statuses = exporter.host.component_statuses
        server.failures.append(GrpcFailure(grpc.StatusCode.UNAVAILABLE))
        with pytest.raises(RetryableError):
            await exporter.send(traces([[1]]))
        status, message = statuses()["exporter/otlp"]
        assert status == Status.RECOVERABLE_ERROR and "UNAVAILABLE" in message
        await exporter.send(traces([[1]]))
        assert statuses()["exporter/otlp"][0] == Status.OK

    run(check)


def test_permanent_failure_is_dropped_and_counted() -> None:
    async def check(exporter: OTLPExporter, server: FakeGrpcServer, t: SelfTelemetry) -> None:
        server.failures.append(GrpcFailure(grpc.StatusCode.PERMISSION_DENIED))
        await exporter.consume(logs([[3]]))
        async with asyncio.timeout(5):
            while not t.total("otelcol_exporter_send_failed_log_records_total"):
                await asyncio.sleep(0.01)
        assert t.total("otelcol_exporter_send_failed_log_records_total", reason="permanent") == 3

    run(check)


def test_a_server_that_is_down_is_retryable() -> None:
    async def check(exporter: OTLPExporter, server: FakeGrpcServer, _: SelfTelemetry) -> None:
        with pytest.raises(RetryableError, match="UNAVAILABLE"):
            await exporter.send(traces([[1]]))

    run(check, server_up=False)


def test_partial_success_counts_the_rejected_items() -> None:
    def reject_two(response: Any) -> None:
        response.partial_success.rejected_spans = 2
        response.partial_success.error_message = "spans too old"

    async def check(exporter: OTLPExporter, server: FakeGrpcServer, t: SelfTelemetry) -> None:
        server.partial = reject_two
        await exporter.send(traces([[5]]))
        assert t.total("otelcol_exporter_send_failed_spans_total", reason="rejected") == 2

    run(check)


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and its key, made with the openssl command."""
    openssl = require_binary("openssl")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return key, cert


def test_tls_with_a_trusted_certificate(tmp_path: Path) -> None:
    key, cert = self_signed_certificate(tmp_path)

    async def main() -> None:
        server = FakeGrpcServer(tls=(key.read_bytes(), cert.read_bytes()))
        await server.start()
        settings = CreateSettings(ComponentID("otlp"), Kind.EXPORTER, SelfTelemetry())
        trusting = OTLPExporter(settings, OTLPExporterConfig.model_validate(
            {"endpoint": f"localhost:{server.port}", "tls": {"ca_file": str(cert)}}
        ))  # fmt: skip
        distrusting = OTLPExporter(
            settings, OTLPExporterConfig(endpoint=f"localhost:{server.port}")
        )
        for exporter in (trusting, distrusting):
            await exporter.start(ServiceHost())
        try:
            await trusting.send(traces([[2]]))
            assert len(server.received) == 1
            with pytest.raises(RetryableError, match="UNAVAILABLE"):
                await distrusting.send(traces([[2]]))  # the system CAs do not know it
        finally:
            for exporter in (trusting, distrusting):
                await exporter.shutdown()
            await server.stop()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "endpoint"),
        ({"endpoint": "no-port"}, "not an endpoint"),
        ({"endpoint": "h:4317", "compression": "brotli"}, "compression"),
        ({"endpoint": "h:4317", "tls": {"insecure_skip_verify": True}}, "not supported"),
        ({"endpoint": "h:4317", "timeout": "5"}, "not a duration"),
    ],
)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OTLPExporterConfig.model_validate(config)


# Request size --------------------------------------------------------------------------------
def big_spans(count: int, attribute_bytes: int = 400) -> Any:
    """``count`` spans of about ``attribute_bytes`` each, in one request."""
    request = traces([[count]])
    for span in request.resource_spans[0].scope_spans[0].spans:
        span.attributes.add(key="payload").value.string_value = "x" * attribute_bytes
    return request


def test_a_batch_over_max_request_bytes_goes_out_in_requests_that_fit() -> None:
    async def check(exporter: OTLPExporter, server: FakeGrpcServer, t: SelfTelemetry) -> None:
        payload = big_spans(2000)
        names = item_names(payload)
        assert payload.ByteSize() > 5 * 100_000
        await exporter.consume(payload)
        await eventually(lambda: t.total("otelcol_exporter_sent_spans_total") == 2000)
        assert len(server.received) >= 5
        assert all(r.ByteSize() <= 100_000 for r in server.received)
        assert [n for r in server.received for n in item_names(r)] == names

    run(check, max_request_bytes="100KB")


def test_a_size_refusal_lowers_the_limit_and_the_request_is_cut_and_resent() -> None:
    async def main() -> None:
        server = FakeGrpcServer(max_receive=300_000)
        await server.start()
        telemetry = SelfTelemetry()
        settings = CreateSettings(ComponentID("otlp"), Kind.EXPORTER, telemetry)
        cfg = OTLPExporterConfig.model_validate(
            {"endpoint": f"127.0.0.1:{server.port}", "tls": {"insecure": True},
             "retry_on_failure": FAST_RETRY}
        )  # fmt: skip
        exporter = OTLPExporter(settings, cfg)
        await exporter.start(ServiceHost())
        try:
            for _ in range(2):
                await exporter.consume(big_spans(3000))
            await eventually(lambda: telemetry.total("otelcol_exporter_sent_spans_total") == 6000)
        finally:
            await exporter.shutdown()
            await server.stop()
        assert sum(len(item_names(r)) for r in server.received) == 6000
        assert telemetry.total("otelcol_exporter_send_failed_spans_total") == 0
        assert exporter.request_limit <= 300_000

    asyncio.run(main())


def test_an_item_larger_alone_than_the_limit_is_dropped_and_the_rest_delivered() -> None:
    async def check(exporter: OTLPExporter, server: FakeGrpcServer, t: SelfTelemetry) -> None:
        payload = big_spans(50, attribute_bytes=100)
        spans = payload.resource_spans[0].scope_spans[0].spans
        spans[20].attributes.add(key="huge").value.string_value = "y" * 200_000
        await exporter.consume(payload)
        await eventually(lambda: t.total("otelcol_exporter_sent_spans_total") == 49)
        assert t.total("otelcol_exporter_send_failed_spans_total", reason="invalid") == 1
        assert sum(len(item_names(r)) for r in server.received) == 49

    run(check, max_request_bytes="100KB")


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_a_batch_refused_as_invalid_loses_only_the_items_that_are() -> None:
    """INVALID_ARGUMENT may be one bad item (an ID of the wrong length makes the upstream
    collector refuse the whole request): halves are sent until it is found."""

    async def check(exporter: OTLPExporter, server: FakeGrpcServer, t: SelfTelemetry) -> None:
        server.refuse = lambda request: any(n.startswith("poison") for n in item_names(request))
        payload = traces([[40]])
        spans = payload.resource_spans[0].scope_spans[0].spans
        spans[5].name, spans[31].name = "poison-1", "poison-2"
        await exporter.consume(payload)

        def accounted() -> tuple[float, float]:
            sent = t.total("otelcol_exporter_sent_spans_total")
            return sent, t.total("otelcol_exporter_send_failed_spans_total", reason="invalid")

        # The search goes breadth first: the last valid piece may be sent before the bad
        # items found with it are counted.
        await eventually(lambda: sum(accounted()) == 40)
        assert accounted() == (38, 2)
        delivered = sorted(n for r in server.received for n in item_names(r))
        assert delivered == sorted(n for n in item_names(traces([[40]])) if n not in
                                   ("s0.0.5", "s0.0.31"))  # fmt: skip

    run(check)
