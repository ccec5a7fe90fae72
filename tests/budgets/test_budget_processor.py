"""The budget processor on live traffic, and the findings connector that carries its
breaches to the logs pipelines."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from otelkit.budgets.findings import findings_to_logs
from otelkit.collector.connectors.findings import factory as findings_factory
from otelkit.collector.pdata.signals import Signal
from otelkit.collector.processors.budget import BudgetConfig, BudgetProcessor
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.budgets.spans import S, Sink, all_spans, attrs_of, event_attrs, request

BUDGETS = """
budgets:
  checkout:
    match: {service: shop-api, span_kind: server, route: /checkout}
    max: 1s
    objectives: ["p95 < 300ms over 1m"]
  db:
    match: {span_kind: client, db_system: postgresql}
    objectives: ["p(99)<50"]
"""


def make(
    tmp_path: Path, text: str = BUDGETS, **extra: object
) -> tuple[BudgetProcessor, Sink, SelfTelemetry]:
    path = tmp_path / "budgets.yaml"
    path.write_text(text)
    telemetry = SelfTelemetry()
    sink = Sink()
    settings = CreateSettings(ComponentID("budget"), Kind.PROCESSOR, telemetry)
    config = BudgetConfig(budgets_file=str(path), min_samples=10, **extra)  # type: ignore[arg-type]
    return BudgetProcessor(settings, config, sink), sink, telemetry


def checkout(ms: float, **kw: object) -> S:
    return S("POST /checkout", ms=ms, attrs={"http.route": "/checkout"}, **kw)  # type: ignore[arg-type]


def test_matched_spans_are_marked_and_others_untouched(tmp_path: Path) -> None:
    processor, sink, telemetry = make(tmp_path)
    req = request([checkout(120), checkout(1500), S("GET /", ms=5000)])
    asyncio.run(processor.consume(req))
    fast, slow, other = all_spans(sink.got[0])  # type: ignore[arg-type]
    assert attrs_of(fast) | {} == {
        "http.route": "/checkout",
        "otelkit.budget.name": "checkout",
        "otelkit.budget.limit_ms": 1000.0,
        "otelkit.budget.exceeded": False,
    }
    assert attrs_of(slow)["otelkit.budget.exceeded"] is True
    assert attrs_of(other) == {} and not other.events
    assert (
        telemetry.value(
            "otelkit_budget_violations_total", {"budget": "checkout", "type": "ceiling"}
        )
        == 1
    )


def test_ceiling_breach_becomes_a_log_record_linked_to_the_span(tmp_path: Path) -> None:
    processor, sink, _ = make(tmp_path)
    asyncio.run(processor.consume(request([checkout(1500, trace=42)])))
    [span] = all_spans(sink.got[0])  # type: ignore[arg-type]
    [finding] = event_attrs(span)
    assert finding["otelkit.finding.kind"] == "budget_breach"
    assert finding["otelkit.finding.type"] == "ceiling"
    assert "1500 ms (max 1000 ms)" in str(finding["otelkit.finding.title"])

    logs = findings_to_logs(sink.got[0])  # type: ignore[arg-type]
    [record] = logs.resource_logs[0].scope_logs[0].log_records
    assert record.trace_id == span.trace_id and record.span_id == span.span_id
    assert record.body.string_value == finding["otelkit.finding.title"]
    assert logs.resource_logs[0].resource == sink.got[0].resource_spans[0].resource  # type: ignore[attr-defined]


# 1.005s is 1004.9999999999999 ms in floating point: a span of exactly 1005 ms is at it.
@pytest.mark.parametrize(("ceiling", "exact_ms"), [("1s", 1000), ("1.005s", 1005)])
@pytest.mark.parametrize(("offset_ns", "over"), [(-1, False), (0, False), (1, True)])
def test_a_span_exactly_at_its_ceiling_is_within_budget(
    tmp_path: Path, ceiling: str, exact_ms: int, offset_ns: int, over: bool
) -> None:
    text = f"budgets: {{checkout: {{match: {{route: /checkout}}, max: {ceiling}}}}}"
    processor, sink, telemetry = make(tmp_path, text)
    span = S("POST /checkout", attrs={"http.route": "/checkout"}, ns=exact_ms * 10**6 + offset_ns)
    asyncio.run(processor.consume(request([span])))
    [marked] = all_spans(sink.got[0])  # type: ignore[arg-type]
    assert attrs_of(marked)["otelkit.budget.exceeded"] is over
    assert bool(event_attrs(marked)) is over
    violations = telemetry.value(
        "otelkit_budget_violations_total", {"budget": "checkout", "type": "ceiling"}
    )
    assert violations == (1 if over else 0)


def test_each_span_of_a_batch_is_judged_against_the_ceiling_on_its_own(tmp_path: Path) -> None:
    """Spans under, at and over the ceiling in one request: only those over it are
    marked exceeded and get a finding, each naming its own duration, shown above the
    ceiling however little it is over."""
    processor, sink, telemetry = make(tmp_path)
    offsets_ns = [-1, 0, 1, 500_000_000, 0, 2]
    spans = [
        S("POST /checkout", attrs={"http.route": "/checkout"}, ns=10**9 + o) for o in offsets_ns
    ]
    asyncio.run(processor.consume(request(spans)))
    marked = all_spans(sink.got[0])  # type: ignore[arg-type]
    exceeded = [attrs_of(span)["otelkit.budget.exceeded"] for span in marked]
    assert exceeded == [offset > 0 for offset in offsets_ns]
    titles = [str(f["otelkit.finding.title"]) for span in marked for f in event_attrs(span)]
    assert titles == [
        "Budget checkout: POST /checkout took 1000.000001 ms (max 1000 ms)",
        "Budget checkout: POST /checkout took 1500 ms (max 1000 ms)",
        "Budget checkout: POST /checkout took 1000.000002 ms (max 1000 ms)",
    ]
    violations = telemetry.value(
        "otelkit_budget_violations_total", {"budget": "checkout", "type": "ceiling"}
    )
    assert violations == 3


def test_window_percentile_breach_is_reported_once_per_window(tmp_path: Path) -> None:
    processor, _sink, telemetry = make(tmp_path)
    now = 1_000_000.0
    healthy = request([checkout(100) for _ in range(20)])
    processor.observe(healthy, now)
    assert (
        telemetry.value(
            "otelkit_budget_violations_total", {"budget": "checkout", "type": "percentile"}
        )
        == 0
    )
    slow = request([checkout(700) for _ in range(10)] + [checkout(900)])
    processor.observe(slow, now + 10)  # 11 of 31 spans slow: p95 (rank 28) is 700ms
    processor.observe(request([checkout(800) for _ in range(5)]), now + 20)
    assert (
        telemetry.value(
            "otelkit_budget_violations_total", {"budget": "checkout", "type": "percentile"}
        )
        == 1
    )
    carriers = [s for s in all_spans(slow) if event_attrs(s)]
    assert len(carriers) == 1  # the slowest span of the batch that tipped the window
    [finding] = event_attrs(carriers[0])
    assert finding["otelkit.finding.type"] == "percentile"
    assert finding["otelkit.budget.percentile"] == 95.0
    assert abs(float(finding["otelkit.budget.observed_ms"]) - 700) <= 7  # type: ignore[arg-type]
    # the next window starts clean, and a slow one is reported again
    processor.observe(request([checkout(900) for _ in range(12)]), now + 70)
    assert (
        telemetry.value(
            "otelkit_budget_violations_total", {"budget": "checkout", "type": "percentile"}
        )
        == 2
    )


def test_quantile_gauge_shows_the_live_window(tmp_path: Path) -> None:
    processor, _sink, telemetry = make(tmp_path)
    labels = {"budget": "checkout", "quantile": "p95"}
    assert telemetry.value("otelkit_budget_window_quantile_milliseconds", labels) == 0
    processor.observe(request([checkout(100) for _ in range(19)] + [checkout(400)]), 1000.0)
    p95 = telemetry.value("otelkit_budget_window_quantile_milliseconds", labels)
    assert abs(p95 - 100) <= 1  # rank 18 of 20
    processor.observe(request([checkout(400) for _ in range(20)]), 1010.0)
    p95 = telemetry.value("otelkit_budget_window_quantile_milliseconds", labels)
    assert abs(p95 - 400) <= 4
    processor.observe(request([checkout(50)]), 1065.0)  # a new one-minute window
    p95 = telemetry.value("otelkit_budget_window_quantile_milliseconds", labels)
    assert abs(p95 - 50) <= 0.5


def test_too_few_spans_do_not_judge_a_window(tmp_path: Path) -> None:
    processor, _, telemetry = make(tmp_path)
    processor.observe(request([checkout(900) for _ in range(9)]), 1000.0)
    assert telemetry.total("otelkit_budget_violations_total", type="percentile") == 0


def test_findings_connector_emits_logs_only_when_there_are_findings(tmp_path: Path) -> None:
    logs_sink = Sink()
    settings = CreateSettings(ComponentID("findings"), Kind.CONNECTOR, SelfTelemetry())
    connector = findings_factory.create(
        settings, findings_factory.config_class(), Signal.TRACES, Signal.LOGS, logs_sink
    )
    processor, sink, _ = make(tmp_path)
    asyncio.run(processor.consume(request([checkout(10)])))
    asyncio.run(connector.consume(sink.got[0]))  # type: ignore[arg-type]
    assert logs_sink.got == []
    asyncio.run(processor.consume(request([checkout(2000)])))
    asyncio.run(connector.consume(sink.got[1]))  # type: ignore[arg-type]
    [logs] = logs_sink.got
    assert isinstance(logs, ExportLogsServiceRequest)
    record = logs.resource_logs[0].scope_logs[0].log_records[0]
    assert record.event_name == "otelkit.finding" and record.severity_text == "WARN"


def test_collector_validate_names_the_budgets_file_problem(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("budgets:\n  checkout:\n    objectives: ['p95 is fast']\n")
    config = tmp_path / "collector.yaml"
    config.write_text(f"""
