"""The collector's own metrics, under the names operators already graph.

One registry per running collector (so tests can run several in one process). Counters
follow the upstream names: ``otelcol_receiver_accepted_spans``,
``otelcol_exporter_sent_log_records`` ... prometheus_client exposes counters with the
``_total`` suffix, as the upstream collector's Prometheus endpoint does today.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from otelkit.collector.pdata.signals import Signal

M = TypeVar("M", Counter, Gauge)

# Upstream's endpoint has no ``*_created`` series; they double what operators scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Why the exporter helper drops data (the ``send_failed`` reason label).
SEND_FAILED_REASONS = ("permanent", "retry_exhausted", "shutdown", "invalid")


class SelfTelemetry:
    """Counters and gauges every component reports into."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._histograms: dict[str, Histogram] = {}
        self._creating = threading.Lock()

    # Receivers -----------------------------------------------------------------------
    def receiver_accepted(self, receiver: str, transport: str, signal: Signal, n: int) -> None:
        self._counter("receiver", "accepted", signal, ("receiver", "transport")).labels(
            receiver, transport
        ).inc(n)

    def receiver_refused(self, receiver: str, transport: str, signal: Signal, n: int) -> None:
        self._counter("receiver", "refused", signal, ("receiver", "transport")).labels(
            receiver, transport
        ).inc(n)

    def receiver_unauthenticated(self, receiver: str, transport: str) -> None:
        """A request refused for missing or wrong credentials, before its body was read."""
        self._unauthenticated().labels(receiver, transport).inc()

    def receiver_authenticating(self, receiver: str, transport: str) -> None:
        """A transport that checks credentials counts refusals from zero (one without
        authentication refuses none, so it has no series)."""
        self._unauthenticated().labels(receiver, transport)

    def _unauthenticated(self) -> Counter:
        return self.counter(
            "otelkit_receiver_unauthenticated_requests",
            "Requests refused for missing or wrong credentials (receiver)",
            ("receiver", "transport"),
        )

    def receiver_created(
        self, receiver: str, transports: Iterable[str], signals: Iterable[Signal]
    ) -> None:
        """Refusal counters start at zero, so dashboards show 0 and ``rate()`` sees the
        first burst of refusals."""
        for signal in signals:
            counter = self._counter("receiver", "refused", signal, ("receiver", "transport"))
            for transport in transports:
                counter.labels(receiver, transport)

    # Processors ----------------------------------------------------------------------
    def processor_dropped(self, processor: str, signal: Signal, n: int) -> None:
        self._counter("processor", "dropped", signal, ("processor",)).labels(processor).inc(n)

    def processor_refused(self, processor: str, signal: Signal, n: int) -> None:
        self._counter("processor", "refused", signal, ("processor",)).labels(processor).inc(n)

    def processor_created(self, processor: str, signal: Signal) -> None:
        """Refusal and drop counters start at zero for each signal the processor is in a
        pipeline of."""
        for outcome in ("refused", "dropped"):
            self._counter("processor", outcome, signal, ("processor",)).labels(processor)

    # Exporters -----------------------------------------------------------------------
    def exporter_sent(self, exporter: str, signal: Signal, n: int) -> None:
        self._counter("exporter", "sent", signal, ("exporter",)).labels(exporter).inc(n)

    def exporter_send_failed(self, exporter: str, signal: Signal, n: int, reason: str) -> None:
        self._counter("exporter", "send_failed", signal, ("exporter", "reason")).labels(
            exporter, reason
        ).inc(n)

    def exporter_created(self, exporter: str, signals: Iterable[Signal]) -> None:
        """Send-failure counters start at zero for every reason the exporter helper has,
        and enqueue-failure counters for every signal."""
        for signal in signals:
            counter = self._counter("exporter", "send_failed", signal, ("exporter", "reason"))
            for reason in SEND_FAILED_REASONS:
                counter.labels(exporter, reason)
            self._counter("exporter", "enqueue_failed", signal, ("exporter",)).labels(exporter)

    def exporter_enqueue_failed(self, exporter: str, signal: Signal, n: int) -> None:
        self._counter("exporter", "enqueue_failed", signal, ("exporter",)).labels(exporter).inc(n)

    def exporter_queue(self, exporter: str, signal: Signal, size: int, capacity: int) -> None:
        labels = ("exporter", "data_type")
        self.gauge("otelcol_exporter_queue_size", "Batches waiting in the sending queue", labels)
        self._gauges["otelcol_exporter_queue_size"].labels(exporter, signal.value).set(size)
        self.gauge("otelcol_exporter_queue_capacity", "Capacity of the sending queue", labels)
        self._gauges["otelcol_exporter_queue_capacity"].labels(exporter, signal.value).set(capacity)

    # For any component ---------------------------------------------------------------
    def counter(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Counter:
        """Get or create a counter (``name`` without ``_total``)."""
        return self._get_or_create(self._counters, Counter, name, documentation, labels)

    def gauge(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Gauge:
        return self._get_or_create(self._gauges, Gauge, name, documentation, labels)

    def histogram(
        self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> Histogram:
        """Get or create a histogram (``buckets``: the upper bounds, ``+Inf`` added)."""
        metric = self._histograms.get(name)
        if metric is None:
            with self._creating:
                metric = self._histograms.get(name)
                if metric is None:
                    metric = Histogram(name, documentation, labels, registry=self.registry,
                                       buckets=buckets)  # fmt: skip
                    self._histograms[name] = metric
        return metric

    def _get_or_create(
        self, known: dict[str, M], kind: type[M], name: str, doc: str, labels: tuple[str, ...]
    ) -> M:
        metric = known.get(name)
        if metric is None:
            with self._creating:  # components may count from worker threads
                metric = known.get(name)
                if metric is None:
                    metric = known[name] = kind(name, doc, labels, registry=self.registry)
        return metric

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of a sample, 0 when absent (for tests and the status page)."""
        return self.registry.get_sample_value(name, labels or {}) or 0.0

    def total(self, name: str, **match: str) -> float:
        """Sum of every sample called ``name`` whose labels include ``match``."""
        found = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in match.items()):
                    found += sample.value
        return found

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def _counter(self, kind: str, what: str, signal: Signal, labels: tuple[str, ...]) -> Counter:
        name = f"otelcol_{kind}_{what}_{signal.item_name}"
        doc = f"Number of {signal.item_name.replace('_', ' ')} {what.replace('_', ' ')} ({kind})"
        return self.counter(name, doc, labels)
