"""Configuration errors, the disabled exporter, and log records."""

from __future__ import annotations

import asyncio
import logging
import traceback

import pytest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otelkit.collector.runtime import graph
from otelkit.collector.runtime.config import ConfigError, parse_config
from otelkit.collector.runtime.registry import Registry
from otelkit.collector.runtime.service import Service

from .standin import sentry_standin
from .support import (
    exporter,
    kv,
    logs_request,
    random_id,
    raw_span,
    relay_check,
    run,
    trace_request,
)


def test_a_malformed_dsn_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(
            "exporters:\n  sentry:\n    dsn: https://sentry.example/not-a-project\n"
            "service:\n  pipelines:\n    traces: {receivers: [r], exporters: [sentry]}\n",
            Registry.discover(),
            {},
        )
    problems = [p for p in caught.value.problems if p.path == "exporters.sentry.dsn"]
    assert len(problems) == 1
    assert "not a Sentry DSN" in problems[0].message and "public key" in problems[0].message


def test_settings_are_validated_with_their_paths() -> None:
    text = (
        "exporters:\n  sentry:\n    dsn: ${env:SENTRY_DSN}\n    traces_sample_rate: 2\n"
        "    trace_wait: 5\n    scrub: {extra_patterns: ['(unclosed']}\n"
        "service:\n  pipelines:\n    traces: {receivers: [r], exporters: [sentry]}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Registry.discover(), {"SENTRY_DSN": "https://k@o1.ingest.sentry.io/5"})
    paths = {p.path for p in caught.value.problems}
    assert {"exporters.sentry.traces_sample_rate", "exporters.sentry.trace_wait",
            "exporters.sentry.scrub.extra_patterns"} <= paths  # fmt: skip


def test_without_a_dsn_the_exporter_is_off_with_one_warning_and_the_collector_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = Registry.discover()
    text = (
        "receivers:\n  otlp: {protocols: {http: {endpoint: '127.0.0.1:0'}}}\n"
        "exporters:\n  sentry:\n    dsn: ${env:SENTRY_DSN}\n"
        "service:\n  telemetry: {metrics: {level: none}}\n"
        "  pipelines:\n    traces: {receivers: [otlp], exporters: [sentry]}\n"
    )
    config = parse_config(text, registry, {})

    async def scenario() -> bool:
        service = Service(config)
        await service.start()
        exporter = next(iter(service.graph.exporters.values()))
        await exporter.consume(trace_request([raw_span(random_id(16), random_id(8))]))
        ready = service.host.is_ready()
        await service.shutdown()
        return ready

    with caplog.at_level(logging.WARNING):
        assert asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if "no DSN" in r.getMessage()]
    assert len(warnings) == 1 and "exporters.sentry.dsn" in warnings[0]


def test_without_a_dsn_a_fan_out_makes_no_copy_of_each_batch_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copies: list[object] = []
    monkeypatch.setattr(graph, "_copy", lambda payload: copies.append(payload) or payload)

    class Recorder:
        async def consume(self, payload: object) -> None:
            pass

    batch = trace_request([raw_span(random_id(16), random_id(8))])
    asyncio.run(graph.Fanout([exporter({"dsn": ""}), Recorder()]).consume(batch))
    assert copies == []
    with_dsn = exporter({"dsn": "https://key@sentry.example.com/1"})
    asyncio.run(graph.Fanout([with_dsn, Recorder()]).consume(batch))
    assert copies == [batch]


def _record(severity: int, body: str, **attrs: object) -> LogRecord:
    record = LogRecord(severity_number=severity, time_unix_nano=1_790_000_000_000_000_000)
    record.body.string_value = body
    record.attributes.extend(kv(k, v) for k, v in attrs.items())
    return record