receivers: {{otlp: {{protocols: {{http: {{endpoint: 127.0.0.1:0}}}}}}}}
processors:
  budget: {{budgets_file: {budgets}}}
  perf_issues: {{wait: 1s}}
  tail_sampling: {{decision_wait: 2s, policies: [{{name: some, type: probabilistic, probabilistic: {{sampling_percentage: 10}}}}]}}
connectors: {{findings: {{}}}}
exporters: {{nop: {{}}}}
service:
  pipelines:
    traces: {{receivers: [otlp], processors: [budget, perf_issues, tail_sampling], exporters: [nop, findings]}}
    logs: {{receivers: [findings], exporters: [nop]}}
""")
    run = [sys.executable, "-m", "otelkit.cli", "collector", "validate", "--config", str(config)]
    failed = subprocess.run(run, capture_output=True, text=True, check=False)
    assert failed.returncode == 2
    assert "processors.budget" in failed.stderr
    assert "budgets.checkout.objectives[0]" in failed.stderr
    budgets.write_text("budgets:\n  checkout:\n    objectives: ['p95 < 300ms']\n")
    ok = subprocess.run(run, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("bad", ["missing.yaml", "budgets: {}"])
def test_processor_config_refuses_a_bad_budgets_file(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "b.yaml"
    if bad != "missing.yaml":
        path.write_text(bad)
    with pytest.raises(ValueError, match="invalid budgets file"):
        BudgetConfig(budgets_file=str(path))


MANY_BUDGETS = """
budgets:
  named:
    match: {span_kind: internal, span_name: "render *"}
    max: 5ms
