"""How requests are cut between worker processes, and how the views add workers up."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelkit.collector.exporters.prometheus.merge import ExitedSeries, merge_snapshots
from otelkit.collector.exporters.prometheus.store import FamilySnapshot
from otelkit.collector.exporters.prometheus.translation import Family, HistogramPoint, NumberPoint
from otelkit.collector.pdata.signals import count_items
from otelkit.collector.runtime.component import Status, WorkerRole
from otelkit.collector.runtime.config import ConfigError, parse_config
from otelkit.collector.runtime.registry import Registry
from otelkit.collector.runtime.workers.process import run_worker
from otelkit.collector.runtime.workers.routing import (
    decode_payload,
    encode_payload,
    split_by_owner,
    split_encoded_traces,
    trace_owner,
)
from otelkit.collector.runtime.workers.views import (
    ExitedSamples,
    WorkersHost,
    WorkerState,
    merge_expositions,
)
from tests.collector.builders import logs, metrics, traces


def test_every_span_goes_to_its_trace_owner_with_its_resource_and_scope() -> None:
    request = traces([[3, 2], [4], [1, 1, 1]])
    for span in (s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans):
        span.trace_id = span.span_id * 2  # a trace per span: shares across both workers
    shares = split_by_owner(request, 2)
    assert set(shares) == {0, 1}
    assert sum(count_items(share) for share in shares.values()) == count_items(request)
    for owner, share in shares.items():
        for rs in share.resource_spans:
            assert rs.resource.attributes[0].key == "service.name"
            for ss in rs.scope_spans:
                assert ss.scope.name.startswith("scope-")
                assert all(trace_owner(s.trace_id, 2) == owner for s in ss.spans)


def test_a_request_of_one_owner_is_passed_on_untouched() -> None:
    request = traces([[5, 5]])  # one trace ID for the whole resource
    [(owner, share)] = split_by_owner(request, 4).items()
    assert share is request
    assert owner == trace_owner(request.resource_spans[0].scope_spans[0].spans[0].trace_id, 4)


def test_log_records_follow_their_trace_and_the_others_stay() -> None:
    request = logs([[6]])
    records = request.resource_logs[0].scope_logs[0].log_records
    for i, record in enumerate(records[:4]):
        record.trace_id = bytes([i + 1] * 16)
    shares = split_by_owner(request, 3)
    assert sum(count_items(s) for s in shares.values()) == 6
    assert count_items(shares[-1]) == 2  # no trace ID: processed where it arrived


def test_metrics_go_by_resource() -> None:
    request = metrics([2, 3])
    request.resource_metrics.add().CopyFrom(request.resource_metrics[0])
    [(_, share)] = split_by_owner(request, 5).items()  # the same resource twice: one owner
    assert count_items(share) == 10


def test_payloads_cross_the_channel_unchanged() -> None:
    for request in (traces([[2]]), logs([[3]]), metrics([1])):
        assert decode_payload(encode_payload(request)) == request


def test_the_scrape_view_adds_counters_and_histograms_up() -> None:
    counter = Family("calls_total", "counter")
    histogram = Family("duration", "histogram")
    gauge = Family("target_info", "gauge")

    def worker(calls: float, buckets: tuple[int, ...], time_ns: int) -> list[FamilySnapshot]:
        point = HistogramPoint((1.0,), buckets, float(sum(buckets)), sum(buckets), 1, time_ns)
        return [
            FamilySnapshot(counter, [('route="/a"', NumberPoint(calls, 1, time_ns))]),
            FamilySnapshot(histogram, [('route="/a"', point)]),
            FamilySnapshot(gauge, [('job="shop"', NumberPoint(1.0, 0, time_ns))]),
        ]

    merged = {
        f.family.name: f.series
        for f in merge_snapshots([worker(3, (1, 2), 5), worker(4, (3, 0), 7)])
    }
    assert merged["calls_total"][0][1] == NumberPoint(7, 1, 7)
    [(_, histogram_point)] = merged["duration"]
    assert isinstance(histogram_point, HistogramPoint)
    assert (histogram_point.counts, histogram_point.count) == ((4, 2), 6)
    assert merged["target_info"] == [('job="shop"', NumberPoint(1.0, 0, 7))]


def test_self_metrics_of_the_workers_are_summed_and_gauges_show_the_highest() -> None:
    one = '# HELP x_total X\n# TYPE x_total counter\nx_total{a="1"} 2.0\nx_total{a="2"} 1.0\n'
    two = '# HELP x_total X\n# TYPE x_total counter\nx_total{a="1"} 5.0\n'
    rss = "# HELP rss_bytes R\n# TYPE rss_bytes gauge\nrss_bytes {}\n"
    text = merge_expositions([one + rss.format(300.0), two + rss.format(200.0)]).decode()
    assert 'x_total{a="1"} 7.0' in text and 'x_total{a="2"} 1.0' in text
    assert "rss_bytes 300.0" in text


def test_what_an_exited_worker_counted_stays_in_the_scrape_until_it_would_expire() -> None:
    calls, info = Family("calls_total", "counter"), Family("target_info", "gauge")
    clock = [100.0]
    exited = ExitedSeries(expiration=300.0, clock=lambda: clock[0])
    exited.add([
        FamilySnapshot(calls, [('route="/a"', NumberPoint(5, 1, 9)),
                               ('route="/b"', NumberPoint(2, 1, 9))]),
        FamilySnapshot(info, [('job="shop"', NumberPoint(1.0, 0, 9))]),
    ])  # fmt: skip
    running = [[FamilySnapshot(calls, [('route="/a"', NumberPoint(1, 20, 30))])]]

    def shown() -> dict[str, float]:
        merged = merge_snapshots([*running, exited.alongside(running)])
        return {
            f"{f.family.name}{{{labels}}}": point.value
            for f in merged
            for labels, point in f.series
            if isinstance(point, NumberPoint)
        }

    assert shown() == {'calls_total{route="/a"}': 6, 'calls_total{route="/b"}': 2}
    clock[0] += 301  # /b was quiet as long as its worker would have kept it
    assert shown() == {'calls_total{route="/a"}': 6}


def test_what_an_exited_worker_counted_stays_in_the_self_metrics() -> None:
    exited = ExitedSamples()
    exited.add(
        "# HELP x_total X\n# TYPE x_total counter\nx_total 5.0\n"
        "# HELP w_total W\n# TYPE w_total counter\nw_total 3.0\n"
        "# HELP rss_bytes R\n# TYPE rss_bytes gauge\nrss_bytes 300.0\n"
    )
    running = "# HELP x_total X\n# TYPE x_total counter\nx_total 1.0\n"
    text = merge_expositions([running], exited=exited).decode()
    assert "x_total 6.0" in text and "w_total 3.0" in text and "rss_bytes" not in text


@pytest.mark.parametrize("value", [0, -1, "two", 1.5, True])
def test_service_workers_must_be_a_positive_whole_number(value: object) -> None:
    text = f"""
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:0"}}}}}}}}
exporters: {{nop: {{}}}}
service:
  workers: {value}
  pipelines:
    traces: {{receivers: [otlp], exporters: [nop]}}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, Registry.discover(), {})
    assert any("service.workers" in str(p) for p in caught.value.problems)


