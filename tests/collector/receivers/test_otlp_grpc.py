"""OTLP/gRPC: status codes, retry information, limits and unserved signals."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.errors import OverloadedError, PermanentError, RetryableError
from tests.collector.builders import logs, metrics, traces
from tests.collector.receivers.harness import RunningReceiver, running_receiver

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture(scope="module")
def receiver() -> Iterator[RunningReceiver]:
    protocols = {"grpc": {"endpoint": "127.0.0.1:0", "max_recv_msg_size_mib": 1}}
    with running_receiver(protocols) as running:
        yield running


@pytest.fixture(scope="module")
def channel(receiver: RunningReceiver) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(receiver.grpc_target) as ch:
        yield ch


@pytest.fixture(autouse=True)
def _fresh_consumers(receiver: RunningReceiver) -> None:
    for consumer in receiver.consumers.values():
        consumer.payloads.clear()
        consumer.refuse_next.clear()
        consumer.calls = 0


def export_traces(channel: grpc.Channel, request: ExportTraceServiceRequest, **kw: object) -> None:
    trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=10, **kw)


def assert_still_serving(channel: grpc.Channel, receiver: RunningReceiver) -> None:
    before = receiver.consumers[Signal.TRACES].items()
    export_traces(channel, traces([[2]]))
    assert receiver.consumers[Signal.TRACES].items() == before + 2


def test_every_signal_is_delivered_whole_and_counted(
    channel: grpc.Channel, receiver: RunningReceiver
) -> None:
    sent = traces([[3, 4], [5]])
    export_traces(channel, sent, compression=grpc.Compression.Gzip)
    metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(metrics([2, 3]), timeout=10)
    logs_service_pb2_grpc.LogsServiceStub(channel).Export(logs([[6]]), timeout=10)

    assert receiver.consumers[Signal.TRACES].payloads == [sent]
    assert receiver.consumers[Signal.METRICS].items() == 5
    assert receiver.consumers[Signal.LOGS].items() == 6
    assert receiver.accepted(Signal.TRACES, "grpc") >= 12
    assert receiver.accepted(Signal.LOGS, "grpc") >= 6


def test_malformed_message_is_invalid_argument_naming_the_parse_failure(
    channel: grpc.Channel, receiver: RunningReceiver
) -> None:
    raw = channel.unary_unary(TRACE_EXPORT)
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\x0a\xff\xff\xff\x0f", timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ExportTraceServiceRequest" in caught.value.details()
    assert receiver.consumers[Signal.TRACES].calls == 0
    assert_still_serving(channel, receiver)


def test_message_over_the_size_limit_is_resource_exhausted(
    channel: grpc.Channel, receiver: RunningReceiver
) -> None:
    big = traces([[1]])
    big.resource_spans[0].scope_spans[0].spans[0].name = "x" * (1024 * 1024 + 10)
    with pytest.raises(grpc.RpcError) as caught:
        export_traces(channel, big)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in caught.value.details()
    assert receiver.consumers[Signal.TRACES].calls == 0
    assert_still_serving(channel, receiver)


@pytest.mark.parametrize(
    ("error", "code", "delay"),
    [
        (
            RetryableError("sending queue is full", retry_after=2.5),
            grpc.StatusCode.UNAVAILABLE,
            2.5,
        ),
        (RetryableError("downstream is down"), grpc.StatusCode.UNAVAILABLE, 1.0),
        (OverloadedError("memory limit reached"), grpc.StatusCode.RESOURCE_EXHAUSTED, 1.0),
        (PermanentError("no such tenant"), grpc.StatusCode.INVALID_ARGUMENT, None),
    ],
)
def test_pipeline_refusals_map_to_status_codes_with_retry_info(
    channel: grpc.Channel,
    receiver: RunningReceiver,
    error: Exception,
    code: grpc.StatusCode,
    delay: float | None,
) -> None:
    receiver.consumers[Signal.TRACES].refuse_next.append(error)
    refused_before = receiver.refused(Signal.TRACES, "grpc")

    with pytest.raises(grpc.RpcError) as caught:
        export_traces(channel, traces([[4, 5]]))

    assert caught.value.code() is code
    assert str(error) in caught.value.details()
    trailers = dict(caught.value.trailing_metadata())
    status = Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == code.value[0]
    if delay is None:
        assert not status.details
        assert "google.rpc.retryinfo-bin" not in trailers
    else:
        in_details, in_trailer = (
            RetryInfo(),
            RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]),
        )
        assert status.details[0].Unpack(in_details)
        for info in (in_details, in_trailer):
            assert info.retry_delay.ToTimedelta().total_seconds() == delay
    assert receiver.refused(Signal.TRACES, "grpc") - refused_before == 9
    assert_still_serving(channel, receiver)


def test_an_empty_request_succeeds_without_reaching_the_pipeline(
    channel: grpc.Channel, receiver: RunningReceiver
) -> None:
    export_traces(channel, ExportTraceServiceRequest())
    export_traces(channel, traces([[0, 0]]))
    assert receiver.consumers[Signal.TRACES].calls == 0


def test_a_signal_without_a_pipeline_is_unimplemented() -> None:
    protocols = {"grpc": {"endpoint": "127.0.0.1:0"}}
    with (
        running_receiver(protocols, signals=[Signal.LOGS]) as running,
        grpc.insecure_channel(running.grpc_target) as ch,
    ):
        with pytest.raises(grpc.RpcError) as caught:
            export_traces(ch, traces([[1]]))
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
        logs_service_pb2_grpc.LogsServiceStub(ch).Export(logs([[1]]), timeout=10)
        assert running.consumers[Signal.LOGS].items() == 1