def test_error_log_records_become_events_and_logs_become_typed_log_items() -> None:
    try:
        {}["user"]
    except KeyError as exc:
        stack = "".join(traceback.format_exception(exc))
    tid, sid = random_id(16), random_id(8)
    error = _record(17, "payment failed", **{"exception.type": "KeyError", "exception.message": "'user'",
                                             "exception.stacktrace": stack, "order.id": 7})  # fmt: skip
    error.trace_id, error.span_id = tid, sid
    records = [_record(5, "debug noise"), _record(9, "order placed", **{"order.total": 12.5, "vip": True, "tags": ["a", "b"]}),
               _record(13, "slow"), error, _record(21, "disk full")]  # fmt: skip
    with sentry_standin() as standin:
        telemetry = run(
            {"dsn": standin.dsn, "logs": True, "logs_level": "info", "min_event_level": "error"},
            [logs_request(records)],
        )
        events = standin.items("event")
        (logs,) = standin.items("log")
        (log_request,) = [r for r in standin.accepted() if r.items()[0][0] == "log"]
    for event in events:
        relay_check(event)
    by_level = {e["level"]: e for e in events}
    assert set(by_level) == {"error", "fatal"}
    err = by_level["error"]
    assert err["logentry"]["formatted"] == "payment failed"
    assert err["logger"] == "app.payments"
    assert err["contexts"]["trace"] == {
        "type": "trace",
        "trace_id": tid.hex(),
        "span_id": sid.hex(),
    }
    (value,) = err["exception"]["values"]
    assert value["type"] == "KeyError" and value["stacktrace"]["frames"][-1]["function"].startswith(
        "test_error_log"
    )
    items = logs["items"]
    assert [i["body"] for i in items] == ["order placed", "slow", "payment failed", "disk full"]
    assert [i["level"] for i in items] == ["info", "warn", "error", "fatal"]
    placed = items[0]["attributes"]
    assert placed["order.total"] == {"value": 12.5, "type": "double"}
    assert placed["vip"] == {"value": True, "type": "boolean"}
    assert placed["tags"] == {"value": '["a", "b"]', "type": "string"}
    assert placed["sentry.release"] == {"value": "shop@1.2.3", "type": "string"}
    assert items[2]["trace_id"] == tid.hex() and items[2]["span_id"] == sid.hex()
    assert all(len(i["trace_id"]) == 32 for i in items)
    (item,) = log_request.envelope.items
    assert item.headers["item_count"] == 4
    assert item.headers["content_type"] == "application/vnd.sentry.items.log+json"
    assert telemetry.total("otelcol_exporter_sent_log_records_total") == 4


def test_logs_off_sends_only_error_events() -> None:
    with sentry_standin() as standin:
        run(
            {"dsn": standin.dsn, "min_event_level": "warn"},
            [logs_request([_record(9, "info"), _record(13, "warned")])],
        )
        kinds = [kind for r in standin.accepted() for kind, _ in r.items()]
        (event,) = standin.items("event")
    assert kinds == ["event"] and event["level"] == "warning"
    relay_check(event)


def test_severity_numbers_outside_the_data_model_are_unspecified() -> None:
    """99 once made a fatal event, and with log items off a log item as well (the "off"
    floor was severity 99); a negative number a log item at level trace."""
    records = [_record(99, "ninety-nine"), _record(-5, "negative")]
    records.append(_record(1000, "said error"))
    records[-1].severity_text = "ERROR"  # an unusable number: the text says the level
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [logs_request(records)])
        (event,) = standin.items("event")
        kinds = [kind for r in standin.accepted() for kind, _ in r.items()]
    assert kinds == ["event"]
    assert (event["logentry"]["formatted"], event["level"]) == ("said error", "error")
    with sentry_standin() as standin:
        run({"dsn": standin.dsn, "logs": True, "logs_level": "trace"}, [logs_request(records)])
        (logs,) = standin.items("log")
    # As records without a severity: below even the lowest level.
    assert [(i["body"], i["level"], i["severity_number"]) for i in logs["items"]] == [
        ("said error", "error", 17)]  # fmt: skip


def test_budget_and_perf_findings_become_grouped_sentry_issues() -> None:
    from otelkit.budgets.findings import Finding, attach, findings_to_logs

    from .support import trace_request

    tid, sid = random_id(16), random_id(8)
    span = raw_span(tid, sid, name="GET /books")
    finding = Finding("perf_issue", "n_plus_one_db_queries", "N+1 Query: SELECT title FROM books WHERE author_id = ?",
                      "SELECT title FROM books WHERE author_id = ?", "ab12cd34ef56ab78", [sid])  # fmt: skip
    attach(span, finding, span.end_time_unix_nano)
    logs = findings_to_logs(trace_request([span], service="library"))
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [logs])  # min_event_level stays "error": findings still go
        (event,) = standin.items("event")
    relay_check(event)
    assert event["fingerprint"] == ["otelkit", "perf_issue", "ab12cd34ef56ab78"]
    assert event["level"] == "warning"
    assert event["logentry"]["formatted"].startswith("N+1 Query: SELECT title")
    assert event["culprit"] == "SELECT title FROM books WHERE author_id = ?"
    assert event["tags"]["otelkit.finding.type"] == "n_plus_one_db_queries"
    assert event["contexts"]["trace"]["span_id"] == sid.hex()
