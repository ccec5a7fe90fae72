"""What arrived, read where a user would read it: span metrics from the collector's
Prometheus endpoint, records from the log search API, Sentry from the collector's own
metrics, alerts from Alertmanager's webhook; and which situations were seen end to end."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

SERVICE = "shop-api"
CALLS = "traces_span_metrics_calls"
SERVER = "SPAN_KIND_SERVER"
ERROR = "STATUS_CODE_ERROR"
EXCEPTION_TYPE = "ZeroDivisionError"  # what the shop's invoice route raises


@dataclass(frozen=True)
class Situation:
    key: str
    title: str
    finding: str | None = None  # the otelkit.finding.type whose log record proves it


SITUATIONS = (
    Situation("normal", "normal requests"),
    Situation("exception", "unhandled exception"),
    Situation("n_plus_one", "N+1 query", "n_plus_one_db_queries"),
    Situation("slow_query", "slow query", "slow_db_query"),
    Situation("sequential", "sequential upstream calls", "consecutive_http"),
    Situation("budget_breach", "budget breach"),
)
PAGE = Situation("page", "page alert through Alertmanager")


@dataclass
class Observation:
    calls: Counter[str] = field(default_factory=Counter)  # "GET /route" -> span metrics count
    errors: Counter[str] = field(default_factory=Counter)
    findings: Counter[str] = field(default_factory=Counter)  # finding type -> records
    breaches: Counter[str] = field(default_factory=Counter)  # budget -> breach records
    exception_records: int = 0
    log_records: int = 0
    sentry: Counter[str] = field(default_factory=Counter)  # "category outcome" -> envelopes
    alerts: list[dict[str, Any]] = field(default_factory=list)  # delivered by Alertmanager

    def has(self, situation: Situation) -> bool:
        if situation.key == "normal":
            return any(self.calls[key] for key in self.calls if key.endswith(" /products"))
        if situation.key == "exception":
            return self.exception_records > 0 and any(self.errors.values())
        if situation.key == "budget_breach":
            return sum(self.breaches.values()) > 0
        if situation.key == "page":
            return any(a["labels"].get("severity") == "page" for a in self.alerts)
        return self.findings[situation.finding or ""] > 0


def span_metrics(url: str) -> tuple[Counter[str], Counter[str]]:
    """Server calls and errors of the shop per ``METHOD route``, from ``/metrics``."""
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    text = httpx.get(url, timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name != CALLS:
            continue
        for sample in family.samples:
            labels = sample.labels
            if labels.get("service_name") != SERVICE or labels.get("span_kind") != SERVER:
                continue
            key = f"{labels.get('http_request_method', '')} {labels.get('http_route', '')}"
            calls[key] += int(sample.value)
            if labels.get("status_code") == ERROR:
                errors[key] += int(sample.value)
    return calls, errors


class LogApi:
    """``GET /api/logs`` with the demo's token, for records since the demo started."""

    def __init__(self, url: str, token: str, since: float) -> None:
        self.url = url
        self.headers = {"authorization": f"Bearer {token}"}
        self.since = since

    def records(self, **params: str) -> Iterator[dict[str, Any]]:
        query: dict[str, str] = {"from": f"{self.since:.3f}", "limit": "1000", **params}
        with httpx.Client(timeout=10, headers=self.headers) as client:
            while True:
                page = client.get(self.url, params=query)
                page.raise_for_status()
                body = page.json()
                yield from body["records"]
                if not body["next_cursor"]:
                    return
                query["cursor"] = body["next_cursor"]

    def count(self, **params: str) -> int:
        return sum(1 for _ in self.records(**params))


def sentry_envelopes(telemetry_url: str) -> Counter[str]:
    found: Counter[str] = Counter()
    text = httpx.get(telemetry_url, timeout=5).text
    for family in text_string_to_metric_families(text):
        if family.name == "otelkit_sentry_envelopes":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value:
                    key = f"{sample.labels['category']} {sample.labels['outcome']}"
                    found[key] += int(sample.value)
    return found


def observe(
    metrics_url: str, logs: LogApi, telemetry_url: str, alerts: list[dict[str, Any]]
) -> Observation:
    seen = Observation(alerts=list(alerts))
    seen.calls, seen.errors = span_metrics(metrics_url)
    for record in logs.records(attr="event.name=otelkit.finding"):
        attributes = record.get("attributes", {})
        seen.findings[str(attributes.get("otelkit.finding.type"))] += 1
        if attributes.get("otelkit.finding.kind") == "budget_breach":
            seen.breaches[str(attributes.get("otelkit.budget.name"))] += 1
    seen.exception_records = logs.count(
        service=SERVICE, severity="error", attr=f"exception.type={EXCEPTION_TYPE}"
    )
    seen.log_records = logs.count()
    seen.sentry = sentry_envelopes(telemetry_url)
    return seen


@dataclass
class Timeline:
    """When each situation was first seen, in seconds after the first request."""

    situations: tuple[Situation, ...]
    first_seen: dict[str, float] = field(default_factory=dict)

    def update(self, observation: Observation, started_at: float | None) -> None:
        if started_at is None:
            return
        for situation in self.situations:
            if situation.key not in self.first_seen and observation.has(situation):
                self.first_seen[situation.key] = time.time() - started_at

    @property
    def missing(self) -> list[Situation]:
        return [s for s in self.situations if s.key not in self.first_seen]

    @property
    def all_seen_after(self) -> float | None:
        if self.missing:
            return None
        return max(self.first_seen.values())
