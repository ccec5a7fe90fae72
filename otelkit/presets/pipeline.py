"""Providers, exporters and their lifecycle: idempotent set-up, fork safety, bounded shutdown.

Fork safety: exporters are wrapped in per-process proxies that create the real exporter
lazily in the process that exports, so a pre-fork master (``gunicorn --preload``, or
``opentelemetry-instrument gunicorn``) never opens a gRPC channel that a worker would
inherit. After a fork the SDK restarts the batch and metric-reader threads and drops the
parent's queued items; otelkit then gives the child its own ``service.instance.id`` and
``process.pid``, empty metric aggregations and a fresh exporter.

Shutdown runs flush and shutdown on a daemon thread and waits at most the configured
bound (``OTELKIT_SHUTDOWN_TIMEOUT``, 5 s), so a dead collector never hangs an exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    ConsoleLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import Sampler

from otelkit.presets import access
from otelkit.presets import context as request_context
from otelkit.presets.encoder import takes_encoded_items
from otelkit.presets.logexport import LeanLogRecordProcessor
from otelkit.presets.logs import install_record_factory, setup_stdout
from otelkit.presets.resource import build_resource, process_attributes
from otelkit.presets.settings import RATIO_SAMPLERS, Settings
from otelkit.presets.spanexport import LeanSpanProcessor

_logger = logging.getLogger("otelkit.presets")

SEMCONV_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"
DEFAULT_SCHEDULE_DELAY_MS = 1000


@dataclass
class Pipeline:
    settings: Settings
    resource: Resource
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    logger_provider: LoggerProvider | None
    arguments: dict[str, Any]

    @property
    def service_name(self) -> str:
        return str(self.resource.attributes.get("service.name", "unknown_service"))


class _State:
    """The one pipeline of this process (module state without ``global`` statements)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.pipeline: Pipeline | None = None
        self.hooks_registered = False


_state = _State()


def current() -> Pipeline | None:
    return _state.pipeline


def apply_env_defaults() -> None:
    """Stable HTTP semantic conventions: ``http.route`` on server metrics, never the raw
    target (the old conventions put ``http.target`` on the duration histogram)."""
    os.environ.setdefault(SEMCONV_OPT_IN, "http")


def configure(**arguments: Any) -> Pipeline | None:
    """Set up traces, metrics and logs once; later calls return the first set-up.

    See :class:`otelkit.presets.settings.Settings` for the arguments and variables.
    Returns ``None`` when ``OTEL_SDK_DISABLED=true``.
    """
    with _state.lock:
        existing = _state.pipeline
        if existing is not None:
            if arguments and arguments != existing.arguments:
                _logger.warning(
                    "otelkit.configure() was already called; ignoring the new arguments %s",
                    sorted(arguments),
                )
            return existing
        settings = Settings.resolve(**arguments)
        if settings.disabled:
            return None
        apply_env_defaults()
        _state.pipeline = _build(settings, arguments)
        _register_process_hooks()
        return _state.pipeline


def _build(settings: Settings, arguments: dict[str, Any]) -> Pipeline:
    resource = build_resource(settings)
    tracer_provider = _tracer_provider(settings, resource)
    meter_provider = _meter_provider(settings, resource)
    logger_provider = _logger_provider(settings, resource)
    pipeline = Pipeline(
        settings, resource, tracer_provider, meter_provider, logger_provider, dict(arguments)
    )
    request_context.allow_pii(settings.capture_pii)
    access.configure(settings)
    install_record_factory()
    setup_stdout(settings, pipeline.service_name)
    return pipeline


def _tracer_provider(settings: Settings, resource: Resource) -> TracerProvider:
    provider = TracerProvider(
        resource=resource, sampler=make_sampler(settings), shutdown_on_exit=False
    )
    exporter = span_exporter(settings)
    if exporter is not None:
        # otelkit's lean OTLP exporters also send spans encoded as they end.
        lean = settings.lean_encoder and settings.traces_exporter == "otlp"
        batch = LeanSpanProcessor if lean else BatchSpanProcessor
        provider.add_span_processor(
            batch(
                exporter,
                schedule_delay_millis=_env_float(
                    "OTEL_BSP_SCHEDULE_DELAY", DEFAULT_SCHEDULE_DELAY_MS
                ),
                export_timeout_millis=settings.export_timeout_s * 1000,
            )
        )
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        _logger.warning("a tracer provider was already set; otelkit's traces are not exported")
    return provider


