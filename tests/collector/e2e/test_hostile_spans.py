"""A span no app should send, through the shipped collector/otelkit.yaml: the requests
around it still get their access records, and later traffic still flows. One server
span whose status code was a number too large for OTLP (or an infinite one) failed the access records of
its whole batch and stopped `perf_issues` releasing anything for good."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.collector.e2e.clients import wait_until
from tests.collector.e2e.test_redaction import ROOT, log_store_text, post
from tests.support.collector import allocate_ports, collector

START = 1_764_900_000_000_000_000


def server_request(path: str, status: object, trace: int) -> ExportTraceServiceRequest:
    out = ExportTraceServiceRequest()
    rs = out.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value="shop"))
    span = rs.scope_spans.add().spans.add(
        trace_id=trace.to_bytes(16, "big"),
        span_id=trace.to_bytes(8, "big"),
        name=f"GET {path}",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=START,
        end_time_unix_nano=START + 12_000_000,
    )
    value = (
        AnyValue(int_value=status)
        if isinstance(status, int)
        else AnyValue(string_value=str(status))
    )
    span.attributes.extend(
        [
            KeyValue(key="http.request.method", value=AnyValue(string_value="GET")),
            KeyValue(key="url.path", value=AnyValue(string_value=path)),
            KeyValue(key="http.response.status_code", value=value),
        ]
    )
    return out


@pytest.mark.parametrize("status", [1.2345678901234568e22, "1.5e400"])
def test_a_span_with_an_impossible_status_costs_no_other_record(
    tmp_path: Path, status: object
) -> None:
    ports = allocate_ports("grpc", "http", "prom", "health", "metrics")
    env = {
        "OTELKIT_GRPC_ENDPOINT": f"127.0.0.1:{ports['grpc']}",
        "OTELKIT_HTTP_ENDPOINT": f"127.0.0.1:{ports['http']}",
        "OTELKIT_PROMETHEUS_ENDPOINT": f"127.0.0.1:{ports['prom']}",
        "OTELKIT_HEALTH_ENDPOINT": f"127.0.0.1:{ports['health']}",
        "OTELKIT_METRICS_ADDRESS": f"127.0.0.1:{ports['metrics']}",
        "OTELKIT_DATA_DIR": str(tmp_path / "data"),
        "OTELKIT_BUDGETS_FILE": str(ROOT / "collector/budgets.yaml"),
    }
    shipped = (ROOT / "collector/otelkit.yaml").read_text()
    database = tmp_path / "data" / "logs.db"
    with collector(shipped, tmp_path, ports=ports, env=env, wait_ports=("http",)):
        together = server_request("/before", 200, trace=1)
        hostile = server_request("/hostile", status, trace=2)
        together.resource_spans.extend(hostile.resource_spans)
        post(ports["http"], together)
        wait_until(lambda: "GET /before 200" in log_store_text(database), timeout=30,
                   what="the access record of the hostile span's neighbour")  # fmt: skip
        post(ports["http"], server_request("/after", 201, trace=3))
        wait_until(lambda: "GET /after 201" in log_store_text(database), timeout=30,
                   what="the access record of a later request")  # fmt: skip
    assert "/hostile" not in log_store_text(database)
