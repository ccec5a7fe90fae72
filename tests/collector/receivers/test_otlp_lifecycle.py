"""Configuration, start and shutdown of the ``otlp`` receiver."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from otelkit.collector.pdata.signals import Signal
from otelkit.collector.receivers.otlp import OtlpReceiverConfig
from otelkit.collector.runtime.config import ConfigError, parse_config
from otelkit.collector.runtime.registry import Registry
from tests.collector.builders import traces
from tests.collector.receivers.harness import running_receiver
from tests.support.collector import allocate_ports, collector

PIPELINE = """
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [nop]}
exporters: {nop: {}}
receivers:
"""


def receiver_config(yaml_body: str) -> OtlpReceiverConfig:
    config = parse_config(PIPELINE + yaml_body, Registry.discover(), os.environ)
    [spec] = [s for (kind, _), s in config.components.items() if kind.value == "receiver"]
    assert isinstance(spec.config, OtlpReceiverConfig)
    return spec.config


def config_errors(yaml_body: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(PIPELINE + yaml_body, Registry.discover(), os.environ)
    return str(caught.value)


def test_a_protocol_is_enabled_by_its_key_with_upstream_defaults() -> None:
    grpc_only = receiver_config("  otlp:\n    protocols:\n      grpc:\n")
    assert grpc_only.protocols.http is None
    assert grpc_only.protocols.grpc is not None
    assert grpc_only.protocols.grpc.endpoint == "localhost:4317"
    assert grpc_only.protocols.grpc.max_recv_msg_size_mib == 4

    both = receiver_config(
        "  otlp:\n    protocols:\n      grpc:\n      http:\n"
        "        max_request_body_size: 1MiB\n        logs_url_path: custom/logs\n"
    )
    assert both.protocols.http is not None
    assert both.protocols.http.endpoint == "localhost:4318"
    assert both.protocols.http.max_request_body_size == 1024 * 1024
    assert both.protocols.http.traces_url_path == "/v1/traces"
    assert both.protocols.http.logs_url_path == "/custom/logs"


@pytest.mark.parametrize(
    ("body", "path", "says"),
    [
        ("  otlp:\n", "receivers.otlp ", "must enable at least one protocol"),
        ("  otlp: {protocols: {}}\n", "receivers.otlp ", "must enable at least one protocol"),
        ("  otlp: {protocols: {grpc: {endpoint: nowhere}}}\n", "receivers.otlp.protocols.grpc.endpoint", "not an endpoint"),
        ("  otlp: {protocols: {http: {max_request_body_size: lots}}}\n", "receivers.otlp.protocols.http.max_request_body_size", "'lots' is not a size"),
        ("  otlp: {protocols: {thrift: {}}}\n", "receivers.otlp.protocols.thrift", "unknown key"),
        ("  otlp: {protocols: {grpc: {max_recv_msg_size_mib: 0}}}\n", "receivers.otlp.protocols.grpc.max_recv_msg_size_mib", "greater than 0"),
        ("  otlp: {protocols: {http: {logs_url_path: /v1/traces}}}\n", "receivers.otlp.protocols.http", "must differ"),
    ],
)  # fmt: skip
def test_config_errors_name_their_path(body: str, path: str, says: str) -> None:
    [line] = [line for line in config_errors(body).splitlines() if says in line]
    assert f"error: {path}" in line


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_taken_port_is_a_start_error_naming_the_endpoint(protocol: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"127.0.0.1:{taken.getsockname()[1]}"
        protocols = {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}}
        protocols[protocol] = {"endpoint": endpoint}
        with (
            pytest.raises(OSError, match=f"cannot listen on {endpoint}"),
            running_receiver(protocols),
        ):
            pass


def _wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_shutdown_finishes_in_flight_requests_then_closes_the_ports() -> None:
    with running_receiver() as running:
        consumer = running.consumers[Signal.TRACES]
        consumer.hold = threading.Event()
        body = traces([[3]])
        results: dict[str, object] = {}

        def via_http() -> None:
            response = httpx.post(
                f"{running.http_url}/v1/traces",
                content=body.SerializeToString(),
                headers={"content-type": "application/x-protobuf"},
                timeout=20,
            )
            results["http"] = response.status_code

        def via_grpc() -> None:
            with grpc.insecure_channel(running.grpc_target) as channel:
                trace_service_pb2_grpc.TraceServiceStub(channel).Export(body, timeout=20)
            results["grpc"] = "OK"

        senders = [threading.Thread(target=via_http), threading.Thread(target=via_grpc)]
        for sender in senders:
            sender.start()
        _wait_until(lambda: consumer.calls == 2)
        ports = (running.receiver.grpc_port, running.receiver.http_port)

        stopping = asyncio.run_coroutine_threadsafe(running.receiver.shutdown(), running.loop)
        time.sleep(0.3)
        assert not stopping.done(), "shutdown returned before in-flight requests finished"
        consumer.hold.set()
        stopping.result(15)
        for sender in senders:
            sender.join(15)

        assert results == {"http": 200, "grpc": "OK"}
        assert consumer.items() == 6
        for port in ports:
            with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
                pass


def test_collector_subprocess_counts_what_the_receiver_accepted(tmp_path: Path) -> None:
    config = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:{grpc}"}
      http: {endpoint: "127.0.0.1:{http}"}
exporters: {nop: {}}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [nop]}
    logs: {receivers: [otlp], exporters: [nop]}
"""
    with collector(config, tmp_path, ports=allocate_ports("grpc", "http")) as running:
        body = traces([[4, 3]]).SerializeToString()
        response = httpx.post(
            f"http://127.0.0.1:{running.ports['http']}/v1/traces",
            content=body,
            headers={"content-type": "application/x-protobuf"},
        )
        assert response.status_code == 200
        with grpc.insecure_channel(f"127.0.0.1:{running.ports['grpc']}") as channel:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(traces([[5]]), timeout=10)
        not_served = httpx.post(
            f"http://127.0.0.1:{running.ports['http']}/v1/metrics",
            content=b"",
            headers={"content-type": "application/x-protobuf"},
        )
        assert not_served.status_code == 404
        metrics = httpx.get(f"http://127.0.0.1:{running.ports['metrics']}/metrics").text
        assert running.stop() == 0

    accepted = {
        line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("otelcol_receiver_accepted_spans_total{")
    }
    assert accepted == {
        'receiver="otlp",transport="http"': 7.0,
        'receiver="otlp",transport="grpc"': 5.0,
    }
