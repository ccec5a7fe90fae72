"""What the findings connector makes of a trace: one record per finding, field for field."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_WARN, LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelkit.budgets.findings import EVENT_NAME, SCOPE_NAME, Finding, attach, findings_to_logs

TID, SID = bytes(range(1, 17)), bytes(range(1, 9))


def expected(span: Span, event: Span.Event) -> LogRecord:
    """The record the module's docstring describes for ``event`` on ``span``."""
    record = LogRecord(
        time_unix_nano=event.time_unix_nano,
        observed_time_unix_nano=event.time_unix_nano,
        severity_number=SEVERITY_NUMBER_WARN,
        severity_text="WARN",
        trace_id=span.trace_id,
        span_id=span.span_id,
        flags=span.flags & 0xFF,
        event_name=EVENT_NAME,
    )
    record.attributes.extend(event.attributes)
    record.attributes.add(key="event.name", value=AnyValue(string_value=EVENT_NAME))
    record.attributes.add(key="span.name", value=AnyValue(string_value=span.name))
    for kv in event.attributes:
        if kv.key == "otelkit.finding.title":
            record.body.string_value = kv.value.string_value
    return record


def request(*spans: Span, schema_url: str = "") -> ExportTraceServiceRequest:
    out = ExportTraceServiceRequest()
    rs = out.resource_spans.add(schema_url=schema_url)
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="shop"))
    rs.scope_spans.add().spans.extend(spans)
    return out


def test_each_finding_is_a_record_with_the_events_attributes_and_the_spans_ids() -> None:
    span = Span(trace_id=TID, span_id=SID, name="GET /books", flags=0x301)
    finding = Finding(
        "perf_issue", "n_plus_one_db_queries", "N+1 Query: SELECT ✓", "SELECT ✓", "ab12",
        [SID, bytes(8)], {"otelkit.budget.limit_ms": 2.5, "count": 6, "slow": True},
    )  # fmt: skip
    attach(span, finding, 1_700_000_000_000_000_000)
    span.events.add(name="exception", time_unix_nano=5)  # not a finding: no record
    attach(span, finding, 1_700_000_000_000_000_001)
    logs = findings_to_logs(request(span, Span(name="no events"), schema_url="https://s/1"))
    [resource_logs] = logs.resource_logs
    assert resource_logs.resource == request().resource_spans[0].resource
    assert resource_logs.schema_url == "https://s/1"
    [scope_logs] = resource_logs.scope_logs
    assert scope_logs.scope.name == SCOPE_NAME
    findings = [e for e in span.events if e.name == EVENT_NAME]
    assert list(scope_logs.log_records) == [expected(span, e) for e in findings]
    assert scope_logs.log_records[0].body.string_value == "N+1 Query: SELECT ✓"
    assert scope_logs.log_records[0].flags == 0x01


def test_odd_events_keep_the_meaning_they_had_as_messages() -> None:
    """No title, a title that is no string, a repeated title, no IDs or time, fields
    a newer sender added: each record still says what the event says."""
    span = Span(name="")
    span.events.add(name=EVENT_NAME)  # nothing at all
    untitled = span.events.add(name=EVENT_NAME, time_unix_nano=7, dropped_attributes_count=2)
    untitled.attributes.add(key="otelkit.finding.kind", value=AnyValue(string_value="x" * 300))
    numbered = span.events.add(name=EVENT_NAME)
    numbered.attributes.add(key="otelkit.finding.title", value=AnyValue(int_value=3))
    twice = span.events.add(name=EVENT_NAME)
    twice.attributes.add(key="otelkit.finding.title", value=AnyValue(string_value="first"))
    twice.attributes.add(key="otelkit.finding.title", value=AnyValue(string_value="last"))
    twice.attributes.append(KeyValue(key="otelkit.finding.titles"))  # no value
    newer = Span.Event(name=EVENT_NAME)
    newer.attributes.add(key="a", value=AnyValue(bool_value=True))
    unknown = b"\xa8\x06\x01" + b"\x9a\x06\x02hi" + b"\xf5\x06\x01\x00\x00\x00"  # 101, 99, 110
    span.events.add().MergeFromString(newer.SerializeToString() + unknown)
    [record_logs] = findings_to_logs(request(span)).resource_logs
    records = list(record_logs.scope_logs[0].log_records)
    assert records == [expected(span, e) for e in span.events]
    assert [r.HasField("body") for r in records] == [False, False, True, True, False]
    assert records[2].body.string_value == "" and records[3].body.string_value == "last"


def test_a_trace_without_findings_makes_no_records() -> None:
    span = Span(trace_id=TID, span_id=SID, name="GET /")
    span.events.add(name="exception")
    assert findings_to_logs(request(span, Span())) == findings_to_logs(ExportTraceServiceRequest())
    assert not findings_to_logs(request(span)).resource_logs
