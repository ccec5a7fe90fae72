"""The ``loadbalancing`` exporter as a front tier: real SDK exporters send to a collector
that routes to three backend collectors, and every trace lands whole on one of them.

The first test runs every collector as ``otelkit collector run``. The second changes the
backends under load through the dns resolver: its front collector runs in the test's
process so the name lookup can answer what the test says (servers on 127.0.0.x stand
for the machines behind a headless Service)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan

from otelkit.collector.pdata.signals import Payload
from otelkit.collector.runtime.config import parse_config
from otelkit.collector.runtime.registry import Registry
from otelkit.collector.runtime.service import Service
from tests.collector.e2e.clients import (
    expected_points,
    expected_spans,
    make_metrics,
    make_spans,
    metric_total,
    point_keys,
    read_output,
    scrape,
    sdk_exporters,
    send_all,
    span_keys,
    wait_until,
)
from tests.collector.exporters.fake_servers import FakeGrpcServer
from tests.support.collector import allocate_ports, collector, downstream_config
from tests.support.dns import Answers, fake_dns
from tests.support.services import free_port

pytestmark = pytest.mark.usefixtures("quiet_sdk_exports")

QUEUE = {
    "tls": {"insecure": True},
    "timeout": "2s",
    "retry_on_failure": {"initial_interval": "50ms", "max_interval": "200ms", "max_elapsed_time": "120s"},
    "sending_queue": {"num_consumers": 2, "drain_timeout": "5s"},
}  # fmt: skip


def front_config(
    resolver: dict[str, Any],
    metrics_key: str | None = None,
    telemetry: dict[str, Any] | None = None,
) -> str:
    exporters: dict[str, Any] = {
        "loadbalancing": {"resolver": resolver, "protocol": {"otlp": QUEUE}},
    }
    pipelines: dict[str, Any] = {"traces": {"receivers": ["otlp"], "exporters": ["loadbalancing"]}}
    if metrics_key:
        exporters["loadbalancing/metrics"] = {**exporters["loadbalancing"], "routing_key": metrics_key}  # fmt: skip
        pipelines["metrics"] = {"receivers": ["otlp"], "exporters": ["loadbalancing/metrics"]}
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:{grpc}"}}}},
        "exporters": exporters,
        "service": {"pipelines": pipelines, **({"telemetry": telemetry} if telemetry else {})},
    }
    return yaml.safe_dump(config, sort_keys=False)


def trace_owners(per_backend: Sequence[Sequence[Payload]]) -> dict[bytes, set[int]]:
    """For each trace ID, the backends that received spans of it."""
    owners: dict[bytes, set[int]] = {}
    for index, payloads in enumerate(per_backend):
        for payload in payloads:
            for rs in getattr(payload, "resource_spans", ()):
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        owners.setdefault(span.trace_id, set()).add(index)
    return owners


def test_sdk_traces_through_a_front_collector_land_whole_on_three_backends(
    tmp_path: Path,
) -> None:
    outs = [tmp_path / f"backend-{n}.jsonl" for n in range(3)]
    ports = [allocate_ports("grpc") for _ in outs]
    hostnames = [f"127.0.0.1:{p['grpc']}" for p in ports]
    front_ports = allocate_ports("grpc")
    spans, metrics = make_spans(600), make_metrics()
    with (
        collector(downstream_config(["traces", "metrics"], outs[0]), tmp_path, ports=ports[0], name="b0"),
        collector(downstream_config(["traces", "metrics"], outs[1]), tmp_path, ports=ports[1], name="b1"),
        collector(downstream_config(["traces", "metrics"], outs[2]), tmp_path, ports=ports[2], name="b2"),
        collector(
            front_config({"static": {"hostnames": hostnames}}, metrics_key="streamID"),
            tmp_path,
            ports=front_ports,
            name="front",
        ) as front,
    ):  # fmt: skip
        send_all("grpc", f"127.0.0.1:{front_ports['grpc']}", spans, metrics, batch=100)
        expected = expected_spans(spans)
        wait_until(
            lambda: span_keys([p for out in outs for p in read_output(out)]) == expected,
            what="every span on the backends",
        )
        wait_until(
            lambda: (
                point_keys([p for out in outs for p in read_output(out)])
                == expected_points(metrics)
            ),
            what="every data point on the backends",
        )
        per_backend = [read_output(out) for out in outs]
        owners = trace_owners(per_backend)
        assert len(owners) == 600
        assert all(len(where) == 1 for where in owners.values()), "a trace split over backends"
        shares = Counter(next(iter(where)) for where in owners.values())
        assert all(shares[n] > 100 for n in range(3)), shares
        # Each series (resource, scope, metric, attributes) arrived at one backend only.
        for n, payloads in enumerate(per_backend):
            others = [p for m, ps in enumerate(per_backend) if m != n for p in ps]
            assert not set(point_keys(payloads)) & set(point_keys(others))
        text = scrape(front.ports["metrics"])
        assert metric_total(text, "otelcol_loadbalancer_num_backends", resolver="static") == 3
        assert metric_total(text, "otelcol_exporter_sent_spans_total") == 1200
        assert (
            metric_total(text, "otelcol_loadbalancer_backend_outcome_total", success="false") == 0
        )
        assert front.stop() == 0


# Backends coming and going under load ----------------------------------------------------
class Sender:
    """The SDK's gRPC span exporter in a thread, sending batches of new traces until told
    to stop, and remembering which spans the collector acknowledged."""

    def __init__(self, target: str) -> None:
        self.exporter = sdk_exporters("grpc", target, timeout=30)["traces"]
        self.acked: list[ReadableSpan] = []
        self.batches = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            spans = make_spans(50, tag=f"b{self.batches}-")
            self.batches += 1
            if self.exporter.export(list(spans)).name == "SUCCESS":
                self.acked.extend(spans)

    def wait_for_batches(self, more: int) -> None:
        target = self.batches + more
        wait_until(lambda: self.batches >= target, timeout=60, what=f"{more} more batches")


def test_a_backend_restarted_under_load_loses_nothing_and_traces_stay_whole(
    tmp_path: Path,
) -> None:
    """Static backends: while one is down its share waits in the front's queue (the ring
    does not change), so after its restart every trace is still whole on one backend."""
    outs = [tmp_path / f"backend-{n}.jsonl" for n in range(3)]
    ports = [allocate_ports("grpc") for _ in outs]
    front_ports = allocate_ports("grpc")
    hostnames = [f"127.0.0.1:{p['grpc']}" for p in ports]
    with ExitStack() as stack:
        backends = [
            stack.enter_context(
                collector(downstream_config(["traces"], out), tmp_path, ports=p, name=f"b{n}")
            )
            for n, (out, p) in enumerate(zip(outs, ports, strict=True))
        ]
        stack.enter_context(
            collector(front_config({"static": {"hostnames": hostnames}}), tmp_path,
                      ports=front_ports, name="front")
        )  # fmt: skip
        sender = Sender(f"127.0.0.1:{front_ports['grpc']}")
        sender.thread.start()
        try:
            sender.wait_for_batches(5)
            assert backends[1].stop() == 0
            sender.wait_for_batches(10)
            stack.enter_context(
                collector(downstream_config(["traces"], outs[1]), tmp_path, ports=ports[1],
                          name="b1-again")
            )  # fmt: skip
            sender.wait_for_batches(5)
        finally:
            sender.stop.set()
            sender.thread.join(60)
        expected = set(expected_spans(sender.acked))
        wait_until(
            lambda: expected <= set(span_keys([p for out in outs for p in read_output(out)])),
            timeout=60,
            what="every acknowledged span on a backend",
        )
    owners = trace_owners([read_output(out) for out in outs])
    assert all(len(where) == 1 for where in owners.values()), "a trace split over backends"
    assert {next(iter(w)) for w in owners.values()} == {0, 1, 2}


def test_backends_replaced_under_load_lose_nothing_and_new_ones_get_traffic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: Answers = fake_dns(monkeypatch)
    port, front_port = free_port(), free_port()
    servers = {n: FakeGrpcServer(host=f"127.0.0.{n}", port=port) for n in (2, 3, 4, 5)}
    text = front_config(
        {"dns": {"hostname": "backends.test", "port": port, "interval": "100ms"}},
        telemetry={"metrics": {"address": f"127.0.0.1:{free_port()}"}},
    )
    config = parse_config(text.replace("{grpc}", str(front_port)), Registry.discover(), {})

    async def scenario() -> None:
        for n in (2, 3, 4):
            await servers[n].start()
        answers.append(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
        service = Service(config)
        await service.start()
        sender = Sender(f"127.0.0.1:{front_port}")
        sender.thread.start()
        try:
            await asyncio.to_thread(sender.wait_for_batches, 10)
            await servers[4].stop()  # dies under load: its queue holds acknowledged spans
            await asyncio.to_thread(sender.wait_for_batches, 10)
            answers.append(["127.0.0.2", "127.0.0.3"])  # the name drops it
            await asyncio.to_thread(sender.wait_for_batches, 10)
            await servers[5].start()  # a replacement appears
            answers.append(["127.0.0.2", "127.0.0.3", "127.0.0.5"])
            await asyncio.to_thread(sender.wait_for_batches, 10)
            await servers[4].start()  # and the old one comes back
            answers.append(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"])
            await asyncio.to_thread(sender.wait_for_batches, 10)
        finally:
            sender.stop.set()
            await asyncio.to_thread(sender.thread.join, 60)
        expected = expected_spans(sender.acked)
        await asyncio.to_thread(
            wait_until,
            lambda: set(expected) <= set(span_keys([p for s in servers.values() for p in s.received])),
            60,
            "every acknowledged span on a backend",
        )  # fmt: skip
        assert servers[5].received, "the new backend got no traffic"
        # Once the backends are stable again, every trace lands whole on one of all four.
        for server in servers.values():
            server.received.clear()
        last = make_spans(400, tag="last-")
        await asyncio.to_thread(send_all, "grpc", f"127.0.0.1:{front_port}", last, None, (), 100)
        await asyncio.to_thread(
            wait_until,
            lambda: span_keys([p for s in servers.values() for p in s.received]) == expected_spans(last),
            30,
            "the last traces",
        )  # fmt: skip
        owners = trace_owners([s.received for s in servers.values()])
        assert all(len(where) == 1 for where in owners.values()), "a trace split over backends"
        assert {next(iter(w)) for w in owners.values()} == {0, 1, 2, 3}
        telemetry = service.telemetry
        assert telemetry.total("otelcol_exporter_send_failed_spans_total") == 0
        assert telemetry.value("otelcol_loadbalancer_num_backend_updates_total", {"resolver": "dns"}) == 4  # fmt: skip
        await service.shutdown()
        for server in servers.values():
            await server.stop()

    asyncio.run(scenario())
