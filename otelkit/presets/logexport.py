"""Log records exported without the SDK's per-record objects.

The SDK turns each record into an API ``LogRecord``, then a ``ReadWriteLogRecord`` (its
attributes copied and cleaned into ``BoundedAttributes``), then a ``ReadableLogRecord``
(the record copied again) for the batch queue, and the exporter thread walks it once more
to encode it. For the records otelkit's logging handler makes, that is most of the cost of
exporting a log line. :class:`LeanLogRecordProcessor` is the SDK's batch processor (its
queue, export thread, flush on shutdown and fork handling) that also takes a record
already encoded to its OTLP bytes, written once from the values the handler read; other
records (from any other code that logs through the provider) take the SDK's path.

The handler uses this path only when the record would come out of the SDK unchanged: the
provider has this processor and no other, attribute values are plain (``str``, ``bool``,
64-bit ``int``, ``float``) and within the attribute limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk._logs import Logger as SdkLogger
from opentelemetry.sdk._logs import LogRecordLimits
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

from otelkit.presets.encoder import (
    LogEncoder,
    encoded_item,
    plain_attributes,
    takes_encoded_items,
)


class LeanLogRecordProcessor(BatchLogRecordProcessor):
    """The SDK's batch processor, taking encoded records too when its exporter is one of
    otelkit's lean log exporters (whose encoder sends them as they are)."""

    def __init__(self, exporter: Any, **options: Any) -> None:
        super().__init__(exporter, **options)
        self.encoder = LogEncoder()
        self._exporter = exporter
        self._encodes: bool | None = None  # asked of the exporter at the first record
        limits = LogRecordLimits()
        self._max_attributes: int | None = (
            limits.max_log_record_attributes
            if limits.max_log_record_attribute_length is None
            else -1  # values may be cut: the SDK's cleaning is needed
        )

    def accepts(self, attributes: Mapping[str, Any]) -> bool:
        """Whether the record may be queued encoded: the exporter sends encoded records
        and the SDK would keep these attributes as they are."""
        if self._encodes is None:
            self._encodes = takes_encoded_items(self._exporter)
        if not self._encodes:
            return False
        limit = self._max_attributes
        if limit is not None and len(attributes) > limit:
            return False
        return plain_attributes(attributes)

    def emit_encoded(self, logger: SdkLogger, encoded: bytes) -> None:
        """Queue a record encoded by :meth:`LogEncoder.log_record` for ``logger``'s scope."""
        item: Any = encoded_item(logger.resource, logger.instrumentation_scope, encoded)
        self._batch_processor.emit(item)


def lean_processor(provider: Any) -> LeanLogRecordProcessor | None:
    """The provider's processor when it is a lean one and the only one: a processor the
    application added sees every record as the SDK makes it."""
    multi = getattr(provider, "_multi_log_record_processor", None)
    processors: tuple[Any, ...] = getattr(multi, "_log_record_processors", ())
    if len(processors) == 1 and type(processors[0]) is LeanLogRecordProcessor:
        processor: LeanLogRecordProcessor = processors[0]
        return processor
    return None
