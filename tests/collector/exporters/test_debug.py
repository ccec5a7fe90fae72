"""The ``debug`` exporter, built through its factory and fed payloads in-process."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from google.protobuf import text_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import ValidationError

from otelkit.collector.exporters.debug import Sampler, factory, timestamp
from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.collector.builders import logs, metrics, traces

SPANS = text_format.Parse(
    """
    resource_spans {
      resource { attributes { key: "service.name" value { string_value: "shop" } } }
      schema_url: "https://opentelemetry.io/schemas/1.21.0"
      scope_spans {
        scope { name: "fastapi" version: "0.48b0" }
        spans {
          trace_id: "\\x5b\\x8e\\xff\\xf7\\x98\\x03\\x81\\x03\\xd2\\x69\\xb6\\x33\\x81\\x3f\\xc6\\x0c"
          span_id: "\\xee\\xe1\\x9b\\x7e\\xc3\\xc1\\xb1\\x74"
          parent_span_id: "\\xee\\xe1\\x9b\\x7e\\xc3\\xc1\\xb1\\x73"
          name: "GET /users/{id}" kind: SPAN_KIND_SERVER
          start_time_unix_nano: 1544712660000000000 end_time_unix_nano: 1544712661500000000
          status { code: STATUS_CODE_ERROR message: "boom" }
          attributes { key: "http.route" value { string_value: "/users/{id}" } }
          attributes { key: "http.response.status_code" value { int_value: 500 } }
          events { name: "exception" time_unix_nano: 1544712660500000000
                   attributes { key: "exception.type" value { string_value: "ValueError" } } }
          links { trace_id: "\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01"
                  span_id: "\\x02\\x02\\x02\\x02\\x02\\x02\\x02\\x02" trace_state: "k=v" }
        }
      }
    }
    """,
    ExportTraceServiceRequest(),
)
METRICS = text_format.Parse(
    """
    resource_metrics { scope_metrics { scope { name: "meter" }
      metrics { name: "requests" unit: "1" description: "Requests served"
        sum { is_monotonic: true aggregation_temporality: AGGREGATION_TEMPORALITY_CUMULATIVE
              data_points { as_int: 42 time_unix_nano: 1544712660000000000
                            attributes { key: "route" value { string_value: "/x" } }
                            exemplars { as_double: 0.25 span_id: "\\x02\\x02\\x02\\x02\\x02\\x02\\x02\\x02"
                                        trace_id: "\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01" } } } }
      metrics { name: "temperature" gauge { data_points { as_double: 21.5 } } }
      metrics { name: "latency" histogram { aggregation_temporality: AGGREGATION_TEMPORALITY_DELTA
        data_points { count: 3 sum: 0.75 min: 0.1 max: 0.5 explicit_bounds: [0.25] bucket_counts: [1, 2] } } }
      metrics { name: "sizes" exponential_histogram { data_points {
        count: 4 sum: 10 scale: 2 zero_count: 1 positive { offset: 3 bucket_counts: [1, 2] } } } }
      metrics { name: "rpc" summary { data_points { count: 5 sum: 2.5
        quantile_values { quantile: 0.99 value: 0.9 } } } }
    } }
    """,
    ExportMetricsServiceRequest(),
)
LOGS = text_format.Parse(
    """
    resource_logs { scope_logs { scope { name: "app" }
      log_records { severity_number: SEVERITY_NUMBER_WARN severity_text: "WARNING"
                    body { string_value: "disk almost full" }
                    attributes { key: "disk" value { string_value: "/var" } }
                    trace_id: "\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01\\x01" }
      log_records { body { kvlist_value { values { key: "user" value { int_value: 7 } } } } }
      log_records { body { array_value { values { string_value: "a" } values { bool_value: true } } } }
      log_records { body { bytes_value: "\\x00\\xff" } }
      log_records { body { double_value: 1.5 } }
      log_records { }
    } }
    """,
    ExportLogsServiceRequest(),
)


def run(config: dict[str, Any], *payloads: Payload) -> None:
    settings = CreateSettings(ComponentID("debug"), Kind.EXPORTER, SelfTelemetry())
    exporter = factory.create(
        settings, factory.config_class.model_validate(config), frozenset(Signal)
    )

    async def main() -> None:
        await exporter.start(ServiceHost())
        for payload in payloads:
            await exporter.consume(payload)
        await exporter.shutdown()

    asyncio.run(main())


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "otelkit.exporter.debug"]


def test_basic_logs_one_summary_line_per_batch_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="otelkit.exporter.debug")
    run({}, traces([[3, 2], [1]]), metrics([2, 3]), logs([[4]]))
    assert logged(caplog) == [
        "TracesExporter: 2 resource spans, 6 spans",
        "MetricsExporter: 1 resource metrics, 2 metrics, 5 data points",
        "LogsExporter: 1 resource logs, 4 log records",
    ]
    assert {r.levelno for r in caplog.records if r.name == "otelkit.exporter.debug"} == {
        logging.INFO
    }


def test_normal_adds_a_line_per_item(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="otelkit.exporter.debug")
    run({"verbosity": "normal"}, SPANS, METRICS, LOGS)
    summary, spans, _, points, _, records = logged(caplog)
    assert summary == "TracesExporter: 1 resource spans, 1 spans"
    assert spans == (
        "GET /users/{id} 5b8efff798038103d269b633813fc60c eee19b7ec3c1b174 "
        "http.route=/users/{id} http.response.status_code=500"
    )
    assert points.splitlines() == [
        "requests{route=/x} 42",
        "temperature{} 21.500000",
        "latency{} count=3 sum=0.750000 min=0.100000 max=0.500000",
        "sizes{} count=4 sum=10.000000",
        "rpc{} count=5 sum=2.500000 q0.990000=0.900000",
    ]
    assert records.splitlines() == [
        "disk almost full disk=/var", '{"user":7}', '["a",true]', "AP8=", "1.5", "(empty)",
    ]  # fmt: skip


def test_detailed_logs_every_field(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="otelkit.exporter.debug")
    run({"verbosity": "detailed"}, SPANS, METRICS, LOGS)
    _, spans, _, metrics_text, _, logs_text = logged(caplog)
    for expected in [
        "ResourceSpans #0", "Resource SchemaURL: https://opentelemetry.io/schemas/1.21.0",
        "     -> service.name: Str(shop)", "InstrumentationScope fastapi 0.48b0",
        "    Trace ID       : 5b8efff798038103d269b633813fc60c",
        "    Parent ID      : eee19b7ec3c1b173", "    ID             : eee19b7ec3c1b174",
        "    Kind           : Server", "    Start time     : 2018-12-13 14:51:00 +0000 UTC",
        "    End time       : 2018-12-13 14:51:01.5 +0000 UTC",
        "    Status code    : Error", "    Status message : boom",
        "     -> http.response.status_code: Int(500)", "SpanEvent #0", "     -> Name: exception",
        "          -> exception.type: Str(ValueError)", "SpanLink #0",
        "     -> Trace ID: 01010101010101010101010101010101", "     -> TraceState: k=v",
    ]:  # fmt: skip
        assert expected in spans.splitlines(), expected
    for expected in [
        "     -> DataType: Sum", "     -> IsMonotonic: true",
        "     -> AggregationTemporality: Cumulative", "     -> Description: Requests served",
        "Value: 42", "     -> route: Str(/x)", "Exemplar #0", "     -> Value: 0.250000",
        "     -> Span ID: 0202020202020202", "     -> DataType: Gauge", "Value: 21.500000",
        "HistogramDataPoints #0", "Min: 0.100000", "Max: 0.500000", "ExplicitBounds #0: 0.250000",
        "Buckets #1, Count: 2", "ExponentialHistogramDataPoints #0", "Scale: 2", "ZeroCount: 1",
        "Positive buckets: offset 3, counts [1, 2]", "SummaryDataPoints #0",
        "QuantileValue #0: Quantile 0.990000, Value 0.900000",
    ]:  # fmt: skip
        assert expected in metrics_text.splitlines(), expected
    for expected in [
        "SeverityText: WARNING", "SeverityNumber: Warn(13)", "Body: Str(disk almost full)",
        "     -> disk: Str(/var)", "Trace ID: 01010101010101010101010101010101",
        'Body: Map({"user":7})', 'Body: Slice(["a",true])', 'Body: Bytes(AP8=)',
        "Body: Double(1.5)", "Body: Empty()",
    ]:  # fmt: skip
        assert expected in logs_text.splitlines(), expected


def test_without_the_internal_logger_output_goes_to_stdout(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="otelkit.exporter.debug")
    run({"use_internal_logger": False}, logs([[2]]))
    assert capsys.readouterr().out == "LogsExporter: 1 resource logs, 2 log records\n"
    assert logged(caplog) == []


def test_sampler_passes_the_first_n_per_second_then_every_mth() -> None:
    now = [100.0]
    sampler = Sampler(initial=2, thereafter=3, clock=lambda: now[0])
    assert [sampler.allow() for _ in range(8)] == [
        True,
        True,
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    now[0] = 101.2  # a new second starts over
    assert [sampler.allow() for _ in range(3)] == [True, True, False]


def test_timestamps_print_as_go_does() -> None:
    assert timestamp(0) == "1970-01-01 00:00:00 +0000 UTC"
    assert timestamp(1_700_000_000_000_000_001) == "2023-11-14 22:13:20.000000001 +0000 UTC"


def test_config_validation() -> None:
    assert factory.config_class.model_validate({}).sending_queue.num_consumers == 1
    for bad in [{"verbosity": "loud"}, {"sampling_initial": 0}, {"unknown": 1}]:
        with pytest.raises(ValidationError):
            factory.config_class.model_validate(bad)


def test_detailed_values_render_as_upstream_with_escaped_containers() -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

    from otelkit.collector.exporters.debug import any_value_detail

    quoted = AnyValue(string_value='say "hi"')
    listed = AnyValue(array_value=ArrayValue(values=[quoted, AnyValue(int_value=3)]))
    assert any_value_detail(listed) == 'Slice(["say \\"hi\\"",3])'
    assert any_value_detail(AnyValue(double_value=2.0)) == "Double(2)"
    assert any_value_detail(AnyValue(double_value=0.25)) == "Double(0.25)"
    assert any_value_detail(AnyValue()) == "Empty()"