def _meter_provider(settings: Settings, resource: Resource) -> MeterProvider:
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, TraceBasedExemplarFilter

    exporter = metric_exporter(settings)
    readers = (
        [
            PeriodicExportingMetricReader(
                exporter, export_timeout_millis=settings.export_timeout_s * 1000
            )
        ]
        if exporter is not None
        else []
    )
    provider = MeterProvider(
        metric_readers=readers,
        resource=resource,
        exemplar_filter=TraceBasedExemplarFilter()
        if settings.exemplars
        else AlwaysOffExemplarFilter(),
        shutdown_on_exit=False,
    )
    metrics.set_meter_provider(provider)
    return provider


def _logger_provider(settings: Settings, resource: Resource) -> LoggerProvider:
    provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    exporter = log_exporter(settings)
    if exporter is not None:
        # otelkit's lean OTLP exporters also send records its logging handler encoded.
        lean = settings.lean_encoder and settings.logs_exporter == "otlp"
        batch = LeanLogRecordProcessor if lean else BatchLogRecordProcessor
        provider.add_log_record_processor(
            batch(
                exporter,
                schedule_delay_millis=_env_float(
                    "OTEL_BLRP_SCHEDULE_DELAY", DEFAULT_SCHEDULE_DELAY_MS
                ),
                export_timeout_millis=settings.export_timeout_s * 1000,
            )
        )
    set_logger_provider(provider)
    return provider


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


def make_sampler(settings: Settings) -> Sampler:
    """The ``OTEL_TRACES_SAMPLER`` names, as samplers that record their threshold in the
    ``ot`` trace-state entry (see :mod:`otelkit.presets.sampling`). The default,
    ``parentbased_always_on``, adds nothing to a root span's trace state: a span without a
    threshold counts once, which is exact when nothing is head-sampled."""
    from opentelemetry.sdk.trace import sampling

    from otelkit.presets.sampling import ParentThresholdSampler, ProbabilitySampler

    name = settings.sampler
    ratio = settings.sampler_arg if settings.sampler_arg is not None else 1.0
    if name not in RATIO_SAMPLERS and os.environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip():
        _logger.warning(
            "OTEL_TRACES_SAMPLER_ARG is ignored: OTEL_TRACES_SAMPLER=%s takes no ratio "
            "(use traceidratio or parentbased_traceidratio to sample by ratio)",
            name,
        )
    independent: dict[str, Sampler] = {
        "always_on": ProbabilitySampler(1.0),  # its own th:0, replacing an upstream threshold
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": ProbabilitySampler(ratio),
    }
    if name in independent:
        return independent[name]
    roots = {**independent, "always_on": sampling.ALWAYS_ON}
    root = roots.get(name.removeprefix("parentbased_"))
    if name.startswith("parentbased_") and root is not None:
        return ParentThresholdSampler(root)
    raise ValueError(f"OTEL_TRACES_SAMPLER={name!r} is not a sampler otelkit knows")


# --- exporters -----------------------------------------------------------------------


