"""Each performance-issue detector on real traces of a real FastAPI + SQLAlchemy app,
and no finding on a clean endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelkit.budgets.detectors import DetectorsConfig
from otelkit.budgets.findings import findings_to_logs
from otelkit.collector.processors.perf_issues import PerfIssuesConfig, PerfIssuesProcessor
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.budgets.shopapp import ShopApp, running_shop
from tests.budgets.spans import Sink, all_spans, attrs_of, event_attrs
from tests.support.services import require_postgres

# Sentry's defaults, except for the HTTP detectors, scaled down so the test waits 60 ms
# per upstream call instead of seconds (the logic is the same).
SCALED = DetectorsConfig.model_validate(
    {
        "consecutive_http": {"min_span_ms": 50, "max_gap_ms": 500, "min_savings_ms": 100},
        "n_plus_one_api_calls": {"max_start_gap_ms": 50, "min_total_ms": 300},
    }
)


def detect(
    trace: ExportTraceServiceRequest, detectors: DetectorsConfig = SCALED
) -> tuple[ExportTraceServiceRequest, SelfTelemetry]:
    telemetry = SelfTelemetry()
    sink = Sink()
    settings = CreateSettings(ComponentID("perf_issues"), Kind.PROCESSOR, telemetry)
    processor = PerfIssuesProcessor(settings, PerfIssuesConfig(wait="0", detectors=detectors), sink)
    asyncio.run(processor.consume(trace))
    [out] = sink.got
    assert isinstance(out, ExportTraceServiceRequest)
    return out, telemetry


def findings(trace: ExportTraceServiceRequest) -> list[dict[str, object]]:
    return [f for span in all_spans(trace) for f in event_attrs(span)]


def offenders(trace: ExportTraceServiceRequest, type_: str) -> list[str]:
    return [s.name for s in all_spans(trace) if attrs_of(s).get("otelkit.perf_issue.type") == type_]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopApp]:
    db = Path(tmp_path_factory.mktemp("shop")) / "shop.db"
    with running_shop(f"sqlite:///{db}") as app:
        yield app


def test_n_plus_one_queries_are_found_with_the_culprit_query(shop: ShopApp) -> None:
    trace, telemetry = detect(shop.trace_of("/authors/n-plus-one"))
    [finding] = findings(trace)
    assert finding["otelkit.finding.type"] == "n_plus_one_db_queries"
    assert (
        finding["otelkit.finding.culprit"]
        == "SELECT title, sleep(?) FROM books WHERE author_id = ?"
    )
    assert len(finding["otelkit.finding.span_ids"]) == 6  # type: ignore[arg-type]
    assert len(offenders(trace, "n_plus_one_db_queries")) == 6
    # the finding sits on the parent (the request's server span) and becomes a log record
    [carrier] = [s for s in all_spans(trace) if event_attrs(s)]
    assert carrier.name == "GET /authors/n-plus-one"
    [record] = findings_to_logs(trace).resource_logs[0].scope_logs[0].log_records
    assert record.span_id == carrier.span_id
    assert (
        telemetry.value(
            "otelkit_perf_issues_total", {"type": "n_plus_one_db_queries", "service": "shop-api"}
        )
        == 1
    )


def test_slow_query_is_found(shop: ShopApp) -> None:
    trace, _ = detect(shop.trace_of("/reports/slow"))
    [finding] = findings(trace)
    assert finding["otelkit.finding.type"] == "slow_db_query"
    assert str(finding["otelkit.finding.culprit"]).startswith(
        "SELECT count(*), sleep(?) FROM books"
    )
    assert len(offenders(trace, "slow_db_query")) == 1


@pytest.mark.parametrize(
    ("method", "path", "operation", "culprit"),
    [
        ("GET", "/reports/recursive", "SELECT", "WITH RECURSIVE depth(n) AS (SELECT ? UNION ALL"),
        ("POST", "/books/touch", "UPDATE", "UPDATE books SET title = title WHERE id > ?"),
    ],
)
def test_every_slow_statement_is_found_and_classified(
    shop: ShopApp, method: str, path: str, operation: str, culprit: str
) -> None:
    trace, telemetry = detect(shop.trace_of(path, method))
    [finding] = findings(trace)
    assert finding["otelkit.finding.type"] == "slow_db_query"
    assert finding["otelkit.perf_issue.db_operation"] == operation
    assert str(finding["otelkit.finding.culprit"]).startswith(culprit)
    assert "/*" not in str(finding["otelkit.finding.culprit"])  # comments are not the shape
    labels = {"type": "slow_db_query", "service": "shop-api"}
    assert telemetry.value("otelkit_perf_issues_total", labels) == 1


def test_sequential_http_calls_are_found(shop: ShopApp) -> None:
    trace, _ = detect(shop.trace_of("/dashboard/sequential"))
    types = [f["otelkit.finding.type"] for f in findings(trace)]
    assert types == ["consecutive_http"]
    assert len(offenders(trace, "consecutive_http")) == 3


def test_concurrent_calls_of_one_shape_are_n_plus_one_api_calls(shop: ShopApp) -> None:
    # Six calls started at once by asyncio.gather: a busy machine can spread their starts
    # over more than the scaled 50 ms, which would only test the machine's load.
    patient = SCALED.model_copy(
        update={
            "n_plus_one_api_calls": SCALED.n_plus_one_api_calls.model_copy(
                update={"max_start_gap_ms": 1000}
            )
        }
    )
    trace, _ = detect(shop.trace_of("/dashboard/fan-out"), patient)
    [finding] = findings(trace)
    assert finding["otelkit.finding.type"] == "n_plus_one_api_calls"
    assert str(finding["otelkit.finding.culprit"]).startswith("GET 127.0.0.1:")
    assert str(finding["otelkit.finding.culprit"]).endswith("/upstream/*")
    assert len(offenders(trace, "n_plus_one_api_calls")) == 6


def test_clean_endpoint_has_no_finding(shop: ShopApp) -> None:
    trace, telemetry = detect(shop.trace_of("/authors"))
    assert any(attrs_of(s).get("db.statement") for s in all_spans(trace))  # it did query
    assert findings(trace) == []
    assert telemetry.total("otelkit_perf_issues_total") == 0


def test_defaults_are_sentrys_and_sequential_calls_under_them_are_not_issues(shop: ShopApp) -> None:
    telemetry = SelfTelemetry()
    sink = Sink()
    settings = CreateSettings(ComponentID("perf_issues"), Kind.PROCESSOR, telemetry)
    processor = PerfIssuesProcessor(settings, PerfIssuesConfig(wait="0"), sink)
    asyncio.run(processor.consume(shop.trace_of("/dashboard/sequential")))
    assert findings(sink.got[0]) == []  # type: ignore[arg-type]  # 60 ms calls: below 500 ms


@pytest.mark.service("postgres")
def test_slow_query_on_postgresql_pg_sleep() -> None:
    url = require_postgres().replace("postgresql://", "postgresql+psycopg://")
    with running_shop(url) as app:
        trace, _ = detect(app.trace_of("/reports/slow"))
        n_plus_one, _ = detect(app.trace_of("/authors/n-plus-one"))
        recursive, _ = detect(app.trace_of("/reports/recursive"))
        update, _ = detect(app.trace_of("/books/touch", "POST"))
    [finding] = findings(trace)
    assert finding["otelkit.finding.type"] == "slow_db_query"
    assert "pg_sleep(?)" in str(finding["otelkit.finding.culprit"])
    assert [f["otelkit.finding.type"] for f in findings(n_plus_one)] == ["n_plus_one_db_queries"]
    operations = [
        f["otelkit.perf_issue.db_operation"] for f in [*findings(recursive), *findings(update)]
    ]
    assert operations == ["SELECT", "UPDATE"]
