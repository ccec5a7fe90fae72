"""``prometheusremotewrite``: push metrics to any Prometheus remote-write 1.0 endpoint.

Series are translated exactly as the scrape exporter translates them (one shared
module), encoded as a ``prometheus.WriteRequest``, snappy-compressed (block format)
and POSTed through the shared exporter helper: a 4xx answer is permanent (the batch is
dropped and counted), 429 and 5xx are retried with backoff, honouring ``Retry-After``.

As upstream, delta sums and histograms are not converted (that needs state shared
across collectors); they are dropped and counted with reason ``delta_temporality``.
A point flagged "no recorded value" is sent as Prometheus' stale marker. Upstream's
``remote_write_queue`` and ``wal`` keys are covered by the shared ``sending_queue``
(with ``storage`` for persistence).
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import cramjam
import httpx
from pydantic import Field, field_validator

from otelkit.collector.exporters.prometheus.exporter import ResourceToTelemetry
from otelkit.collector.exporters.prometheus.translation import (
    Exemplar,
    Family,
    HistogramPoint,
    NumberPoint,
    Rejected,
    SummaryPoint,
    Translated,
    TranslationOptions,
    go_float,
    translate,
)
from otelkit.collector.exporters.prometheusremotewrite import prompb
from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.runtime.auth import AuthSettings, httpx_auth
from otelkit.collector.runtime.component import (
    ComponentConfig,
    CreateSettings,
    Host,
    exporter_factory,
)
from otelkit.collector.runtime.errors import PermanentError, RetryableError
from otelkit.collector.runtime.exporterhelper import (
    ExporterHelperConfig,
    QueuedExporter,
    QueueSettings,
)
from otelkit.collector.runtime.listeners import Destination
from otelkit.collector.runtime.scrub import redact_url
from otelkit.collector.runtime.tls import TLSClientSettings, httpx_options
from otelkit.collector.runtime.types import ByteSize

log = logging.getLogger("otelkit.exporter.prometheusremotewrite")

STALE_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
"""Prometheus' staleness marker: a NaN with a payload Prometheus recognises."""
_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": "otelkit-collector",
}


class TargetInfo(ComponentConfig):
    enabled: bool = True


class RemoteWriteConfig(ExporterHelperConfig):
    sending_queue: QueueSettings = Field(
        QueueSettings(num_consumers=1),
        description="One consumer by default: Prometheus refuses a whole request holding a "
        "sample older than one it already has, which concurrent senders would cause.",
    )
    endpoint: str = Field(
        description="URL of the write endpoint, e.g. http://prom:9090/api/v1/write"
    )
    headers: dict[str, str] = Field(default_factory=dict)
    auth: AuthSettings | None = None
    tls: TLSClientSettings = TLSClientSettings()
    external_labels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to every series."
    )
    namespace: str = ""
    target_info: TargetInfo = TargetInfo()
    resource_to_telemetry_conversion: ResourceToTelemetry = ResourceToTelemetry()
    add_metric_suffixes: bool = True
    send_metadata: bool = False
    max_batch_size_bytes: ByteSize = Field(
        3_000_000, gt=0, description="Upper bound of one uncompressed WriteRequest."
    )

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"{value!r} is not an http(s) URL such as http://host:9090/api/v1/write"
            )
        return value

    def translation_options(self) -> TranslationOptions:
        return TranslationOptions(
            namespace=self.namespace,
            add_metric_suffixes=self.add_metric_suffixes,
            resource_to_telemetry_conversion=self.resource_to_telemetry_conversion.enabled,
            scope_labels=True,
            target_info=self.target_info.enabled,
            extra_labels=dict(self.external_labels),
        )


class RemoteWriteExporter(QueuedExporter):
    def __init__(self, settings: CreateSettings, config: RemoteWriteConfig) -> None:
        super().__init__(settings, config)
        self.config = config
        self._options = config.translation_options()
        self._client: httpx.AsyncClient | None = None

    def destinations(self) -> list[Destination]:
        return [Destination("metrics", f"remote write {redact_url(self.config.endpoint)}")]

    async def start_sending(self, host: Host) -> None:
        config = self.config
        self._client = httpx.AsyncClient(
            headers={**_HEADERS, **config.headers},
            auth=httpx_auth(host, config.auth, self.settings.label, [config.endpoint]),
            **httpx_options(config.tls),
        )

    async def stop_sending(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, payload: Payload) -> int:
        rejected = Rejected()
        records, dropped = _cumulative_only(translate(payload, self._options, rejected))
        for request in build_write_requests(records, self.config.max_batch_size_bytes,
                                            self.config.send_metadata):  # fmt: skip
            await self._post(request.SerializeToString())
        # Counted once the rest is sent: a retried batch would count them again.
        if dropped:
            self.telemetry.exporter_send_failed(self.name, Signal.METRICS, dropped,
                                                "delta_temporality")  # fmt: skip
        if rejected.total:
            self.count_invalid(Signal.METRICS, rejected.total, rejected.summary())
        return dropped + rejected.total

    async def _post(self, body: bytes) -> None:
        assert self._client is not None, "send before start"
        compressed = bytes(cramjam.snappy.compress_raw(body))
        try:
            response = await self._client.post(self.config.endpoint, content=compressed)
        except httpx.TransportError as exc:
            raise RetryableError(f"remote write to {self.config.endpoint} failed: {exc}") from exc
        status = response.status_code
        if status < 300:
            return
        detail = f"remote write answered {status}: {response.text[:300].strip()}"
        if status == 429 or status >= 500:
            raise RetryableError(detail, retry_after=_retry_after(response))
        raise PermanentError(detail)


