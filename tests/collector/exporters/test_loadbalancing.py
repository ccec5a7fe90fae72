"""The ``loadbalancing`` exporter: its ring, its routing keys, its config, and its
backends coming and going, against in-process gRPC servers on 127.0.0.x addresses."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import ValidationError

from otelkit.collector.exporters.loadbalancing.config import LoadBalancingConfig
from otelkit.collector.exporters.loadbalancing.exporter import LoadBalancingExporter
from otelkit.collector.exporters.loadbalancing.ring import HashRing
from otelkit.collector.exporters.loadbalancing.routing import split
from otelkit.collector.pdata.signals import Payload
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind, Status
from otelkit.collector.runtime.config import ConfigError, parse_config
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.registry import Registry
from otelkit.collector.runtime.service import Service, ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.collector.builders import attr, item_names, logs, metrics, traces
from tests.collector.exporters.fake_servers import FakeGrpcServer
from tests.support.dns import Answers, fake_dns
from tests.support.services import free_port

FAST_RETRY = {"initial_interval": "10ms", "max_interval": "50ms", "max_elapsed_time": "60s"}
OTLP = {"tls": {"insecure": True}, "retry_on_failure": FAST_RETRY}


def trace_ids(count: int, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(count)]


def many_traces(count: int, spans_per_trace: int = 3) -> Any:
    """``count`` traces of ``spans_per_trace`` spans, interleaved over two resources."""
    request = traces([[0], [0]])
    for t, trace_id in enumerate(trace_ids(count)):
        for s in range(spans_per_trace):
            scope = request.resource_spans[(t + s) % 2].scope_spans[0]
            span = scope.spans.add(name=f"t{t}.s{s}", trace_id=trace_id)
            span.span_id = (t * 100 + s + 1).to_bytes(8, "big")
    return request


def spans_by_trace(payloads: list[Payload]) -> dict[bytes, list[str]]:
    found: dict[bytes, list[str]] = {}
    for payload in payloads:
        for rs in payload.resource_spans:  # type: ignore[union-attr]
            for ss in rs.scope_spans:
                for span in ss.spans:
                    found.setdefault(span.trace_id, []).append(span.name)
    return found


# The ring --------------------------------------------------------------------------------
def test_adding_a_fourth_backend_moves_about_a_quarter_of_the_traces_all_to_it() -> None:
    three = HashRing(["10.0.0.1:4317", "10.0.0.2:4317", "10.0.0.3:4317"])
    four = HashRing([*three.endpoints, "10.0.0.4:4317"])
    keys = trace_ids(10_000)
    moved = [k for k in keys if three.endpoint_for(k) != four.endpoint_for(k)]
    assert 0.15 < len(moved) / len(keys) < 0.35
    assert {four.endpoint_for(k) for k in moved} == {"10.0.0.4:4317"}


def test_the_ring_spreads_traces_over_every_backend() -> None:
    ring = HashRing([f"backend-{n}:4317" for n in range(3)])
    shares = Counter(ring.endpoint_for(k) for k in trace_ids(10_000))
    assert len(shares) == 3
    assert all(2_500 < count < 4_200 for count in shares.values()), shares


def test_the_ring_depends_on_the_endpoints_not_their_order() -> None:
    a = HashRing(["b:1", "a:1", "c:1"])
    b = HashRing(["c:1", "a:1", "b:1", "a:1"])
    assert all(a.endpoint_for(k) == b.endpoint_for(k) for k in trace_ids(1000))


# Routing ---------------------------------------------------------------------------------
def test_every_span_of_a_trace_lands_in_one_part_and_none_is_lost() -> None:
    request = many_traces(500)
    ring = HashRing(["h1:4317", "h2:4317", "h3:4317"])
    parts = split(request, "traceID", ring.index_for)
    assert len(parts) == 3
    seen: dict[bytes, int] = {}
    for index, part in parts.items():
        for trace_id, names in spans_by_trace([part]).items():
            assert seen.setdefault(trace_id, index) == index, "a trace split over backends"
            assert ring.index_for(trace_id) == index
            assert len(names) == 3
    assert sorted(n for p in parts.values() for n in item_names(p)) == sorted(item_names(request))
    # Resources and scopes are kept with their spans.
    for part in parts.values():
        for rs in part.resource_spans:  # type: ignore[union-attr]
            assert rs.resource.attributes[0].key == "service.name"
            assert rs.scope_spans[0].scope.name.startswith("scope-")


def test_a_request_of_one_trace_is_passed_on_whole() -> None:
    request = traces([[3, 2]])
    ring = HashRing(["h1:4317", "h2:4317"])
    (part,) = split(request, "traceID", ring.index_for).values()
    assert part is request


def test_log_records_follow_their_trace_and_untraced_ones_stay_together() -> None:
    request = logs([[6]])
    records = request.resource_logs[0].scope_logs[0].log_records
    ids = trace_ids(3)
    for i, record in enumerate(records[:3]):
        record.trace_id = ids[i]
    ring = HashRing([f"h{n}:4317" for n in range(8)])
    parts = split(request, "traceID", ring.index_for)
    for i in range(3):
        assert f"l0.0.{i}" in item_names(parts[ring.index_for(ids[i])])
    untraced = [i for i, p in parts.items() if "l0.0.3" in item_names(p)]
    assert len(untraced) == 1
    assert {"l0.0.4", "l0.0.5"} <= set(item_names(parts[untraced[0]]))


def test_metrics_by_service_keep_each_resource_whole() -> None:
    request = metrics([2, 3])
    second = request.resource_metrics.add()
    second.CopyFrom(metrics([4], prefix="n").resource_metrics[0])
    request.resource_metrics[0].resource.attributes.append(attr("service.name", "cart"))
    second.resource.attributes.append(attr("service.name", "payments"))
    ring = HashRing(["h1:4317", "h2:4317", "h3:4317", "h4:4317", "h5:4317"])
    parts = split(request, "service", ring.index_for)
    cart = ring.index_for(
        request.resource_metrics[0].resource.attributes[0].value.SerializeToString()
    )
    assert sorted(item_names(parts[cart]))[:5] == ["m0:0", "m0:1", "m1:0", "m1:1", "m1:2"]
    assert sum(len(item_names(p)) for p in parts.values()) == 9


def test_metrics_by_stream_keep_each_series_on_one_backend() -> None:
    request = metrics([0, 0])
    for metric in request.resource_metrics[0].scope_metrics[0].metrics:
        for n in range(40):
            point = metric.sum.data_points.add(as_int=n, time_unix_nano=n + 1)
            point.attributes.append(attr("route", f"/r{n % 10}"))
    ring = HashRing(["h1:4317", "h2:4317", "h3:4317"])
    parts = split(request, "streamID", ring.index_for)
    assert len(parts) > 1
    series: dict[tuple[str, str], set[int]] = {}
    for index, part in parts.items():
        for metric in part.resource_metrics[0].scope_metrics[0].metrics:  # type: ignore[union-attr]
            assert metric.sum.is_monotonic and metric.unit == "1"
            for point in metric.sum.data_points:
                series.setdefault((metric.name, point.attributes[0].value.string_value), set()).add(
                    index
                )
    assert len(series) == 20 and all(len(where) == 1 for where in series.values())
    assert sum(len(item_names(p)) for p in parts.values()) == 80


def test_metrics_by_name() -> None:
    request = metrics([2, 2, 2, 2, 2, 2])
    ring = HashRing(["h1:4317", "h2:4317", "h3:4317"])
    parts = split(request, "metric", ring.index_for)
    for index, part in parts.items():
        for name in {n.split(":")[0] for n in item_names(part)}:
            assert ring.index_for(name.encode()) == index
    assert sum(len(item_names(p)) for p in parts.values()) == 12


# Config ----------------------------------------------------------------------------------
PIPELINE_CONFIG = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:4317"}}}
exporters:
  loadbalancing:
    EXPORTER
service:
  pipelines:
    SIGNAL: {receivers: [otlp], exporters: [loadbalancing]}
"""


