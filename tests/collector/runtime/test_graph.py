"""Pipelines are wired as upstream: shared receivers and exporters, connectors between."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.config import parse_config
from otelkit.collector.runtime.graph import build_graph
from otelkit.collector.runtime.registry import Registry
from otelkit.collector.runtime.service import Service
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.collector.runtime import fakes

CONFIG = """
receivers: {fake: {}}
processors: {tag/a: {value: first}, tag/b: {value: second}}
connectors: {count: {}}
exporters: {recording/a: {}, recording/b: {}, recording/metrics: {}}
service:
  telemetry: {metrics: {level: none}}
  pipelines:
    traces/a: {receivers: [fake], processors: [tag/a], exporters: [recording/a, count]}
    traces/b: {receivers: [fake], processors: [tag/b], exporters: [recording/b]}
    metrics: {receivers: [count], exporters: [recording/metrics]}
"""


def traces(n: int) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(n):
        scope.spans.add(name=f"span-{i}", trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    return request


@pytest.fixture(autouse=True)
def clean_journal() -> None:
    fakes.JOURNAL.events.clear()
    fakes.JOURNAL.received.clear()
    fakes.FakeReceiver.instances.clear()


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_each_pipeline_gets_its_own_copy_and_connectors_feed_the_next_pipeline() -> None:
    config = parse_config(CONFIG, fakes.registry(), {})

    async def scenario() -> None:
        service = Service(config)
        await service.start()
        [receiver] = fakes.FakeReceiver.instances
        assert set(receiver.consumers) == {Signal.TRACES}
        await receiver.consumers[Signal.TRACES].consume(traces(3))
        await service.shutdown()

    run(scenario())
    received = fakes.JOURNAL.received
    assert [s.name for s in received["recording/a"][0].resource_spans[0].scope_spans[0].spans] == [
        "first"
    ] * 3
    assert [s.name for s in received["recording/b"][0].resource_spans[0].scope_spans[0].spans] == [
        "second"
    ] * 3
    [metrics] = received["recording/metrics"]
    assert isinstance(metrics, ExportMetricsServiceRequest)
    point = metrics.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0]
    assert point.as_int == 3


def test_start_downstream_first_and_stop_upstream_first() -> None:
    config = parse_config(CONFIG, fakes.registry(), {})

    async def scenario() -> None:
        service = Service(config)
        await service.start()
        await service.shutdown()

    run(scenario())
    events = fakes.JOURNAL.events
    starts = [e for e in events if e.startswith("start")]
    stops = [e for e in events if e.startswith("stop")]
    assert starts.index("start exporter/recording/metrics") < starts.index("start connector/count")
    assert starts.index("start connector/count") < starts.index("start processor/tag/a")
    assert starts[-1] == "start receiver/fake"
    assert stops[0] == "stop receiver/fake"
    assert stops.index("stop processor/tag/a") < stops.index("stop connector/count")
    assert stops.index("stop connector/count") < stops.index("stop exporter/recording/metrics")


def test_a_connector_shared_by_two_pipelines_is_one_instance() -> None:
    text = CONFIG.replace("exporters: [recording/b]", "exporters: [recording/b, count]")
    config = parse_config(text, fakes.registry(), {})

    async def scenario() -> None:
        service = Service(config)
        await service.start()
        await fakes.FakeReceiver.instances[0].consumers[Signal.TRACES].consume(traces(2))
        await service.shutdown()

    run(scenario())
    assert fakes.JOURNAL.events.count("start connector/count") == 1
    assert len(fakes.JOURNAL.received["recording/metrics"]) == 2


def test_processors_learn_which_exporters_of_their_pipeline_acknowledge_durably(
    tmp_path: Path,
) -> None:
    config = parse_config(
        f"""
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: 127.0.0.1:0}}}}}}}}
processors: {{batch: {{}}}}
exporters:
  file/disk: {{path: {tmp_path}/a.jsonl, sending_queue: {{storage: {tmp_path}/q}}}}
  file/memory: {{path: {tmp_path}/b.jsonl}}
service:
  pipelines:
    traces: {{receivers: [otlp], processors: [batch], exporters: [file/disk, file/memory]}}
    logs: {{receivers: [otlp], processors: [batch], exporters: [file/memory]}}
""",
        Registry.discover(),
        {},
    )
    graph = build_graph(config, SelfTelemetry())
    batches = {label: c for label, c in graph.ordered if label.startswith("processor/batch")}
    assert batches["processor/batch (traces)"]._acknowledge_after_send  # type: ignore[attr-defined]
    assert not batches["processor/batch (logs)"]._acknowledge_after_send  # type: ignore[attr-defined]


def test_a_fan_out_copies_the_batch_only_for_consumers_that_may_change_it() -> None:
    from otelkit.collector.runtime.graph import Fanout

    class Keep:
        mutates_data = True

        def __init__(self) -> None:
            self.got: list[object] = []

        async def consume(self, payload: object) -> None:
            self.got.append(payload)

    class Read(Keep):
        mutates_data = False

    batch = ExportTraceServiceRequest()
    batch.resource_spans.add().scope_spans.add().spans.add(name="s")
    first, reader, last = Keep(), Read(), Keep()
    asyncio.run(Fanout([first, reader, last]).consume(batch))  # type: ignore[list-item]
    assert first.got[0] is not batch and first.got[0] == batch
    assert reader.got[0] is batch and last.got[0] is batch


def test_a_lone_consumer_that_may_change_the_batch_takes_it_after_the_readers() -> None:
    """The log store beside Sentry without a DSN: no copy, and the readers see the batch
    as it came although the store comes first in the pipeline."""
    from otelkit.collector.runtime.errors import PermanentError, RetryableError
    from otelkit.collector.runtime.graph import Fanout

    seen: list[tuple[str, str]] = []

    class Change:
        mutates_data = True

        def __init__(self) -> None:
            self.got: list[object] = []

        async def consume(self, payload: ExportTraceServiceRequest) -> None:
            self.got.append(payload)
            span = payload.resource_spans[0].scope_spans[0].spans[0]
            seen.append(("change", span.name))
            span.name = "changed"
            raise RetryableError("store down")

    class Read:
        mutates_data = False

        def __init__(self, error: Exception | None = None) -> None:
            self.got: list[object] = []
            self.error = error

        async def consume(self, payload: ExportTraceServiceRequest) -> None:
            self.got.append(payload)
            seen.append(("read", payload.resource_spans[0].scope_spans[0].spans[0].name))
            if self.error is not None:
                raise self.error

    batch = ExportTraceServiceRequest()
    batch.resource_spans.add().scope_spans.add().spans.add(name="s")
    changer, reader, refusing = Change(), Read(), Read(PermanentError("bad"))
    fanout = Fanout([changer, reader, refusing])  # type: ignore[list-item]
    assert fanout.hands_on_unchanged is changer
    with pytest.raises(RetryableError):  # the first consumer's error, as before
        asyncio.run(fanout.consume(batch))  # type: ignore[arg-type]
    assert seen == [("read", "s"), ("read", "s"), ("change", "s")]
    assert changer.got[0] is batch and reader.got[0] is batch and refusing.got[0] is batch