def _cumulative_only(records: Iterable[Translated]) -> tuple[list[Translated], int]:
    kept: list[Translated] = []
    dropped = 0
    for record in records:
        if record.delta:
            dropped += 1
        else:
            kept.append(record)
    return kept, dropped


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


# Encoding ----------------------------------------------------------------------------
def build_write_requests(
    records: Iterable[Translated], max_bytes: int, send_metadata: bool = False
) -> Iterator[Any]:
    """WriteRequests of at most ``max_bytes`` each; one TimeSeries per distinct label set,
    samples in time order (Prometheus refuses out-of-order samples)."""
    series: dict[tuple[tuple[str, str], ...], Any] = {}
    families: dict[str, Family] = {}
    for record in records:
        families.setdefault(record.family.name, record.family)
        for labels, value, time_ms, exemplar in _samples(record):
            ts = series.get(labels)
            if ts is None:
                ts = series[labels] = prompb.TimeSeries()
                ts.labels.extend(prompb.Label(name=k, value=v) for k, v in labels)
            ts.samples.add(value=value, timestamp=time_ms)
            if exemplar is not None:
                _add_exemplar(ts, exemplar)
    request, size = prompb.WriteRequest(), 0
    if send_metadata:
        for family in families.values():
            request.metadata.add(type=prompb.METRIC_TYPES[family.kind],
                                 metric_family_name=family.name, help=family.help,
                                 unit=family.unit)  # fmt: skip
    for ts in series.values():
        if len(ts.samples) > 1:
            ordered = sorted(ts.samples, key=lambda s: s.timestamp)
            del ts.samples[:]
            ts.samples.extend(ordered)
        ts_size = ts.ByteSize()
        if request.timeseries and size + ts_size > max_bytes:
            yield request
            request, size = prompb.WriteRequest(), 0
        request.timeseries.append(ts)
        size += ts_size
    if request.timeseries or request.metadata:
        yield request


Sample = tuple[tuple[tuple[str, str], ...], float, int, Exemplar | None]


def _samples(record: Translated) -> Iterator[Sample]:
    point, name, base = record.point, record.family.name, record.labels
    time_ms = point.time_ns // 1_000_000

    def labels(metric: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((("__name__", metric), *base, *extra)))

    def value(v: float) -> float:
        return STALE_NAN if record.stale else v

    if isinstance(point, NumberPoint):
        yield labels(name), value(point.value), time_ms, point.exemplar
    elif isinstance(point, HistogramPoint):
        running = 0
        for i, count in enumerate(point.counts):
            running += count
            le = go_float(point.bounds[i]) if i < len(point.bounds) else "+Inf"
            exemplar = point.exemplars[i] if point.exemplars else None
            yield labels(f"{name}_bucket", ("le", le)), value(running), time_ms, exemplar
        yield labels(f"{name}_sum"), value(point.sum), time_ms, None
        yield labels(f"{name}_count"), value(point.count), time_ms, None
    elif isinstance(point, SummaryPoint):
        for quantile, v in point.quantiles:
            yield labels(name, ("quantile", go_float(quantile))), value(v), time_ms, None
        yield labels(f"{name}_sum"), value(point.sum), time_ms, None
        yield labels(f"{name}_count"), value(point.count), time_ms, None


def _add_exemplar(ts: Any, exemplar: Exemplar) -> None:
    if math.isnan(exemplar.value):
        return
    ex = ts.exemplars.add(value=exemplar.value, timestamp=exemplar.time_ns // 1_000_000)
    ex.labels.extend(prompb.Label(name=k, value=v) for k, v in exemplar.labels)


def _create(
    settings: CreateSettings, config: RemoteWriteConfig, signals: frozenset[Signal]
) -> RemoteWriteExporter:
    return RemoteWriteExporter(settings, config)


factory = exporter_factory(
    "prometheusremotewrite", RemoteWriteConfig, _create, frozenset({Signal.METRICS})
)