def load(exporter: str, signal: str = "traces") -> Any:
    text = PIPELINE_CONFIG.replace("EXPORTER", exporter).replace("SIGNAL", signal)
    return parse_config(text, Registry.discover(), {})


@pytest.mark.parametrize(
    ("exporter", "signal", "message"),
    [
        ("resolver: {static: {hostnames: [a]}}", "metrics", "traceID cannot route metrics"),
        ("{routing_key: streamID, resolver: {static: {hostnames: [a]}}}", "logs",
         "routing_key streamID routes metrics only"),
        ("resolver: {k8s: {service: lb-backends}}", "traces", "k8s resolver is not supported"),
        ("resolver: {aws_cloud_map: {namespace: x}}", "traces", "aws_cloud_map resolver is not supported"),
        ("resolver: {}", "traces", "set exactly one resolver"),
        ("resolver: {static: {hostnames: [a]}, dns: {hostname: b}}", "traces", "got static and dns"),
        ("{protocol: {otlp: {endpoint: 'x:4317'}}, resolver: {static: {hostnames: [a]}}}",
         "traces", "remove protocol.otlp.endpoint"),
        ("{protocol: {otlp: {tls: {insecure_skip_verify: true}}}, resolver: {static: {hostnames: [a]}}}",
         "traces", "insecure_skip_verify is not supported"),
        ("{routing_key: span, resolver: {static: {hostnames: [a]}}}", "traces", "routing_key"),
    ],
)  # fmt: skip
def test_config_errors_name_the_problem(exporter: str, signal: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(exporter, signal)
    assert message in str(caught.value)


def test_config_defaults_follow_upstream() -> None:
    config = LoadBalancingConfig.model_validate(
        {"resolver": {"dns": {"hostname": "backends"}}, "protocol": {"otlp": {"timeout": "2s"}}}
    )
    assert config.routing_key == "traceID"
    assert (
        config.resolver.dns.port,
        config.resolver.dns.interval,
        config.resolver.dns.timeout,
    ) == (4317, 5.0, 1.0)
    assert config.protocol.otlp.timeout == 2.0
    static = LoadBalancingConfig.model_validate(
        {"resolver": {"static": {"hostnames": ["a", "b:4000", "::1", "[::2]:5"]}}}
    )
    assert static.resolver.static.hostnames == ["a:4317", "b:4000", "[::1]:4317", "[::2]:5"]


def test_a_metrics_pipeline_routed_by_service_loads() -> None:
    load("{routing_key: service, resolver: {static: {hostnames: [a]}}}", "metrics")


def test_config_objects_refuse_invalid_values_directly() -> None:
    with pytest.raises(ValidationError, match="a backend is listed twice"):
        LoadBalancingConfig.model_validate({"resolver": {"static": {"hostnames": ["a", "a:4317"]}}})


# The exporter against servers on 127.0.0.x -----------------------------------------------
class Backends:
    """gRPC servers on 127.0.0.2, .3, ... sharing one port, as a DNS name's addresses."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.servers: dict[str, FakeGrpcServer] = {}

    async def start(self, host: str) -> FakeGrpcServer:
        server = self.servers.get(host) or FakeGrpcServer(host=host, port=self.port)
        await server.start()
        self.port = server.port
        self.servers[host] = server
        return server

    async def stop(self, host: str) -> None:
        await self.servers[host].stop()

    def received(self) -> list[Payload]:
        return [p for s in self.servers.values() for p in s.received]


@pytest.fixture
def dns_answers(monkeypatch: pytest.MonkeyPatch) -> Answers:
    return fake_dns(monkeypatch)


Check = Callable[[LoadBalancingExporter, Backends, SelfTelemetry, ServiceHost], Awaitable[None]]


def run_exporter(check: Check, hosts: list[str], *, dns: bool = False, **config: Any) -> None:
    """Start servers on ``hosts`` and an exporter reaching them (static resolver), or, with
    ``dns``, a DNS resolver on a free port the test then starts servers on."""

    async def main() -> None:
        backends = Backends(free_port() if dns else 0)
        for host in hosts:
            await backends.start(host)
        if dns:
            resolver = {"dns": {"hostname": "backends.test", "port": backends.port, "interval": "50ms"}}  # fmt: skip
        else:
            resolver = {"static": {"hostnames": [f"{h}:{backends.port}" for h in hosts]}}
        settings = CreateSettings(ComponentID("loadbalancing"), Kind.EXPORTER, SelfTelemetry())
        exporter = LoadBalancingExporter(
            settings,
            LoadBalancingConfig.model_validate({"resolver": resolver, "protocol": {"otlp": OTLP}, **config}),
        )  # fmt: skip
        host = ServiceHost()
        host.report_status("exporter/loadbalancing", Status.OK)
        await exporter.start(host)
        try:
            await check(exporter, backends, settings.telemetry, host)
        finally:
            await exporter.shutdown()
            for server in backends.servers.values():
                await server.stop()

    asyncio.run(main())


async def eventually(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_static_backends_each_get_whole_traces() -> None:
    request = many_traces(300)
    expected = spans_by_trace([request])

    async def check(
        exporter: LoadBalancingExporter, backends: Backends, telemetry: SelfTelemetry, _: Any
    ) -> None:
        await exporter.consume(request)
        await eventually(
            lambda: sum(len(v) for v in spans_by_trace(backends.received()).values()) == 900
        )
        for host, server in backends.servers.items():
            assert server.received, f"{host} got nothing"
        owners: dict[bytes, str] = {}
        for host, server in backends.servers.items():
            for trace_id, names in spans_by_trace(server.received).items():
                assert owners.setdefault(trace_id, host) == host
                assert sorted(names) == sorted(expected[trace_id])
        assert telemetry.total("otelcol_loadbalancer_backend_outcome_total", success="true") == 3
        assert telemetry.total("otelcol_loadbalancer_backend_latency_count") == 3
        assert telemetry.total("otelcol_loadbalancer_backend_outcome_total", success="false") == 0
        assert telemetry.value("otelcol_loadbalancer_num_backends", {"resolver": "static"}) == 3
        assert telemetry.total("otelcol_exporter_sent_spans_total") == 900

    run_exporter(check, ["127.0.0.2", "127.0.0.3", "127.0.0.4"])


def test_dns_backends_come_and_go_and_failures_keep_the_last_ones(
    dns_answers: Answers,
) -> None:
    async def check(
        exporter: LoadBalancingExporter, backends: Backends, telemetry: SelfTelemetry, host: Any
    ) -> None:
        assert exporter.ring is None
        status, why = host.statuses["exporter/loadbalancing"]
        assert status == Status.RECOVERABLE_ERROR and "no backends yet" in why
        with pytest.raises(RetryableError, match="no backends"):
            await exporter.consume(traces([[1]]))
        for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            await backends.start(address)
        dns_answers.append(["127.0.0.3", "127.0.0.2"])
        await eventually(lambda: exporter.ring is not None)
        assert host.statuses["exporter/loadbalancing"][0] == Status.OK
        port = backends.port
        assert sorted(exporter.backends) == [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
        updates = {"resolver": "dns"}
        assert telemetry.value("otelcol_loadbalancer_num_backend_updates_total", updates) == 1
        dns_answers.append(OSError("Name or service not known"))
        await eventually(lambda: telemetry.value("otelcol_loadbalancer_num_resolutions_total",
                                                 {"resolver": "dns", "success": "false"}) >= 2)  # fmt: skip
        assert sorted(exporter.backends) == [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]
        dns_answers.append(["127.0.0.2", "127.0.0.3"])  # same answer: no update
        await asyncio.sleep(0.2)
        assert telemetry.value("otelcol_loadbalancer_num_backend_updates_total", updates) == 1
        dns_answers.append(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        await eventually(lambda: len(exporter.backends) == 3)
        await exporter.consume(many_traces(200))
        await eventually(lambda: bool(backends.servers["127.0.0.4"].received))
        assert telemetry.value("otelcol_loadbalancer_num_backends", updates) == 3

    run_exporter(check, [], dns=True)


def failed_spans(telemetry: SelfTelemetry) -> float:
    return telemetry.total("otelcol_exporter_send_failed_spans_total")


def test_what_a_removed_dead_backend_held_goes_to_the_others_whole(
    dns_answers: Answers,
) -> None:
    request = many_traces(300)
    expected = spans_by_trace([request])

    async def check(
        exporter: LoadBalancingExporter,
        backends: Backends,
        telemetry: SelfTelemetry,
        host: ServiceHost,
    ) -> None:
        hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        for name in hosts:
            await backends.start(name)
        dns_answers.append(hosts)
        await eventually(lambda: len(exporter.backends) == 3)
        await backends.stop("127.0.0.4")
        await exporter.consume(request)  # accepted: a third waits in the dead backend's queue
        await eventually(
            lambda: host.statuses["exporter/loadbalancing"][0] == Status.RECOVERABLE_ERROR
        )
        assert "127.0.0.4" in host.statuses["exporter/loadbalancing"][1]
        dns_answers.append(hosts[:2])
        await eventually(lambda: spans_by_trace(backends.received()).keys() == expected.keys())
        owners: dict[bytes, str] = {}
        for name in hosts[:2]:
            for trace_id, names in spans_by_trace(backends.servers[name].received).items():
                assert owners.setdefault(trace_id, name) == name, "a trace split over backends"
                assert sorted(names) == sorted(expected[trace_id])
        assert failed_spans(telemetry) == 0
        await eventually(lambda: host.statuses["exporter/loadbalancing"][0] == Status.OK)

    run_exporter(check, [], dns=True)


def test_a_removed_live_backend_drains_its_queue_itself(
    dns_answers: Answers,
) -> None:
    async def check(
        exporter: LoadBalancingExporter, backends: Backends, telemetry: SelfTelemetry, _: Any
    ) -> None:
        hosts = ["127.0.0.2", "127.0.0.3"]
        for name in hosts:
            await backends.start(name)
        dns_answers.append(hosts)
        await eventually(lambda: len(exporter.backends) == 2)
        request = many_traces(200)
        on_second = sum(
            len(names)
            for trace_id, names in spans_by_trace([request]).items()
            if exporter.ring is not None and exporter.ring.endpoint_for(trace_id).startswith("127.0.0.3")
        )  # fmt: skip
        await exporter.consume(request)
        dns_answers.append(hosts[:1])
        await eventually(lambda: len(exporter.backends) == 1)
        await eventually(
            lambda: sum(len(v) for v in spans_by_trace(backends.received()).values()) == 600
        )
        assert (
            sum(len(v) for v in spans_by_trace(backends.servers["127.0.0.3"].received).values())
            == on_second
        )
        assert failed_spans(telemetry) == 0

    run_exporter(check, [], dns=True)


def test_spans_without_a_trace_id_are_routed_together_and_kept() -> None:
    request = many_traces(50)
    scope = request.resource_spans[0].scope_spans[0]
    scope.schema_url = "https://opentelemetry.io/schemas/1.26.0"
    for name in ("no-trace-1", "no-trace-2"):
        scope.spans.add(name=name)
    ring = HashRing(["h1:4317", "h2:4317", "h3:4317"])
    parts = split(request, "traceID", ring.index_for)
    assert sorted(n for p in parts.values() for n in item_names(p)) == sorted(item_names(request))
    (owner,) = [i for i, p in parts.items() if "no-trace-1" in item_names(p)]
    assert "no-trace-2" in item_names(parts[owner])
    for part in parts.values():
        for ss in part.resource_spans[0].scope_spans:  # type: ignore[union-attr]
            assert ss.scope.name == "scope-0-0"
            assert ss.schema_url == "https://opentelemetry.io/schemas/1.26.0"


def test_every_backend_gets_the_templates_auth_and_headers() -> None:
    """``protocol.otlp`` is the whole otlp exporter config, authenticator included."""

    async def main() -> None:
        servers = [FakeGrpcServer(host=f"127.0.0.{n}") for n in (2, 3)]
        for server in servers:
            await server.start()
        hostnames = [f"127.0.0.{n}:{s.port}" for n, s in zip((2, 3), servers, strict=True)]
        text = f"""
extensions:
  bearertokenauth: {{token: backend-secret}}
receivers:
  otlp: {{protocols: {{grpc: {{endpoint: "127.0.0.1:{free_port()}"}}}}}}
exporters:
  loadbalancing:
    protocol:
      otlp:
        tls: {{insecure: true}}
        headers: {{x-tier: front}}
        auth: {{authenticator: bearertokenauth}}
    resolver: {{static: {{hostnames: {hostnames}}}}}
service:
  extensions: [bearertokenauth]
  telemetry: {{metrics: {{address: "127.0.0.1:{free_port()}"}}}}
  pipelines:
    traces: {{receivers: [otlp], exporters: [loadbalancing]}}
"""
        service = Service(parse_config(text, Registry.discover(), {}))
        await service.start()
        try:
            await service.graph.exporters[ComponentID("loadbalancing")].consume(many_traces(100))
            await eventually(lambda: all(s.metadata for s in servers))
        finally:
            await service.shutdown()
            for server in servers:
                await server.stop()
        for server in servers:
            assert server.metadata[0]["authorization"] == "Bearer backend-secret"
            assert server.metadata[0]["x-tier"] == "front"

    asyncio.run(main())
