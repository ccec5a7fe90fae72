"""What goes over the wire, and how Sentry's answers are honoured."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from otelkit.collector.exporters.sentry.transport import RateLimits
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry

from .standin import Answer, SentryStandIn, sentry_standin
from .support import FAST, exporter, random_id, raw_span, run, trace_request


def _error_trace(name: str = "boom") -> Any:
    exception = {"exception.type": "ValueError", "exception.message": name}
    return trace_request(
        [raw_span(random_id(16), random_id(8), name=name, error=True, exception=exception)]
    )


def test_envelopes_carry_auth_gzip_and_parse_as_sentry_envelopes() -> None:
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [_error_trace()])
        received = standin.accepted()
    assert {r.path for r in received} == {"/api/42/envelope/"}
    for request in received:
        assert request.headers["content-type"] == "application/x-sentry-envelope"
        assert request.headers["content-encoding"] == "gzip"
        assert request.headers["x-sentry-auth"].startswith(
            "Sentry sentry_key=0123456789abcdef0123456789abcdef, sentry_version=7, sentry_client=otelkit"
        )
        envelope = request.envelope
        assert envelope.headers["sent_at"].endswith("Z")
        (item,) = envelope.items
        assert envelope.headers["event_id"] == item.payload.json["event_id"]
    assert sorted(r.items()[0][0] for r in received) == ["event", "transaction"]


def test_uncompressed_when_asked() -> None:
    with sentry_standin() as standin:
        run({"dsn": standin.dsn, "compression": "none"}, [_error_trace()])
        assert all("content-encoding" not in r.headers for r in standin.accepted())
        assert len(standin.accepted()) == 2


async def _scenario(
    standin: SentryStandIn, telemetry: SelfTelemetry, config: dict[str, Any], steps: Any
) -> None:
    exp = exporter({**FAST, "dsn": standin.dsn, **config}, telemetry)
    await exp.start(ServiceHost())
    try:
        await steps(exp)
    finally:
        await exp.shutdown()


def test_a_category_limit_holds_back_that_category_only() -> None:
    telemetry = SelfTelemetry()
    limit = {"X-Sentry-Rate-Limits": "60:transaction:organization:quota_exceeded"}

    async def steps(exp: Any) -> None:
        standin.answers.append(Answer(429, limit))
        await exp.consume(trace_request([raw_span(random_id(16), random_id(8), name="first")]))
        await asyncio.sleep(0.3)  # the transaction goes and is refused
        for i in range(5):
            await exp.consume(trace_request([raw_span(random_id(16), random_id(8), name=f"t{i}")]))
        await exp.consume(_error_trace("error still sent"))
        await asyncio.sleep(0.3)

    with sentry_standin() as standin:
        asyncio.run(_scenario(standin, telemetry, {}, steps))
        received = standin.received
        events = standin.items("event")
    transaction_requests = [r for r in received if r.items()[0][0] == "transaction"]
    assert len(transaction_requests) == 1  # nothing more is sent while limited
    assert [e["exception"]["values"][0]["value"] for e in events] == ["error still sent"]
    assert telemetry.total("otelcol_exporter_send_failed_spans_total", reason="rate_limited") == 7
    assert (
        telemetry.total(
            "otelkit_sentry_envelopes_total", category="transaction", outcome="rate_limited"
        )
        == 7
    )


@pytest.mark.parametrize("headers", [{"Retry-After": "30"}, {}])
def test_a_bare_429_limits_everything_for_retry_after_or_a_minute(headers: dict[str, str]) -> None:
    limits = RateLimits(clock=lambda: 100.0)
    assert limits.update(429, {k.lower(): v for k, v in headers.items()})
    expected = float(headers.get("Retry-After", 60))
    assert limits.limited("error") == limits.limited("transaction") == expected


def test_rate_limit_header_parsing_keeps_the_longest_limit_per_category() -> None:
    limits = RateLimits(clock=lambda: 0.0)
    limits.update(
        200,
        {
            "x-sentry-rate-limits": "10:error;transaction:key, 2700.5:error:organization, bad, 5::project"
        },
    )
    assert limits.limited("error") == 2700.5
    assert limits.limited("transaction") == 10
    assert limits.limited("log_item") == 5  # empty category list: every category


def test_413_is_dropped_counted_logged_once_and_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry = SelfTelemetry()

    async def steps(exp: Any) -> None:
        for i in range(3):
            await exp.consume(_error_trace(f"e{i}"))
        await asyncio.sleep(0.3)

    with sentry_standin() as standin, caplog.at_level(logging.INFO):
        standin.default = Answer(413, {"X-Sentry-Error": "envelope exceeded size limits"})
        asyncio.run(_scenario(standin, telemetry, {"traces_sample_rate": 0}, steps))
        attempts = len(standin.received)
    assert attempts == 6  # 3 events + 3 transactions (errors are always kept), each once
    assert telemetry.total("otelcol_exporter_send_failed_spans_total", reason="too_large") == 3
    assert telemetry.total("otelkit_sentry_envelopes_total", outcome="too_large") == 6
    messages = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("otelkit") and "413" in r.getMessage()
    ]
    assert len(messages) == 1 and "envelope exceeded size limits" in messages[0]


def test_other_4xx_is_permanent() -> None:
    telemetry = SelfTelemetry()
    with sentry_standin() as standin:
        standin.default = Answer(403, {}, b'{"detail":"event submission rejected"}')
        telemetry = run({"dsn": standin.dsn}, [_error_trace()])
        assert len(standin.received) == 2
    assert telemetry.total("otelkit_sentry_envelopes_total", outcome="rejected") == 2


def test_5xx_is_retried_and_an_accepted_envelope_is_never_sent_again() -> None:
    with sentry_standin() as standin:
        standin.answers = [Answer(500), Answer(503, {"Retry-After": "0"}), Answer(502)]
        telemetry = run(
            {"dsn": standin.dsn, "sending_queue": {"num_consumers": 1}}, [_error_trace()]
        )
        statuses = [r.status for r in standin.received]
        bodies = [r.items()[0][1]["event_id"] for r in standin.received]
        accepted = [r.items()[0][1]["event_id"] for r in standin.accepted()]
    assert statuses == [500, 503, 502, 200, 200]
    assert len(set(bodies[:4])) == 1  # the same envelope retried
    assert len(accepted) == len(set(accepted)) == 2
    assert telemetry.total("otelcol_exporter_sent_spans_total") == 1


def test_network_errors_are_retried_until_sentry_is_back() -> None:
    with sentry_standin() as standin:
        dsn = standin.dsn
    # nothing listens on the port now: every attempt fails, then we give up and count
    telemetry = run(
        {"dsn": dsn, "retry_on_failure": {"initial_interval": "10ms", "max_elapsed_time": "300ms"}},
        [_error_trace()],
    )
    assert (
        telemetry.total("otelcol_exporter_send_failed_spans_total", reason="retry_exhausted") == 1
    )


def test_otlp_mode_forwards_scrubbed_protobuf_to_sentrys_otlp_endpoint() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    span = raw_span(
        random_id(16),
        random_id(8),
        attrs={"db.password": "hunter2", "url.full": "https://u:pw@h/x?token=abc"},
    )
    with sentry_standin() as standin:
        run({"dsn": standin.dsn, "mode": "otlp"}, [trace_request([span])])
        (received,) = standin.received
    assert received.path == "/api/42/integration/otlp/v1/traces"
    assert received.headers["x-sentry-auth"] == "sentry sentry_key=0123456789abcdef0123456789abcdef"
    assert received.headers["content-type"] == "application/x-protobuf"
    request = ExportTraceServiceRequest()
    request.ParseFromString(received.body)
    attrs = {
        kv.key: kv.value.string_value
        for kv in request.resource_spans[0].scope_spans[0].spans[0].attributes
    }
    assert attrs == {
        "db.password": "[Filtered]",
        "url.full": "https://[Filtered]@h/x?token=[Filtered]",
    }


def _error_logs(count: int) -> Any:
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    from .support import logs_request

    records = []
    for i in range(count):
        record = LogRecord(severity_number=17)
        record.body.string_value = f"failure {i}"
        records.append(record)
    return logs_request(records)


def test_a_batch_larger_than_the_whole_queue_is_cut_not_refused_forever() -> None:
    with sentry_standin() as standin:
        telemetry = run({"dsn": standin.dsn, "sending_queue": {"queue_size": 3}}, [_error_logs(10)])
        bodies = sorted(e["logentry"]["formatted"] for e in standin.items("event"))
    assert bodies == ["failure 0", "failure 1", "failure 2"]
    assert (
        telemetry.total("otelcol_exporter_send_failed_log_records_total", reason="queue_full") == 7
    )


def test_without_a_queue_a_refused_envelope_does_not_fail_the_others() -> None:
    with sentry_standin() as standin:
        standin.answers = [Answer(413)]
        telemetry = run({"dsn": standin.dsn, "sending_queue": {"enabled": False}}, [_error_logs(3)])
        statuses = [r.status for r in standin.received]
    assert statuses == [413, 200, 200]
    assert telemetry.total("otelcol_exporter_sent_log_records_total") == 2
    assert (
        telemetry.total("otelcol_exporter_send_failed_log_records_total", reason="too_large") == 1
    )


def test_limited_logs_and_errors_are_counted_once_per_record_and_not_sent() -> None:
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    from .support import logs_request

    def records(*severities: int) -> Any:
        out = []
        for severity in severities:
            record = LogRecord(severity_number=severity)
            record.body.string_value = f"level {severity}"
            out.append(record)
        return logs_request(out)

    telemetry = SelfTelemetry()

    async def steps(exp: Any) -> None:
        await exp.consume(records(17))  # a log item and an error event, both refused
        await asyncio.sleep(0.3)
        await exp.consume(records(9, 9, 17))  # held back: nothing built, nothing sent

    with sentry_standin() as standin:
        standin.default = Answer(429, {"X-Sentry-Rate-Limits": "60:log_item;error:organization"})
        asyncio.run(_scenario(standin, telemetry, {"logs": True}, steps))
        requests = len(standin.received)
    assert requests == 2
    assert (
        telemetry.total("otelcol_exporter_send_failed_log_records_total", reason="rate_limited")
        == 4
    )
    assert telemetry.total("otelcol_exporter_sent_log_records_total") == 0
    assert (
        telemetry.total("otelkit_sentry_envelopes_total", category="error", outcome="rate_limited")
        == 2
    )


def test_transactions_that_find_the_queue_full_are_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry = SelfTelemetry()

    async def scenario() -> None:
        exp = exporter(
            {**FAST, "dsn": "https://k@sentry.example/1", "sending_queue": {"queue_size": 2}},
            telemetry,
        )
        # not started: nothing drains the queue
        await exp.consume(trace_request([raw_span(random_id(16), random_id(8)) for _ in range(5)]))
        await exp._ship_traces(exp.assembler.drain())
        assert exp.queue_size() == 2

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert telemetry.total("otelcol_exporter_enqueue_failed_spans_total") == 3
    assert len([r for r in caplog.records if "sending queue is full" in r.getMessage()]) == 1
