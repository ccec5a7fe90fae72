"""Run an ``otlp`` receiver in-process, on its own event loop thread, with recording consumers.

The SDK exporters and HTTP clients the tests drive are blocking, so the receiver runs
on a background loop and the test body stays plain synchronous code.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.receivers.otlp import OtlpReceiver, OtlpReceiverConfig, factory
from otelkit.collector.runtime.component import Component, ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.graph import Graph
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry

T = TypeVar("T")
LOOPBACK = {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}}


@dataclass
class RecordingConsumer:
    """Keeps every payload; raises the queued errors first, one per call; waits for
    ``hold`` (when set) before answering, to keep requests in flight."""

    payloads: list[Payload] = field(default_factory=list)
    refuse_next: deque[Exception] = field(default_factory=deque)
    calls: int = 0
    hold: threading.Event | None = None

    async def consume(self, payload: Payload) -> None:
        self.calls += 1
        if self.hold is not None:
            await asyncio.to_thread(self.hold.wait, 20)
        if self.refuse_next:
            raise self.refuse_next.popleft()
        self.payloads.append(payload)

    def items(self) -> int:
        return sum(count_items(p) for p in self.payloads)


@dataclass
class RunningReceiver:
    receiver: OtlpReceiver
    telemetry: SelfTelemetry
    consumers: dict[Signal, RecordingConsumer]
    loop: asyncio.AbstractEventLoop

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.receiver.grpc_port}"

    @property
    def http_target(self) -> str:
        return f"127.0.0.1:{self.receiver.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_target}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def accepted(self, signal: Signal, transport: str) -> float:
        return self.telemetry.total(
            f"otelcol_receiver_accepted_{signal.item_name}_total", transport=transport
        )

    def refused(self, signal: Signal, transport: str) -> float:
        return self.telemetry.total(
            f"otelcol_receiver_refused_{signal.item_name}_total", transport=transport
        )


def build(protocols: dict[str, Any] | None = None) -> OtlpReceiverConfig:
    return OtlpReceiverConfig.model_validate({"protocols": protocols or LOOPBACK})


@contextmanager
def running_receiver(
    protocols: dict[str, Any] | None = None,
    signals: Iterable[Signal] = tuple(Signal),
    extensions: dict[str, Component] | None = None,
) -> Iterator[RunningReceiver]:
    """``extensions`` (by ID, e.g. auth extensions) start before the receiver and stop after."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="receiver-loop", daemon=True)
    thread.start()
    telemetry = SelfTelemetry()
    consumers = {signal: RecordingConsumer() for signal in signals}
    settings = CreateSettings(ComponentID("otlp"), Kind.RECEIVER, telemetry)
    receiver = factory.create(settings, build(protocols), consumers)
    running = RunningReceiver(receiver, telemetry, consumers, loop)
    graph = Graph()
    graph.extensions = {ComponentID.parse(k): v for k, v in (extensions or {}).items()}
    host = ServiceHost(graph)
    try:
        for extension in graph.extensions.values():
            running.run(extension.start(host))
        running.run(receiver.start(host))
        yield running
    finally:
        try:
            running.run(receiver.shutdown())
            for extension in graph.extensions.values():
                running.run(extension.shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
