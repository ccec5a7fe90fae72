"""``promtool test rules`` files proving each generated alert fires on a burn and stays
quiet when healthy.

For every SLO: synthetic spanmetrics series matching the budget's selector, burning
the error budget at 7x (page and ticket fire, with their exact labels and
annotations), 2x (ticket only) and 0.5x (no alert); each also checks that the
short-window error ratio is what was fed in. For every percentile objective: a histogram whose spans
all sit above the objective (the alert fires) and one whose spans sit in the first
bucket (quiet).
"""

from __future__ import annotations

import math
from typing import Any

from otelkit.budgets.model import BudgetsFile, Match
from otelkit.budgets.rules import (
    SPAN_KIND_LABELS,
    STATUS_ERROR,
    ObjectiveRules,
    SloRules,
    _seconds,
    alert_annotations,
    alert_labels,
    label_name,
    objective_alert,
    objective_rules,
    prom_duration,
    slo_rules,
)

_TOTAL = 100_000  # spans per test interval


def example_labels(match: Match) -> dict[str, str]:
    """A label set the budget's selector matches (globs filled in)."""

    def sample(patterns: tuple[str, ...]) -> str:
        return patterns[0].replace("*", "").replace("?", "x")

    labels: dict[str, str] = {"service_name": sample(match.service) if match.service else "svc"}
    labels["span_kind"] = SPAN_KIND_LABELS[match.span_kind or "server"]
    labels["span_name"] = sample(match.span_name) if match.span_name else "GET /"
    for label, patterns in (
        ("http_route", match.route),
        ("db_system", match.db_system),
        ("peer_service", match.peer_service),
    ):
        if patterns:
            labels[label] = sample(patterns)
    for key, patterns in match.attributes.items():
        labels[label_name(key)] = sample(patterns)
    return labels


def _series(name: str, labels: dict[str, str]) -> str:
    body = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{body}}}"


def _counter(step: int, samples: int) -> str:
    return f"0+{step}x{samples}"


def _slo_series(s: SloRules, bad: int, samples: int) -> list[dict[str, str]]:
    labels = example_labels(s.budget.match)
    if s.latency_threshold is not None:
        good_labels = {**labels, "le": f"{s.latency_threshold:g}"}
        return [
            {
                "series": _series(f"{s.duration_metric}_count", labels),
                "values": _counter(_TOTAL, samples),
            },
            {
                "series": _series(f"{s.duration_metric}_bucket", good_labels),
                "values": _counter(_TOTAL - bad, samples),
            },
        ]
    calls = f"{s.metric_prefix}_calls_total"
    ok = {**labels, "status_code": "STATUS_CODE_UNSET", "http_response_status_code": "200"}
    if s.slo.bad.error:
        failed = {**labels, "status_code": STATUS_ERROR, "http_response_status_code": "200"}
    else:
        failed = {**labels, "status_code": "STATUS_CODE_UNSET", "http_response_status_code": "503"}
    return [
        {"series": _series(calls, ok), "values": _counter(_TOTAL - bad, samples)},
        {"series": _series(calls, failed), "values": _counter(bad, samples)},
    ]


# Steady burn rates and what they must trigger: 7x is over the 6h/30m page pair (6x)
# and both ticket pairs; 2x is over the 3d/6h ticket pair (1x) only; 0.5x is healthy.
_BURNS = (
    (7.0, "pages and tickets"),
    (2.0, "tickets but does not page"),
    (0.5, "stays quiet"),
)