def test_service_workers_is_read() -> None:
    text = """
receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}}
exporters: {nop: {}}
service:
  workers: 4
  pipelines:
    traces: {receivers: [otlp], exporters: [nop]}
"""
    assert parse_config(text, Registry.discover(), {}).workers == 4


def test_an_encoded_request_is_cut_as_the_objects_are() -> None:
    request = traces([[3, 2], [4], [1, 1, 1]])
    for span in (s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans):
        span.trace_id = span.span_id * 2
    data = request.SerializeToString()
    encoded = split_encoded_traces(data, 3)
    objects = split_by_owner(request, 3)
    assert set(encoded) == set(objects)
    for owner, (share, spans) in encoded.items():
        assert ExportTraceServiceRequest.FromString(share) == objects[owner]
        assert spans == count_items(objects[owner])


def test_an_encoded_request_of_one_owner_is_passed_on_as_it_is() -> None:
    data = traces([[5, 5]]).SerializeToString()
    [(share, spans)] = split_encoded_traces(data, 2).values()
    assert share is data and spans == 10


def test_bytes_that_cannot_be_cut_are_refused_for_the_parser_to_judge() -> None:
    data = traces([[3]]).SerializeToString()
    with pytest.raises(ValueError):
        split_encoded_traces(data[:-5], 2)


def test_a_worker_whose_supervisor_died_while_it_started_does_not_start(tmp_path: Path) -> None:
    """The kernel signals a worker when its parent dies only from the moment the worker
    asks: a supervisor killed before that would leave the worker running for good."""
    text = "receivers: {otlp: {protocols: {grpc: {endpoint: '127.0.0.1:0'}}}}\n" + (
        "exporters: {nop: {}}\nservice: {pipelines: {traces: {receivers: [otlp], exporters: [nop]}}}\n"
    )
    config = parse_config(text, Registry.discover(), {})
    runtime_dir = tmp_path / "otelkit-workers"
    runtime_dir.mkdir()
    gone = os.getppid() + 1_000_000  # not this process's parent: the supervisor is gone
    asyncio.run(asyncio.wait_for(run_worker(config, WorkerRole(0, 2), runtime_dir, gone), 10))
    assert not runtime_dir.exists()  # returned at once, tidying up as the last worker out


@pytest.mark.parametrize(
    "report", [None, {"ready": False, "statuses": {"receiver/otlp": ["ok", ""]}}]
)
def test_health_warns_of_a_worker_readiness_names(report: dict[str, object] | None) -> None:
    # A worker started again answers before its components are all up: /health said
    # pass from its partial statuses while /health/ready named it as not ready.
    running = WorkerState({"ready": True, "statuses": {"receiver/otlp": ["ok", ""]}})
    host = WorkersHost([running, WorkerState(report, why_not="starting")], serving=True)
    assert "worker 1" in host.refusals()
    status, message = host.component_statuses()["receiver/otlp"]
    assert status is Status.STARTING and message.startswith("worker 1: not ready")
