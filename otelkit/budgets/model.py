"""The budgets file: which spans a budget covers, its limits, its SLOs and its alerts.

One YAML file (``collector/budgets.yaml``) drives three things: the ``budget``
processor on live traffic, the generated Prometheus rules, and the CI gate. Errors name
their path in the file (``budgets.checkout.objectives[0]``) and say what would be right.

Percentile objectives accept two spellings people already know::

    objectives: ["p95 < 300ms over 5m", "p(99)<800"]   # k6 style: bare numbers are ms
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from otelkit.collector.runtime.types import Duration, parse_duration

# The spanmetrics connector's default explicit buckets (ms), as upstream.
DEFAULT_BUCKETS_MS = (2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10000, 15000)
SPAN_KINDS = {"internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_OBJECTIVE = re.compile(
    r"^\s*p\(?\s*(?P<pct>\d+(?:\.\d+)?)\s*\)?\s*<\s*(?P<value>\d+(?:\.\d+)?)\s*"
    r"(?P<unit>ns|us|µs|ms|s|m|h)?\s*(?:over\s+(?P<window>\S+))?\s*$",
    re.IGNORECASE,
)
_BAD_LATENCY = re.compile(r"^\s*latency\s*>\s*(?P<value>\S+)\s*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def ms_to_ns(ms: float) -> int:
    """A limit in milliseconds as whole nanoseconds, the unit spans are timed in.

    Limits are compared in integer nanoseconds so a limit such as ``1.005s`` (which is
    1004.9999999999999 ms in floating point) does not put a span of exactly 1005 ms over
    it."""
    return round(ms * 1_000_000)


def over_limit(duration_ns: int, limit_ns: int) -> bool:
    """Whether a span of ``duration_ns`` breaks a per-span limit of ``limit_ns``.

    A span exactly at its limit is within it; only a longer one is over. The live
    ``budget`` processor and ``otelkit budgets check`` both decide with this."""
    return duration_ns > limit_ns


def ms_above(value_ms: float, limit_ms: float) -> str:
    """``value_ms`` (above ``limit_ms``) in whole milliseconds, or with the fewest
    decimals (up to six: a nanosecond) that still show it above the limit: a span of
    1000.4 ms over a 1000 ms budget reads "1000.4 ms", not "1000 ms (max 1000 ms)"."""
    for decimals in range(7):
        text = f"{value_ms:.{decimals}f}"
        if float(text) > limit_ms:
            return text
    return text


def _milliseconds(value: Any) -> float:
    return parse_duration(value) * 1000.0


Milliseconds = Annotated[float, BeforeValidator(_milliseconds)]
StrOrList = Annotated[tuple[str, ...], BeforeValidator(lambda v: (v,) if isinstance(v, str) else v)]


class Match(_Model):
    """Which spans a budget covers. Every given condition must hold; values are globs
    (``*`` any run of characters, ``?`` one) and a list means any of them."""

    service: StrOrList | None = None
    span_kind: Literal["server", "client", "internal", "producer", "consumer"] | None = None
    span_name: StrOrList | None = None
    route: StrOrList | None = Field(None, description="http.route")
    db_system: StrOrList | None = Field(None, description="db.system.name or db.system")
    peer_service: StrOrList | None = Field(None, description="peer.service")
    attributes: dict[str, StrOrList] = Field(default_factory=dict)


class Objective(_Model):
    """``percentile`` of span durations stays below ``below_ms`` over each ``window``."""

    percentile: float = Field(gt=0, lt=100)
    below_ms: float = Field(gt=0)
    window: float | None = Field(None, gt=0, description="seconds; None: the file's default")

    @model_validator(mode="before")
    @classmethod
    def _parse_text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = _OBJECTIVE.match(value)
        if match is None:
            raise ValueError(
                f"{value!r} is not a percentile objective: expected 'p95 < 300ms over 5m' "
                "or k6's 'p(95)<300' (a bare number is milliseconds)"
            )
        unit = match["unit"] or "ms"
        window = parse_duration(match["window"]) if match["window"] else None
        return {
            "percentile": float(match["pct"]),
            "below_ms": _milliseconds(match["value"] + unit),
            "window": window,
        }

    @property
    def quantile(self) -> float:
        return round(self.percentile / 100.0, 12)

    @property
    def label(self) -> str:
        return f"p{self.percentile:g}"


class BadEvents(_Model):
    """What counts as a bad span for an SLO: errors, HTTP 5xx, or latency over T."""

    error: bool = False
    http_5xx: bool = False
    latency_over_ms: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            return value
        parsed: dict[str, Any] = {}
        for item in items:
            if item in ("error", "http_5xx"):
                parsed[item] = True
            elif isinstance(item, str) and (m := _BAD_LATENCY.match(item)):
                parsed["latency_over_ms"] = _milliseconds(m["value"])
            else:
                raise ValueError(
                    f"{item!r} is not a kind of bad event: expected 'error', 'http_5xx' "
                    "or 'latency > 400ms'"
                )
        return parsed

    @model_validator(mode="after")
    def _one_kind(self) -> BadEvents:
        if self.latency_over_ms is not None and (self.error or self.http_5xx):
            raise ValueError("a latency SLO and an error SLO must be separate SLOs")
        if self.latency_over_ms is None and not (self.error or self.http_5xx):
            raise ValueError("say what is bad: 'error', 'http_5xx' or 'latency > 400ms'")
        return self


class Slo(_Model):
    objective: float = Field(gt=0, lt=100, description="percent of good spans, e.g. 99.9")
    period: Duration | None = Field(None, description="None: the file's default period")
    bad: BadEvents

    @property
    def error_budget(self) -> float:
        return round(1.0 - self.objective / 100.0, 10)


class Alerting(_Model):
    page: bool = True
    ticket: bool = True
    runbook_url: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class Budget(_Model):
    description: str = ""
    match: Match = Field(default_factory=Match)
    max: Milliseconds | None = Field(None, gt=0, description="per-span ceiling")
    objectives: tuple[Objective, ...] = ()
    slos: dict[str, Slo] = Field(default_factory=dict)
    alerting: Alerting = Field(default_factory=Alerting)

    @field_validator("slos")
    @classmethod
    def _slo_names(cls, value: dict[str, Slo]) -> dict[str, Slo]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"SLO name {name!r}: use lower-case letters, digits, - and _")
        return value

    @model_validator(mode="after")
    def _has_limit(self) -> Budget:
        if self.max is None and not self.objectives and not self.slos:
            raise ValueError("a budget needs at least one of max, objectives or slos")
        return self

    @property
    def max_ns(self) -> int | None:
        """The ceiling in nanoseconds (see :func:`over_limit`)."""
        return None if self.max is None else ms_to_ns(self.max)

    @property
    def limit_ms(self) -> float | None:
        """The per-span limit marked on spans: the ceiling, else the tightest objective."""
        if self.max is not None:
            return self.max
        return min((o.below_ms for o in self.objectives), default=None)


class Defaults(_Model):
    window: Duration = Field(300.0, gt=0)
    period: Duration = Field(30 * 86400.0, gt=0)
    runbook_base_url: str | None = Field(
        None,
        description="where your team reads docs/runbooks; every runbook link is this plus "
        "the runbook's file name (no default: only you know where that is)",
    )


class AlertingPolicy(_Model):
    """How SLOs become alerts. Windows scale with the period (30d is the reference);
    none is shorter than ``min_window`` (set it to seconds for scaled-down tests)."""

    min_window: Duration = Field(60.0, gt=0)
    rule_interval: Duration | None = Field(None, gt=0, description="rule group interval")
    histogram_buckets_ms: tuple[float, ...] = DEFAULT_BUCKETS_MS
    metric_prefix: str = "traces_span_metrics"
    duration_unit: Literal["milliseconds", "seconds"] = "milliseconds"


class BudgetsFile(_Model):
    defaults: Defaults = Field(default_factory=Defaults)
    alerting: AlertingPolicy = Field(default_factory=AlertingPolicy)
    budgets: dict[str, Budget]

    @field_validator("budgets")
    @classmethod
    def _budget_names(cls, value: dict[str, Budget]) -> dict[str, Budget]:
        if not value:
            raise ValueError("list at least one budget")
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"budget name {name!r}: use lower-case letters, digits, - and _")
        return value

    @model_validator(mode="after")
    def _latency_on_bucket(self) -> BudgetsFile:
        buckets = set(self.alerting.histogram_buckets_ms)
        for name, budget in self.budgets.items():
            for slo_name, slo in budget.slos.items():
                t = slo.bad.latency_over_ms
                if t is not None and t not in buckets:
                    raise ValueError(
                        f"budgets.{name}.slos.{slo_name}.bad: latency threshold {t:g}ms is not a "
                        f"histogram bucket boundary; use one of "
                        f"{', '.join(f'{b:g}ms' for b in sorted(buckets))}"
                    )
        return self

    @model_validator(mode="after")
    def _period_longer_than_windows(self) -> BudgetsFile:
        shortest = round(self.alerting.min_window)
        for name, budget in self.budgets.items():
            for slo_name, slo in budget.slos.items():
                if round(self.period_of(slo)) <= shortest:
                    where = (
                        f"budgets.{name}.slos.{slo_name}.period"
                        if slo.period
                        else ("defaults.period")
                    )
                    raise ValueError(
                        f"{where}: an SLO period must be longer than alerting.min_window "
                        f"({self.alerting.min_window:g}s), the shortest alert window"
                    )
        return self

    def window_of(self, objective: Objective) -> float:
        return objective.window or self.defaults.window

    def period_of(self, slo: Slo) -> float:
        return slo.period or self.defaults.period

    def runbook_url(self, runbook: str) -> str:
        """A runbook's link: an absolute URL as written, a file name (``checkout.md``) under
        ``defaults.runbook_base_url``, or the bare file name when no base is set."""
        base = self.defaults.runbook_base_url
        if "://" in runbook or not base:
            return runbook
        return f"{base.rstrip('/')}/{runbook}"


class BudgetsError(ValueError):
    """The budgets file is missing or invalid; ``problems`` are ``path: message`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{source}:\n" + "\n".join(f"  {p}" for p in problems))


def parse_budgets(data: Any, source: str = "budgets") -> BudgetsFile:
    if not isinstance(data, Mapping):
        raise BudgetsError(source, ["(top level): expected a mapping with a 'budgets' key"])
    try:
        return BudgetsFile.model_validate(data)
    except ValidationError as exc:
        raise BudgetsError(source, [_describe(e) for e in exc.errors()]) from None


def load_budgets(path: str | Path) -> BudgetsFile:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BudgetsError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BudgetsError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_budgets(data, str(path))


def _describe(error: Any) -> str:
    path = ""
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("function-before", "function-after") and not str(part).startswith(
            ("function-", "tagged-union")
        ):
            path += f".{part}" if path else str(part)
    message = str(error["msg"]).removeprefix("Value error, ")
    if not path and message.startswith(("budgets.", "defaults.")):
        return message  # a check across the file names its own path
    return f"{path or '(top level)'}: {message}"