def _slo_tests(s: SloRules) -> list[dict[str, Any]]:
    # A steady ratio reads the same over every window once two samples are in it, so
    # evaluating at the shortest long window proves the thresholds without replaying
    # days of samples.
    windows = [_seconds(w) for w in s.sli_windows]
    interval = max(1, math.floor(min(windows) / 5))
    until = min(_seconds(w.long) for w in s.windows)
    samples = math.ceil(until / interval) + 5
    eval_time = prom_duration(until)
    budget = s.slo.error_budget
    tests = []
    for burn, outcome in _BURNS:
        bad = round(min(1.0, burn * budget) * _TOTAL)
        expected = [
            {
                "exp_labels": {**alert_labels(s, severity), **s.sloth_labels},
                "exp_annotations": alert_annotations(s, severity),
            }
            for severity in ("page", "ticket")
            if getattr(s.budget.alerting, severity)
            and bad / _TOTAL > min(w.factor for w in s.windows if w.severity == severity) * budget
        ]
        ratio_labels = {**s.sloth_labels, "sloth_window": s.base_window}
        tests.append(
            {
                "name": f"{s.alert_name} {outcome} when {s.sloth_slo} burns its budget {burn:g}x",
                "interval": f"{interval}s",
                "input_series": _slo_series(s, bad, samples),
                "alert_rule_test": [
                    {"eval_time": eval_time, "alertname": s.alert_name, "exp_alerts": expected}
                ],
                "promql_expr_test": [
                    {
                        "expr": f"round(slo:sli_error:ratio_rate{s.base_window}{s.id_selector} * {_TOTAL})",
                        "eval_time": eval_time,
                        "exp_samples": [{"labels": _series("", ratio_labels), "value": bad}],
                    }
                ],
            }
        )
    return tests


def _histogram(o: ObjectiveRules, buckets: list[float], slow: bool, samples: int):  # type: ignore[no-untyped-def]
    """Bucket series with every span in the first bucket above the objective (slow) or
    in the first bucket (healthy); None when the buckets cannot show it."""
    if slow:
        above = [i for i in range(1, len(buckets)) if buckets[i - 1] >= o.threshold]
        if not above:
            return None
        home = above[0]
    else:
        if buckets[0] > o.threshold:
            return None
        home = 0
    labels = example_labels(o.budget.match)
    out = []
    for i, le in [*enumerate(buckets), (len(buckets), math.inf)]:
        count = _TOTAL if i >= home else 0
        le_text = "+Inf" if le == math.inf else f"{le:g}"
        out.append(
            {
                "series": _series(f"{o.duration_metric}_bucket", {**labels, "le": le_text}),
                "values": _counter(count, samples),
            }
        )
    return out


def _objective_tests(o: ObjectiveRules, buckets: list[float]) -> list[dict[str, Any]]:
    if not o.budget.alerting.ticket:
        return []
    window = _seconds(o.window)
    interval = max(1, math.floor(window / 5))
    samples = math.ceil(window * 3 / interval) + 5
    eval_time = prom_duration(window * 3)
    alert = objective_alert(o)
    tests = []
    slow = _histogram(o, buckets, True, samples)
    if slow is not None:
        exp = [{"exp_labels": alert["labels"], "exp_annotations": alert["annotations"]}]
        tests.append(
            {
                "name": f"{o.alert_name} fires when {o.objective.label} is over {o.objective.below_ms:g} ms",
                "interval": f"{interval}s",
                "input_series": slow,
                "alert_rule_test": [
                    {"eval_time": eval_time, "alertname": o.alert_name, "exp_alerts": exp}
                ],
            }
        )
    healthy = _histogram(o, buckets, False, samples)
    if healthy is not None:
        tests.append(
            {
                "name": f"{o.alert_name} stays quiet when {o.objective.label} is within its objective",
                "interval": f"{interval}s",
                "input_series": healthy,
                "alert_rule_test": [
                    {"eval_time": eval_time, "alertname": o.alert_name, "exp_alerts": []}
                ],
            }
        )
    return tests


def generate_tests(budgets: BudgetsFile, rules_file: str) -> dict[str, Any]:
    buckets = sorted(budgets.alerting.histogram_buckets_ms)
    if budgets.alerting.duration_unit == "seconds":
        buckets = [b / 1000.0 for b in buckets]
    tests: list[dict[str, Any]] = []
    for s in slo_rules(budgets):
        tests.extend(_slo_tests(s))
    objectives = objective_rules(budgets)
    for o in objectives:
        tests.extend(_objective_tests(o, buckets))
    interval = budgets.alerting.rule_interval
    return {
        "rule_files": [rules_file],
        "evaluation_interval": prom_duration(interval) if interval else "1m",
        "tests": tests,
    }