def _call_if_alive(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    bound = method()
    if bound is not None:
        bound()


class _PerProcess:
    """Creates the wrapped exporter on first use in each process."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._pid = -1
        self._inner: Any = None
        self._closed = False
        renew = weakref.WeakMethod(self._renew_lock)
        os.register_at_fork(after_in_child=lambda: _call_if_alive(renew))

    def _renew_lock(self) -> None:
        self._lock = threading.Lock()  # the parent may have held it at the fork

    def inner(self) -> Any:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    # Never touch the parent's exporter: its channel belongs to the parent.
                    self._inner = self._factory()
                    self._pid = pid
        return self._inner

    def close(self, timeout_millis: float) -> None:
        self._closed = True
        if self._inner is not None and self._pid == os.getpid():
            try:
                self._inner.shutdown(timeout_millis=timeout_millis)
            except TypeError:
                self._inner.shutdown()


class PerProcessSpanExporter(SpanExporter):
    def __init__(self, factory: Callable[[], SpanExporter]) -> None:
        self._holder = _PerProcess(factory)

    @property
    def takes_encoded_items(self) -> bool:
        return takes_encoded_items(self._holder.inner())

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._holder._closed:
            return SpanExportResult.FAILURE
        result: SpanExportResult = self._holder.inner().export(spans)
        return result

    def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
        self._holder.close(timeout_millis)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class PerProcessLogExporter(LogRecordExporter):
    def __init__(self, factory: Callable[[], LogRecordExporter]) -> None:
        self._holder = _PerProcess(factory)

    @property
    def takes_encoded_items(self) -> bool:
        return takes_encoded_items(self._holder.inner())

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if self._holder._closed:
            return LogRecordExportResult.FAILURE
        result: LogRecordExportResult = self._holder.inner().export(batch)
        return result

    def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
        self._holder.close(timeout_millis)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _metric_exporter_base() -> type[MetricExporter]:
    from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import (
        OTLPMetricExporterMixin,
    )

    class Base(MetricExporter, OTLPMetricExporterMixin):
        pass

    return Base


class PerProcessMetricExporter(_metric_exporter_base()):  # type: ignore[misc]
    """Temporality and aggregation preferences follow the OTLP exporter's variables."""

    def __init__(self, factory: Callable[[], MetricExporter]) -> None:
        self._common_configuration(None, None)
        self._holder = _PerProcess(factory)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self._holder._closed:
            return MetricExportResult.FAILURE
        result: MetricExportResult = self._holder.inner().export(
            metrics_data, timeout_millis=timeout_millis, **kwargs
        )
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **_: Any) -> None:
        self._holder.close(timeout_millis)


def _endpoint_for(settings: Settings, path: str) -> str | None:
    if settings.endpoint is None:
        return None
    if settings.protocol == "grpc":
        return settings.endpoint
    return settings.endpoint.rstrip("/") + path


def _timeout(settings: Settings, signal: str) -> float | None:
    """otelkit's shorter default, unless a per-signal variable says otherwise."""
    if os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT", "").strip():
        return None
    return settings.export_timeout_s


def span_exporter(settings: Settings) -> SpanExporter | None:
    kind = settings.traces_exporter
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    endpoint = _endpoint_for(settings, "/v1/traces")
    timeout = _timeout(settings, "TRACES")

    def create() -> SpanExporter:
        if settings.protocol == "grpc":
            if settings.lean_encoder:
                from otelkit.presets.encoder import lean_grpc_span_exporter

                exporter: SpanExporter = lean_grpc_span_exporter(endpoint=endpoint, timeout=timeout)
                return exporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(endpoint=endpoint, timeout=timeout)
        if settings.lean_encoder:
            from otelkit.presets.encoder import lean_http_span_exporter

            http_exporter: SpanExporter = lean_http_span_exporter(
                endpoint=endpoint, timeout=timeout
            )
            return http_exporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter(endpoint=endpoint, timeout=timeout)

    return PerProcessSpanExporter(create)


def metric_exporter(settings: Settings) -> MetricExporter | None:
    kind = settings.metrics_exporter
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleMetricExporter()
    endpoint = _endpoint_for(settings, "/v1/metrics")
    timeout = _timeout(settings, "METRICS")

    def create() -> MetricExporter:
        if settings.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            return OTLPMetricExporter(endpoint=endpoint, timeout=timeout)
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        return HttpMetricExporter(endpoint=endpoint, timeout=timeout)

    exporter: MetricExporter = PerProcessMetricExporter(create)
    return exporter


