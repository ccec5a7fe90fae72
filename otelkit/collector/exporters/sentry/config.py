"""``exporters.sentry`` settings.

A missing or empty ``dsn`` is allowed (the exporter then stays off with one warning at
start, so a collector config can name Sentry before every environment has a project);
a malformed one is a config error at ``exporters.sentry.dsn``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from sentry_sdk.utils import BadDsn, Dsn

from otelkit.collector.runtime.component import ComponentConfig
from otelkit.collector.runtime.exporterhelper import ExporterHelperConfig, QueueSettings
from otelkit.collector.runtime.scrub import check_patterns
from otelkit.collector.runtime.tls import TLSClientSettings
from otelkit.collector.runtime.types import Duration

Severity = Literal["trace", "debug", "info", "warn", "error", "fatal"]

#: OTel severity number at which each named level starts (spec: logs data model).
SEVERITY_FLOOR: dict[str, int] = {
    "trace": 1,
    "debug": 5,
    "info": 9,
    "warn": 13,
    "error": 17,
    "fatal": 21,
}


class ScrubSettings(ComponentConfig):
    """What is replaced by ``[Filtered]`` before anything leaves the collector."""

    extra_keys: list[str] = Field(
        default_factory=list, description="More attribute/header/query keys to filter."
    )
    extra_patterns: list[str] = Field(
        default_factory=list, description="More regular expressions whose matches are filtered."
    )

    _check_patterns = field_validator("extra_patterns")(check_patterns)


class TransactionSettings(ComponentConfig):
    max_spans: int = Field(
        1000, ge=1, description="Child spans per transaction; the rest are dropped and noted."
    )
    keep_trace_attributes: list[str] = Field(
        default_factory=lambda: ["otelkit.budget.exceeded", "otelkit.perf_issue.type"],
        description="A span with any of these attributes set (not false/empty) keeps its "
        "whole trace regardless of traces_sample_rate.",
    )
    max_buffered_spans: int = Field(
        100_000, ge=1, description="Spans held while waiting for traces to complete."
    )
    incomplete_wait: Duration = Field(
        30.0,
        description="How long a trace whose spans point at parents not yet seen may wait "
        "for them (a slow request's root span is exported after its children).",
    )


class SentryQueueSettings(QueueSettings):
    queue_size: int = Field(
        5000, ge=1, description="Envelopes the queue holds (one per event or transaction)."
    )


class SentryConfig(ExporterHelperConfig):
    """Traces become transactions and error events; logs become error events and log items."""

    dsn: str = Field("", description="Sentry project DSN, usually ${env:SENTRY_DSN}.")
    mode: Literal["envelope", "otlp"] = Field(
        "envelope",
        description="envelope: errors with frames, transactions and logs; "
        "otlp: forward traces and logs to Sentry's OTLP endpoint unchanged (scrubbed).",
    )
    environment: str | None = Field(
        None, description="Default: deployment.environment.name / deployment.environment."
    )
    release: str | None = Field(
        None, description="Default: <service.name>@<service.version>, Sentry's usual form."
    )
    traces_sample_rate: float = Field(1.0, ge=0.0, le=1.0)
    send_default_pii: bool = Field(
        False, description="Send client IP addresses, cookies and user e-mail / name."
    )
    min_event_level: Severity = Field(
        "error", description="Log records at or above this level become Sentry error events."
    )
    findings: bool = Field(
        True,
        description="Budget breaches and performance issues from the findings connector "
        "(log records named otelkit.finding, severity WARN) become Sentry issues, grouped "
        "by their fingerprint, whatever min_event_level says.",
    )
    logs: bool = Field(False, description="Also send log records as Sentry log items.")
    logs_level: Severity = Field("info", description="Lowest level sent as a log item.")
    trace_wait: Duration = Field(
        5.0, description="How long a trace's spans are gathered before its transactions go."
    )
    transactions: TransactionSettings = TransactionSettings()
    scrub: ScrubSettings = ScrubSettings()
    compression: Literal["gzip", "none"] = "gzip"
    tls: TLSClientSettings = Field(
        default_factory=TLSClientSettings,
        description="For a self-hosted Sentry: ca_file, client certificate, ...",
    )
    sending_queue: SentryQueueSettings = SentryQueueSettings()

    @field_validator("dsn")
    @classmethod
    def _valid_dsn(cls, value: str) -> str:
        value = value.strip()
        if value:
            try:
                Dsn(value)
            except BadDsn as exc:
                raise ValueError(
                    f"not a Sentry DSN ({exc}): expected "
                    "https://<public key>@<host>/<numeric project id>, as shown under "
                    "Project Settings > Client Keys (DSN)"
                ) from exc
        return value
