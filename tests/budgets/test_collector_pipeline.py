"""The three processors in a real ``otelkit collector run``: SDK traffic in, the kept
traces and the findings' log records out, drained on SIGTERM."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from otelkit.collector.pdata.otlp_json import iter_file
from tests.budgets.spans import n_plus_one
from tests.support.collector import allocate_ports, collector

BUDGETS = """
budgets:
  checkout:
    match: {service: shop-api, span_kind: server, route: /checkout}
    max: 500ms
"""
CONFIG = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:{grpc}"}}}
processors:
  budget: {budgets_file: "{budgets}"}
  perf_issues: {wait: 300ms}
  tail_sampling: {decision_wait: 600ms}
connectors:
  findings: {}
exporters:
  file/traces: {path: "{traces}", flush_interval: 100ms}
  file/logs: {path: "{logs}", flush_interval: 100ms}
service:
  pipelines:
    traces: {receivers: [otlp], processors: [budget, perf_issues, tail_sampling],
             exporters: [file/traces, findings]}
    logs: {receivers: [findings], exporters: [file/logs]}
"""
T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def request_span(tracer: Tracer, start: int, ms: int, error: bool = False) -> int:
    span = tracer.start_span(
        "POST /checkout",
        kind=SpanKind.SERVER,
        start_time=start,
        attributes={"http.route": "/checkout"},
    )
    if error:
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=start + ms * MS)
    return span.get_span_context().trace_id


def test_kept_traces_and_findings_from_a_running_collector(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BUDGETS)
    traces_file, logs_file = tmp_path / "traces.jsonl", tmp_path / "logs.jsonl"
    config = (
        CONFIG.replace("{budgets}", str(budgets))
        .replace("{traces}", str(traces_file))
        .replace("{logs}", str(logs_file))
    )
    ports = allocate_ports("grpc")
    with collector(config, tmp_path, ports=ports) as running:
        provider = TracerProvider(resource=Resource.create({"service.name": "shop-api"}))
        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=f"127.0.0.1:{ports['grpc']}", insecure=True)
            )
        )
        tracer = provider.get_tracer("test")
        fast = [request_span(tracer, T0 + i * 10**9, 20) for i in range(10)]
        failed = [request_span(tracer, T0 + i * 10**9, 20, error=True) for i in range(3)]
        slow = [request_span(tracer, T0 + i * 10**9, 900) for i in range(2)]
        n1 = n_plus_one(tracer, T0)
        provider.shutdown()
        assert running.stop() == 0, running.log()

    spans = [
        s
        for req in iter_file(traces_file)
        for rs in req.resource_spans  # type: ignore[union-attr]
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    kept = {int.from_bytes(s.trace_id, "big") for s in spans}
    assert kept == {*failed, *slow, n1}
    assert not kept & set(fast)
    assert len(spans) == 3 + 2 + 7  # whole traces

    records = [
        r
        for req in iter_file(logs_file)
        for rl in req.resource_logs  # type: ignore[union-attr]
        for sl in rl.scope_logs
        for r in sl.log_records
    ]
    kinds = sorted(
        next(kv.value.string_value for kv in r.attributes if kv.key == "otelkit.finding.type")
        for r in records
    )
    assert kinds == ["ceiling", "ceiling", "n_plus_one_db_queries"]
    by_trace = {int.from_bytes(r.trace_id, "big") for r in records}
    assert by_trace == {*slow, n1}