"""
MANY_BUDGETS += "".join(
    f"""  route{i}:
    match: {{span_kind: server, route: /r{i}}}
    max: 100ms
"""
    for i in range(6)
)
MANY_BUDGETS += """  db:
    match: {span_kind: client, db_system: [postgresql, mysql]}
    max: 10ms
"""


@pytest.mark.parametrize("routes", [2, 6])  # a few budgets per batch, and many
def test_a_spans_owner_and_marks_do_not_depend_on_its_batch(tmp_path: Path, routes: int) -> None:
    """Spans of every kind, of several budgets and of none, interleaved in one batch, get
    what each gets alone; findings land on the same spans."""
    spans = []
    for i in range(60):
        if i % 5 == 0:
            spans.append(
                S(f"GET /r{i % routes}", ms=i * 3, attrs={"http.route": f"/r{i % routes}"})
            )
        elif i % 5 == 1:
            system = ("postgresql", "mysql", "sqlite")[i % 3]
            key = "db.system.name" if i % 2 else "db.system"
            spans.append(S("SELECT", kind="client", ms=i % 17, attrs={key: system}))
        elif i % 5 == 2:
            spans.append(S(f"render {i}", kind="internal", ms=i % 9))
        elif i % 5 == 3:
            spans.append(S("GET", kind="client", ms=20, attrs={"http.route": "/r1"}))
        else:
            spans.append(S("GET /r1", ms=500))  # no route: no budget
    together, sink, _ = make(tmp_path, MANY_BUDGETS)
    asyncio.run(together.consume(request(spans)))
    alone, alone_sink, _ = make(tmp_path, MANY_BUDGETS)
    for s in spans:
        asyncio.run(alone.consume(request([s])))
    batched = all_spans(sink.got[0])  # type: ignore[arg-type]
    one_by_one = [all_spans(req)[0] for req in alone_sink.got]  # type: ignore[arg-type]
    assert [attrs_of(s) for s in batched] == [attrs_of(s) for s in one_by_one]
    assert [len(s.events) for s in batched] == [len(s.events) for s in one_by_one]
    assert {attrs_of(s).get("otelkit.budget.name") for s in batched} >= {"named", "db", "route1"}
