"""Prometheus recording and alerting rules generated from the budgets file.

The rules query the spanmetrics connector's series
(``traces_span_metrics_calls_total``, ``traces_span_metrics_duration_milliseconds_*``)
and follow the multi-window, multi-burn-rate pattern of the SRE workbook, with the
recording rule names Sloth users know (``slo:sli_error:ratio_rate5m`` ... labelled
``sloth_id``, ``sloth_service``, ``sloth_slo``, ``sloth_window``).

Each SLO gets one alert name with two severities (``page``, ``ticket``). Its expression
ORs the window pairs and drops ``sloth_window`` with ``max without``, so an alert's
labels (its identity in Alertmanager) do not change with the window pair that fired.

Windows are those of a 30-day period, scaled to the SLO's period and never shorter
than ``alerting.min_window`` (so a test budget with a 1h period and 4s minimum window
alerts within seconds).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from otelkit.budgets.matcher import glob_regex
from otelkit.budgets.model import Budget, BudgetsFile, Match, Objective, Slo

REFERENCE_PERIOD = 30 * 86400.0
# (severity, long window, short window, burn rate) for a 30-day period.
BURN_RATE_WINDOWS = (
    ("page", 3600.0, 300.0, 14.4),
    ("page", 6 * 3600.0, 1800.0, 6.0),
    ("ticket", 86400.0, 2 * 3600.0, 3.0),
    ("ticket", 3 * 86400.0, 6 * 3600.0, 1.0),
)
SPAN_KIND_LABELS = {
    "server": "SPAN_KIND_SERVER",
    "client": "SPAN_KIND_CLIENT",
    "internal": "SPAN_KIND_INTERNAL",
    "producer": "SPAN_KIND_PRODUCER",
    "consumer": "SPAN_KIND_CONSUMER",
}
STATUS_ERROR = "STATUS_CODE_ERROR"
# Bad and all events per second of an SLO over its base window (suffix: the window).
EVENTS_BAD = "slo:sli_error:rate"
EVENTS_ALL = "slo:sli_total:rate"


def prom_duration(seconds: float) -> str:
    """Whole seconds in Prometheus notation, in the largest unit that divides them."""
    total = max(1, round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total % size == 0:
            return f"{total // size}{unit}"
    return f"{total}s"


def camel(*names: str) -> str:
    return "".join(part.capitalize() for name in names for part in re.split(r"[-_]", name))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label_matcher(label: str, patterns: Iterable[str]) -> str:
    values = list(patterns)
    if len(values) == 1 and not any(c in values[0] for c in "*?"):
        return f"{label}={_quote(values[0])}"
    return f"{label}=~{_quote('|'.join(glob_regex(v) for v in values))}"


def label_name(attribute: str) -> str:
    """An attribute key as the Prometheus label the spanmetrics connector writes."""
    name = re.sub(r"[^a-zA-Z0-9_]", "_", attribute)
    return f"key_{name}" if name[0].isdigit() else name


def selector_matchers(match: Match) -> list[str]:
    """Label matchers for the spans a budget covers (attributes must be spanmetrics
    dimensions to appear as labels)."""
    out = []
    if match.service:
        out.append(_label_matcher("service_name", match.service))
    if match.span_kind:
        out.append(f'span_kind="{SPAN_KIND_LABELS[match.span_kind]}"')
    for label, patterns in (
        ("span_name", match.span_name),
        ("http_route", match.route),
        ("db_system", match.db_system),
        ("peer_service", match.peer_service),
    ):
        if patterns:
            out.append(_label_matcher(label, patterns))
    for key, patterns in match.attributes.items():
        out.append(_label_matcher(label_name(key), patterns))
    return out


def _selector(matchers: Iterable[str]) -> str:
    return "{" + ", ".join(matchers) + "}"


def _le_matcher(value: float) -> str:
    return f'le=~"{value:g}(\\\\.0)?"'


@dataclass(frozen=True)
class BurnWindow:
    severity: str
    long: str
    short: str
    factor: float


@dataclass(frozen=True)
class SloRules:
    """Everything the rules and their tests need to know about one SLO."""

    budget_name: str
    slo_name: str
    budget: Budget
    slo: Slo
    service: str
    period: str
    windows: tuple[BurnWindow, ...]
    runbook_url: str
    metric_prefix: str
    duration_metric: str
    latency_threshold: float | None  # in the histogram's unit

    @property
    def sloth_slo(self) -> str:
        return f"{self.budget_name}-{self.slo_name}"

    @property
    def sloth_id(self) -> str:
        return f"{self.service}-{self.sloth_slo}"

    @property
    def alert_name(self) -> str:
        return camel(self.budget_name, self.slo_name) + "ErrorBudgetBurn"

    @property
    def sloth_labels(self) -> dict[str, str]:
        return {
            "sloth_id": self.sloth_id,
            "sloth_service": self.service,
            "sloth_slo": self.sloth_slo,
        }

    @property
    def id_selector(self) -> str:
        return _selector(f"{k}={_quote(v)}" for k, v in self.sloth_labels.items())

    @property
    def sli_windows(self) -> list[str]:
        seen: dict[str, float] = {}
        for w in self.windows:
            seen[w.short] = seen[w.long] = 0
        return sorted(seen, key=_seconds)

    @property
    def base_window(self) -> str:
        return self.sli_windows[0]

    def event_rates(self, window: str) -> tuple[str, str]:
        """Bad and all events per second over ``window``: both 0, never absent, when
        no span came (an idle window has no errors and no requests)."""
        base = selector_matchers(self.budget.match)
        calls = f"{self.metric_prefix}_calls_total"
        bad = self.slo.bad
        if self.latency_threshold is not None:
            count = f"{self.duration_metric}_count{_selector(base)}"
            good = f"{self.duration_metric}_bucket{_selector([*base, _le_matcher(self.latency_threshold)])}"
            total = f"(sum(rate({count}[{window}])) or vector(0))"
            return f"({total} - (sum(rate({good}[{window}])) or vector(0)))", total
        terms = []
        if bad.error:
            sel = _selector([*base, f'status_code="{STATUS_ERROR}"'])
            terms.append(f"(sum(rate({calls}{sel}[{window}])) or vector(0))")
        if bad.http_5xx:
            extra = [f'status_code!="{STATUS_ERROR}"'] if bad.error else []
            sel = _selector([*base, *extra, 'http_response_status_code=~"5.."'])
            terms.append(f"(sum(rate({calls}{sel}[{window}])) or vector(0))")
        total = f"(sum(rate({calls}{_selector(base)}[{window}])) or vector(0))"
        return "(" + " + ".join(terms) + ")", total

    def error_ratio(self, window: str) -> str:
        return ratio_of_events(*self.event_rates(window))


def ratio_of_events(bad: str, total: str) -> str:
    """``bad / total``, and 0 where ``total`` is 0: an idle window has no errors, where
    plain division gives NaN, which ``sum_over_time`` would carry for a whole period."""
    return f"(\n  {bad}\n/\n  ({total} > 0)\n)\nor\n({total} == 0)\n"


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(duration[:-1]) * units[duration[-1]]


def burn_windows(period: float, min_window: float) -> tuple[BurnWindow, ...]:
    scale = period / REFERENCE_PERIOD
    return tuple(
        BurnWindow(
            sev,
            prom_duration(max(long * scale, min_window)),
            prom_duration(max(short * scale, min_window)),
            factor,
        )
        for sev, long, short, factor in BURN_RATE_WINDOWS
    )


def slo_rules(budgets: BudgetsFile) -> list[SloRules]:
    out = []
    policy = budgets.alerting
    duration_metric = f"{policy.metric_prefix}_duration_{policy.duration_unit}"
    for budget_name, budget in budgets.budgets.items():
        service = _service_label(budget_name, budget)
        for slo_name, slo in budget.slos.items():
            period = budgets.period_of(slo)
            threshold = slo.bad.latency_over_ms
            if threshold is not None and policy.duration_unit == "seconds":
                threshold /= 1000.0
            out.append(
                SloRules(
                    budget_name,
                    slo_name,
                    budget,
                    slo,
                    service,
                    prom_duration(period),
                    burn_windows(period, policy.min_window),
                    budgets.runbook_url(budget.alerting.runbook_url or "error-budget-burn.md"),
                    policy.metric_prefix,
                    duration_metric,
                    threshold,
                )
            )
    return out


def _service_label(budget_name: str, budget: Budget) -> str:
    services = budget.match.service or ()
    if len(services) == 1 and not any(c in services[0] for c in "*?"):
        return services[0]
    return budget_name


class _Literal(str):
    """A string YAML writes as a ``|`` block."""


def _represent_literal(dumper: yaml.SafeDumper, data: _Literal) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, _represent_literal)


def dump(document: dict[str, Any], header: str) -> str:
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120)
    return header + body


def _group(name: str, rules: list[dict[str, Any]], interval: float | None) -> dict[str, Any]:
    group: dict[str, Any] = {"name": name}
    if interval:
        group["interval"] = prom_duration(interval)
    group["rules"] = rules
    return group


def sli_recordings(s: SloRules) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {
            "record": f"slo:sli_error:ratio_rate{w}",
            "expr": _Literal(s.error_ratio(w)),
            "labels": {**s.sloth_labels, "sloth_window": w},
        }
        for w in s.sli_windows
    ]
    # The period's ratio weighs each base window by its requests: the bad and all events
    # per second of every base window, summed over the period. An idle window adds
    # nothing to either (averaging the base ratios would count it as a perfect window).
    bad, total = s.event_rates(s.base_window)
    for name, expr in ((EVENTS_BAD, bad), (EVENTS_ALL, total)):
        rules.append(
            {
                "record": f"{name}{s.base_window}",
                "expr": _Literal(expr + "\n"),
                "labels": {**s.sloth_labels, "sloth_window": s.base_window},
            }
        )
    over_period = [
        f"sum_over_time({name}{s.base_window}{s.id_selector}[{s.period}])"
        for name in (EVENTS_BAD, EVENTS_ALL)
    ]
    rules.append(
        {
            "record": f"slo:sli_error:ratio_rate{s.period}",
            "expr": _Literal(ratio_of_events(*over_period)),
            "labels": {**s.sloth_labels, "sloth_window": s.period},
        }
    )
    return rules


def meta_recordings(s: SloRules) -> list[dict[str, Any]]:
    labels = s.sloth_labels
    ids = s.id_selector
    on = "on (sloth_id, sloth_slo, sloth_service) group_left"
    objective = s.slo.objective / 100.0
    return [
        {"record": "slo:objective:ratio", "expr": f"vector({objective:g})", "labels": labels},
        {
            "record": "slo:error_budget:ratio",
            "expr": f"vector(1 - {objective:g})",
            "labels": labels,
        },
        {
            "record": "slo:time_period:days",
            "expr": f"vector({_seconds(s.period) / 86400:g})",
            "labels": labels,
        },
        {
            "record": "slo:current_burn_rate:ratio",
            "expr": f"slo:sli_error:ratio_rate{s.base_window}{ids}\n/ {on}\nslo:error_budget:ratio{ids}\n",
            "labels": labels,
        },
        {
            "record": "slo:period_burn_rate:ratio",
            "expr": f"slo:sli_error:ratio_rate{s.period}{ids}\n/ {on}\nslo:error_budget:ratio{ids}\n",
            "labels": labels,
        },
        {
            "record": "slo:period_error_budget_remaining:ratio",
            "expr": f"1 - slo:period_burn_rate:ratio{ids}",
            "labels": labels,
        },
        {
            "record": "sloth_slo_info",
            "expr": "vector(1)",
            "labels": {
                **labels,
                "sloth_objective": f"{s.slo.objective:g}",
                "sloth_mode": "otelkit",
            },
        },
    ]


def alert_annotations(s: SloRules, severity: str) -> dict[str, str]:
    speed = "fast" if severity == "page" else "steadily"
    what = "slow spans" if s.latency_threshold is not None else "errors"
    return {
        "summary": f"{s.sloth_slo}: the error budget is burning {speed} ({severity})",
        "description": (
            f"{what} of budget {s.budget_name} are spending the {s.slo.objective:g}% SLO's "
            f"{s.period} error budget too fast. {s.budget.description}".strip()
        ),
        "runbook_url": s.runbook_url,
    }


def alert_labels(s: SloRules, severity: str) -> dict[str, str]:
    return {
        **s.budget.alerting.labels,
        "severity": severity,
        "sloth_severity": severity,
        "budget": s.budget_name,
        "slo": s.slo_name,
    }


def burn_alerts(s: SloRules) -> list[dict[str, Any]]:
    rules = []
    budget = s.slo.error_budget
    for severity in ("page", "ticket"):
        if not getattr(s.budget.alerting, severity):
            continue
        clauses = []
        for w in (w for w in s.windows if w.severity == severity):
            threshold = f"({w.factor:g} * {budget:g})"
            clauses.append(
                "(\n"
                f"  max(slo:sli_error:ratio_rate{w.short}{s.id_selector} > {threshold}) without (sloth_window)\n"
                "  and\n"
                f"  max(slo:sli_error:ratio_rate{w.long}{s.id_selector} > {threshold}) without (sloth_window)\n"
                ")"
            )
        rules.append(
            {
                "alert": s.alert_name,
                "expr": _Literal("\nor\n".join(clauses) + "\n"),
                "labels": alert_labels(s, severity),
                "annotations": alert_annotations(s, severity),
            }
        )
    return rules


@dataclass(frozen=True)
class ObjectiveRules:
    budget_name: str
    budget: Budget
    objective: Objective
    window: str
    duration_metric: str
    threshold: float  # in the histogram's unit
    runbook_url: str

    @property
    def alert_name(self) -> str:
        return camel(self.budget_name) + "Latency" + camel(self.objective.label.replace(".", "_"))

    @property
    def record(self) -> str:
        return f"budget:{self.duration_metric.removeprefix('traces_')}:{self.objective.label.replace('.', '_')}"

    def expr(self) -> str:
        sel = _selector(selector_matchers(self.budget.match))
        return (
            f"histogram_quantile({self.objective.quantile:g}, sum by (le) "
            f"(rate({self.duration_metric}_bucket{sel}[{self.window}])))"
        )

    def labels(self) -> dict[str, str]:
        return {
            "budget": self.budget_name,
            "objective": self.objective.label,
            "window": self.window,
        }


def objective_rules(budgets: BudgetsFile) -> list[ObjectiveRules]:
    policy = budgets.alerting
    duration_metric = f"{policy.metric_prefix}_duration_{policy.duration_unit}"
    scale = 1000.0 if policy.duration_unit == "seconds" else 1.0
    out = []
    for name, budget in budgets.budgets.items():
        runbook = budgets.runbook_url(budget.alerting.runbook_url or "latency-objective.md")
        for objective in budget.objectives:
            window = prom_duration(max(budgets.window_of(objective), policy.min_window))
            out.append(
                ObjectiveRules(
                    name,
                    budget,
                    objective,
                    window,
                    duration_metric,
                    objective.below_ms / scale,
                    runbook,
                )
            )
    return out


def objective_alert(o: ObjectiveRules) -> dict[str, Any]:
    sel = _selector(f"{k}={_quote(v)}" for k, v in o.labels().items())
    return {
        "alert": o.alert_name,
        "expr": f"{o.record}{sel} > {o.threshold:g}",
        # One slow evaluation is not an incident: the percentile over the window must stay
        # over the objective for one more window (a burst is in the window for less).
        "for": o.window,
        "labels": {**o.budget.alerting.labels, "severity": "ticket", **o.labels()},
        "annotations": {
            "summary": f"{o.budget_name}: {o.objective.label} over its {o.objective.below_ms:g} ms objective",
            "description": (
                f"The {o.objective.label} duration of budget {o.budget_name}'s spans over "
                f"{o.window} is above {o.objective.below_ms:g} ms. {o.budget.description}".strip()
            ),
            "runbook_url": o.runbook_url,
        },
    }


HEADER = (
    "# Generated by `otelkit budgets rules` from the budgets file: do not edit by hand.\n"
    "# Recording rule names follow Sloth (slo:sli_error:ratio_rate<window>, ...).\n"
)


def generate_rules(budgets: BudgetsFile) -> dict[str, Any]:
    interval = budgets.alerting.rule_interval
    groups = []
    for s in slo_rules(budgets):
        groups.append(
            _group(f"otelkit-slo-sli-recordings-{s.sloth_id}", sli_recordings(s), interval)
        )
        groups.append(
            _group(f"otelkit-slo-meta-recordings-{s.sloth_id}", meta_recordings(s), interval)
        )
        alerts = burn_alerts(s)
        if alerts:
            groups.append(_group(f"otelkit-slo-alerts-{s.sloth_id}", alerts, interval))
    objectives = objective_rules(budgets)
    if objectives:
        rules: list[dict[str, Any]] = []
        for o in objectives:
            rules.append({"record": o.record, "expr": o.expr(), "labels": o.labels()})
            if o.budget.alerting.ticket:
                rules.append(objective_alert(o))
        groups.append(_group("otelkit-budget-objectives", rules, interval))
    return {"groups": groups}


def rules_text(budgets: BudgetsFile) -> str:
    return dump(generate_rules(budgets), HEADER)
