"""Spans queued for export as their OTLP bytes, not as span objects.

The SDK's batch processor keeps each ended span in its queue until the export thread
sends it, up to a second later: every span's objects (the span, its attributes, events,
links, context and status) outlive the request, are promoted to the garbage collector's
older generations and die there, and it is those collections, over the whole heap of the
application, that cost the most (``benchmarks/app_overhead.py --gc`` shows the collector's
share of the app's CPU). :class:`LeanSpanProcessor` is the SDK's batch
processor (its queue, export thread, flush on shutdown and fork handling) that encodes a
span when it ends, with the same encoder the export would use, and queues only the
bytes, so the span's objects are freed with the request. Other processors still get the
span itself.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otelkit.presets.encoder import SpanEncoder, takes_encoded_items

_logger = logging.getLogger(__name__)


class LeanSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, queueing each sampled span encoded when its exporter is
    one of otelkit's lean span exporters (whose encoder sends encoded items as they are),
    and the span itself otherwise."""

    def __init__(self, exporter: Any, **options: Any) -> None:
        super().__init__(exporter, **options)
        # Its caches are shared by the request threads: each step is one dict operation,
        # and a race at worst encodes a field twice.
        self._encoder = SpanEncoder()
        self._exporter = exporter
        self._encodes: bool | None = None  # asked of the exporter at the first span

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        if self._encodes is None:
            self._encodes = takes_encoded_items(self._exporter)
        if not self._encodes:
            self._batch_processor.emit(span)
            return
        item: Any
        try:
            item = self._encoder.encoded(span)
        except Exception:  # never into the application's call: the export encodes it
            _logger.debug("span %s queued unencoded", span.name, exc_info=True)
            item = span
        self._batch_processor.emit(item)