def log_exporter(settings: Settings) -> LogRecordExporter | None:
    kind = settings.logs_exporter
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleLogRecordExporter()
    endpoint = _endpoint_for(settings, "/v1/logs")
    timeout = _timeout(settings, "LOGS")

    def create() -> LogRecordExporter:
        if settings.lean_encoder:
            from otelkit.presets.encoder import lean_grpc_log_exporter, lean_http_log_exporter

            lean = lean_grpc_log_exporter if settings.protocol == "grpc" else lean_http_log_exporter
            exporter: LogRecordExporter = lean(endpoint=endpoint, timeout=timeout)
            return exporter
        if settings.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

            return OTLPLogExporter(endpoint=endpoint, timeout=timeout)
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (
            OTLPLogExporter as HttpLogExporter,
        )

        return HttpLogExporter(endpoint=endpoint, timeout=timeout)

    return PerProcessLogExporter(create)


# --- process lifecycle ---------------------------------------------------------------


def _register_process_hooks() -> None:
    if not _state.hooks_registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        atexit.register(shutdown)
        _state.hooks_registered = True


def _after_fork_in_child() -> None:
    """A worker is its own service instance (the SDK's own fork hooks ran before this)."""
    _state.lock = threading.RLock()
    pipeline = _state.pipeline
    if pipeline is None:
        return
    if pipeline.meter_provider is not None:
        _start_metrics_afresh(pipeline.meter_provider)
    update = Resource(process_attributes())
    for provider in (
        pipeline.tracer_provider,
        pipeline.meter_provider,
        pipeline.logger_provider,
    ):
        updater = getattr(provider, "_update_resource", None)
        if updater is not None:
            updater(update)
    pipeline.resource = pipeline.resource.merge(update)


def _start_metrics_afresh(provider: MeterProvider) -> None:
    """A worker's metrics count only its own measurements. The SDK keeps the parent's
    aggregations across a fork, so each worker would report the parent's measurements
    again as its own instance; and a lock that the parent's metric reader thread held at
    the fork would stay held in the worker forever. Fresh storages fix both."""
    consumer = provider._measurement_consumer
    consumer._lock = threading.Lock()
    for reader in list(consumer._reader_storages):
        if isinstance(getattr(reader, "_export_lock", None), type(threading.Lock())):
            reader._export_lock = threading.Lock()  # type: ignore[attr-defined]
        consumer.add_metric_reader(reader)  # replaces the reader's storage with an empty one


def _bounded(pipeline: Pipeline, timeout: float | None, stop: bool) -> bool:
    bound = pipeline.settings.shutdown_timeout_s if timeout is None else timeout
    deadline = time.monotonic() + bound

    def remaining_ms() -> int:
        return max(0, int((deadline - time.monotonic()) * 1000))

    def work() -> None:
        for provider in (pipeline.tracer_provider, pipeline.logger_provider):
            if provider is not None:
                provider.force_flush(remaining_ms())
                if stop:
                    provider.shutdown()
        if pipeline.meter_provider is not None:
            if stop:
                pipeline.meter_provider.shutdown(timeout_millis=remaining_ms())
            else:
                pipeline.meter_provider.force_flush(timeout_millis=remaining_ms())

    worker = threading.Thread(target=work, name="otelkit-shutdown", daemon=True)
    worker.start()
    worker.join(bound)
    if worker.is_alive():
        _logger.warning("otelkit gave up flushing after %.1fs; unsent telemetry dropped", bound)
        return False
    return True


def flush(timeout: float | None = None) -> bool:
    """Export what is buffered, waiting at most ``timeout`` seconds (default: the bound).

    Called when the ASGI server shuts the app down: uvicorn re-raises SIGTERM after its
    graceful shutdown, which ends the process without running ``atexit`` handlers.
    """
    pipeline = _state.pipeline
    return True if pipeline is None else _bounded(pipeline, timeout, stop=False)


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop the providers, waiting at most ``timeout`` seconds (default: the
    configured bound). Returns False if the bound was reached before everything flushed."""
    with _state.lock:
        pipeline, _state.pipeline = _state.pipeline, None
    return True if pipeline is None else _bounded(pipeline, timeout, stop=True)
