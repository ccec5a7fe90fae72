"""``perf_issues`` processor: finds N+1 queries, slow queries and wasteful HTTP patterns.

Whole-trace: it holds batches ``wait`` seconds (see
:class:`~otelkit.budgets.tracebuffer.TraceBuffer`) so the spans of one request are
judged together, then marks every offending span with ``otelkit.perf_issue.type`` and
``otelkit.perf_issue.fingerprint``, records the finding as an ``otelkit.finding`` span
event on the parent span (the ``findings`` connector turns it into a log record, the
Sentry exporter into an issue), and counts ``otelkit_perf_issues_total{type,service}``.
Thresholds default to Sentry's (:mod:`otelkit.budgets.detectors`).

Batches are held as their bytes (a parsed batch takes about 3.5 times them; they are
not compressed, as most are read again when judged two seconds later). What
:func:`could_find` reads (client spans' durations) is tallied per trace as spans
arrive, so only the few traces that could hold a finding are parsed when judged; the
spans they mark are written back into their batch's bytes, and each batch is parsed
once when released.
"""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span
from pydantic import Field

from otelkit.budgets.detectors import DetectorsConfig, TraceTallies, could_find, detect
from otelkit.budgets.findings import PERF_ISSUE_FINGERPRINT, PERF_ISSUE_TYPE, attach, set_attribute
from otelkit.budgets.tracebuffer import (
    ROOT_SPAN,
    BufferedTraceProcessor,
    HeldTrace,
    ScopeScan,
    SpanReader,
    read_trace_ids,
    read_wire,
)
from otelkit.collector.pdata.signals import Signal
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Consumer,
    CreateSettings,
    processor_factory,
)
from otelkit.collector.runtime.types import Duration


class PerfIssuesConfig(ComponentConfig):
    wait: Duration = Field(
        2.0, ge=0, description="how long to gather a trace's spans; 0: per batch"
    )
    max_wait: Duration = Field(
        10.0,
        ge=0,
        description=(
            "how long after its first span a trace still running at `wait` (its root "
            "span not arrived, a span's parent in its own process not arrived) waits for "
            "its root; 0: judged at `wait`"
        ),
    )
    num_traces: int = Field(50_000, ge=1, description="traces held at most")
    detectors: DetectorsConfig = DetectorsConfig()


class PerfIssuesProcessor(BufferedTraceProcessor):
    def __init__(self, settings: CreateSettings, config: PerfIssuesConfig, next_consumer: Consumer):
        self._packs = config.wait > 0  # with no wait nothing is held: nothing to pack
        super().__init__(settings, next_consumer, config.wait, config.num_traces, config.max_wait)
        self._detectors = config.detectors
        self._issues = settings.telemetry.counter(
            "otelkit_perf_issues", "Performance issues found in traces", ("type", "service")
        )
        self._types = [
            name for name, detector in config.detectors if getattr(detector, "enabled", False)
        ]
        self._services_seen: set[str] = set()
        # Traces judged at max_wait without their root: a max_wait too short for the
        # apps' export delays, or roots that never reach this collector.
        self._waited_out = settings.telemetry.counter(
            "otelkit_perf_issues_traces_waited_out",
            "Traces judged at max_wait, still waiting for a parent in their own process",
            ("processor",),
        ).labels(str(settings.id))
        self._waited_out_counted = 0
        # What could_find reads of each held trace's client spans, summed per trace.
        self._tallies = TraceTallies(config.detectors)

    def held_bytes(self) -> int:
        return super().held_bytes() + len(self._tallies) * TALLY_BYTES

    def packs_spans(self) -> bool:
        return self._packs

    def compresses_held_bytes(self) -> bool:
        return False

    def scan(self, scope_spans: ScopeSpans) -> ScopeScan:
        scan = read_wire(scope_spans) if self._packs else read_trace_ids(scope_spans)
        roots = self._tallies.add(scan.trace_ids, scope_spans.spans)
        scan.flags.update(dict.fromkeys(roots, ROOT_SPAN))  # the scan has no flags of its own
        return scan

    def judge(self, traces: list[HeldTrace]) -> None:
        reader = self.reader or SpanReader()
        self._count_from_zero(traces)
        waited_out = self.buffer.waited_out - self._waited_out_counted
        if waited_out:
            self._waited_out.inc(waited_out)
            self._waited_out_counted += waited_out
        for trace in traces:
            if not self._tallies.might_find(trace.trace_id):
                continue
            spans = reader.spans(trace)
            if not could_find(spans, self._detectors):
                continue
            for detection in detect(spans, trace.services, self._detectors):
                finding = detection.finding
                for span in detection.offenders:
                    _mark(span, finding.type, finding.fingerprint)
                attach(detection.anchor, finding, detection.anchor.end_time_unix_nano)
                reader.write_back([*detection.offenders, detection.anchor])
                self._issues.labels(finding.type, detection.service).inc()

    def _count_from_zero(self, traces: list[HeldTrace]) -> None:
        """The first time a service is seen, its counters start at zero for every
        detector, so dashboards show 0 and ``rate()`` sees its first issues (before any
        of its issues is counted: the same order as trace by trace)."""
        services = dict.fromkeys(run[3] for trace in traces for run in trace.runs)
        for service in services:
            if service in self._services_seen or len(self._services_seen) >= _MAX_SERVICES:
                continue
            self._services_seen.add(service)
            for type_ in self._types:
                self._issues.labels(type_, service)


# A held trace's tally of its client spans (its list and its slot), measured with tracemalloc
# on benchmarks/collector_throughput.py's app traffic.
TALLY_BYTES = 170
_MAX_SERVICES = 10_000  # past this many services, counters appear on first increment


def _mark(span: Span, type_: str, fingerprint: str) -> None:
    set_attribute(span, PERF_ISSUE_TYPE, type_)
    set_attribute(span, PERF_ISSUE_FINGERPRINT, fingerprint)


def _create(
    settings: CreateSettings, config: PerfIssuesConfig, signal: Signal, next_consumer: Consumer
) -> PerfIssuesProcessor:
    return PerfIssuesProcessor(settings, config, next_consumer)


factory = processor_factory("perf_issues", PerfIssuesConfig, _create, frozenset({Signal.TRACES}))
