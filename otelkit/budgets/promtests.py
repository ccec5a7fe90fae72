"""``promtool test rules`` files proving each generated alert fires on a burn and stays
quiet when healthy.

For every SLO: synthetic spanmetrics series matching the budget's selector, burning
the error budget at 7x (page and ticket fire, with their exact labels and
annotations), 2x (ticket only) and 0.5x (no alert); each also checks that the
short-window error ratio is what was fed in. An idle test then stops the traffic (first
flat counters, then no samples at all) and resumes it: the short-window ratio reads 0
while idle, and the period's ratio and error budget remaining are the request-weighted
figures, not NaN. For every percentile objective: a histogram whose spans all sit above
the objective (the alert fires after its ``for``), one whose spans sit in the first
bucket (quiet), and a healthy one with one burst of slow spans (quiet: a burst is
shorter than the ``for``).

The tests are deterministic for any period: rule groups are evaluated in the order the
rules depend on each other (``group_eval_order``), and every check is made at a rule
evaluation, once the windows it reads hold samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    generate_rules,
    label_name,
    objective_alert,
    objective_rules,
    prom_duration,
    slo_rules,
)

_TOTAL = 100_000  # spans per test interval
_DEFAULT_EVALUATION_SECONDS = 60  # Prometheus's default evaluation_interval


@dataclass(frozen=True)
class _Clock:
    """When promtool evaluates the rules (every ``evaluation`` seconds, from 0) and how
    far apart the input samples are (``step`` seconds)."""

    evaluation: int
    step: int

    def at_or_after(self, seconds: float) -> int:
        """The first rule evaluation at or after ``seconds``."""
        return math.ceil(seconds / self.evaluation) * self.evaluation

    def samples_until(self, seconds: float) -> int:
        """Samples (after the first) that cover ``seconds`` with room to spare."""
        return math.ceil(seconds / self.step) + 5


def _clock(evaluation: int, shortest_window: float) -> _Clock:
    return _Clock(evaluation, max(1, math.floor(shortest_window / 5)))


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


Runs = list[tuple[int | None, int]]  # (increase per step, or None for no samples; steps)


def _counter(runs: Runs) -> str:
    """promtool notation for a counter that starts at 0 and then, run by run, grows by
    the run's increase at each of its steps (a run of None has no samples)."""
    parts, value = ["0"], 0
    for increase, steps in runs:
        if steps <= 0:
            continue
        if increase is None:
            parts.append(f"_x{steps}")
            continue
        parts.append(f"{value + increase}+{increase}x{steps - 1}")
        value += increase * steps
    return " ".join(parts)


def _scaled(runs: Runs, per_step: int) -> Runs:
    """``runs`` of traffic (1 busy, 0 idle, None absent) as increases of ``per_step``."""
    return [(None if on is None else on * per_step, steps) for on, steps in runs]


def _slo_series(s: SloRules, bad: int, traffic: Runs) -> list[dict[str, str]]:
    """The SLO's input series: ``_TOTAL`` spans per busy step, ``bad`` of them bad."""
    labels = example_labels(s.budget.match)
    total, good = _scaled(traffic, _TOTAL), _scaled(traffic, _TOTAL - bad)
    if s.latency_threshold is not None:
        good_labels = {**labels, "le": f"{s.latency_threshold:g}"}
        return [
            {"series": _series(f"{s.duration_metric}_count", labels), "values": _counter(total)},
            {
                "series": _series(f"{s.duration_metric}_bucket", good_labels),
                "values": _counter(good),
            },
        ]
    calls = f"{s.metric_prefix}_calls_total"
    ok = {**labels, "status_code": "STATUS_CODE_UNSET", "http_response_status_code": "200"}
    if s.slo.bad.error:
        failed = {**labels, "status_code": STATUS_ERROR, "http_response_status_code": "200"}
    else:
        failed = {**labels, "status_code": "STATUS_CODE_UNSET", "http_response_status_code": "503"}
    return [
        {"series": _series(calls, ok), "values": _counter(good)},
        {"series": _series(calls, failed), "values": _counter(_scaled(traffic, bad))},
    ]


def _rounded(expr: str, scale: int, eval_time: int, labels: dict[str, str], value: int) -> Any:
    return {
        "expr": f"round({expr} * {scale})",
        "eval_time": prom_duration(eval_time),
        "exp_samples": [{"labels": _series("", labels), "value": value}],
    }


# Steady burn rates and what they must trigger: 7x is over the 6h/30m page pair (6x)
# and both ticket pairs; 2x is over the 3d/6h ticket pair (1x) only; 0.5x is healthy.
_BURNS = (
    (7.0, "pages and tickets"),
    (2.0, "tickets but does not page"),
    (0.5, "stays quiet"),
)


def _slo_tests(s: SloRules, evaluation: int) -> list[dict[str, Any]]:
    # A steady ratio reads the same over every window once two samples are in it, so
    # evaluating at the shortest long window proves the thresholds without replaying
    # days of samples.
    clock = _clock(evaluation, min(_seconds(w) for w in s.sli_windows))
    until = min(_seconds(w.long) for w in s.windows)
    eval_time = clock.at_or_after(max(until, clock.step))
    traffic: Runs = [(1, clock.samples_until(eval_time))]
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
        ratio = f"slo:sli_error:ratio_rate{s.base_window}{s.id_selector}"
        tests.append(
            {
                "name": f"{s.alert_name} {outcome} when {s.sloth_slo} burns its budget {burn:g}x",
                "interval": f"{clock.step}s",
                "input_series": _slo_series(s, bad, traffic),
                "alert_rule_test": [
                    {
                        "eval_time": prom_duration(eval_time),
                        "alertname": s.alert_name,
                        "exp_alerts": expected,
                    }
                ],
                "promql_expr_test": [_rounded(ratio, _TOTAL, eval_time, ratio_labels, bad)],
            }
        )
    tests.append(_idle_test(s, clock))
    return tests


def _idle_test(s: SloRules, clock: _Clock) -> dict[str, Any]:
    """Traffic burning half the budget, then flat counters, then no samples, then traffic
    again: idle windows read as no errors, and the period's figures stay numbers."""
    base = _seconds(s.base_window)
    unit = math.ceil(max(base, clock.evaluation) / clock.step)  # steps per stretch unit
    traffic: Runs = [(1, 2 * unit), (0, 3 * unit), (None, 3 * unit), (1, 2 * unit)]
    bad = round(min(1.0, 0.5 * s.slo.error_budget) * _TOTAL)
    step = clock.step
    flat = clock.at_or_after(2 * unit * step + base)  # the window holds flat samples only
    absent = clock.at_or_after(5 * unit * step + base + step)  # the window holds none
    end = 10 * unit * step // clock.evaluation * clock.evaluation
    # Derived figures keep the window label of the ratio they divide.
    window_labels = {**s.sloth_labels, "sloth_window": s.base_window}
    period_labels = {**s.sloth_labels, "sloth_window": s.period}
    base_ratio = f"slo:sli_error:ratio_rate{s.base_window}{s.id_selector}"
    burn = f"slo:current_burn_rate:ratio{s.id_selector}"
    period_ratio = f"slo:sli_error:ratio_rate{s.period}{s.id_selector}"
    remaining = f"slo:period_error_budget_remaining:ratio{s.id_selector}"
    error_budget = 1 - float(f"{s.slo.objective / 100.0:g}")  # as the rules compute it
    expected_remaining = round((1 - bad / _TOTAL / error_budget) * 10_000)
    return {
        "name": f"{s.sloth_slo}: idle windows count as no errors and no requests",
        "interval": f"{step}s",
        "input_series": _slo_series(s, bad, traffic),
        "promql_expr_test": [
            *(_rounded(base_ratio, 1_000_000, t, window_labels, 0) for t in (flat, absent)),
            *(_rounded(burn, 1_000_000, t, window_labels, 0) for t in (flat, absent)),
            _rounded(period_ratio, 1_000_000, end, period_labels, bad * 10),
            _rounded(remaining, 10_000, end, period_labels, expected_remaining),
        ],
    }


def _histogram(
    o: ObjectiveRules, buckets: list[float], runs_of: Any, samples: int
) -> list[dict[str, str]]:
    """Bucket series (cumulative, ``le`` ascending, then ``+Inf``); ``runs_of(i)`` gives
    the counter runs of bucket ``i``."""
    labels = example_labels(o.budget.match)
    out = []
    for i, le in [*enumerate(buckets), (len(buckets), math.inf)]:
        le_text = "+Inf" if le == math.inf else f"{le:g}"
        out.append(
            {
                "series": _series(f"{o.duration_metric}_bucket", {**labels, "le": le_text}),
                "values": _counter(runs_of(i) or [(0, samples)]),
            }
        )
    return out


def _objective_tests(o: ObjectiveRules, buckets: list[float], evaluation: int) -> list[Any]:
    if not o.budget.alerting.ticket:
        return []
    window = _seconds(o.window)
    clock = _clock(evaluation, window)
    alert = objective_alert(o)
    slow_from = [i for i in range(1, len(buckets) + 1) if buckets[i - 1] >= o.threshold]
    can_be_slow, can_be_fast = bool(slow_from), buckets[0] <= o.threshold
    home = slow_from[0] if slow_from else 0
    # The expression holds from the first evaluation with two samples in the window; the
    # alert fires one ``for`` (one window) later.
    fires = clock.at_or_after(clock.step) + clock.at_or_after(window) + clock.evaluation
    samples = clock.samples_until(fires)

    def case(name: str, runs_of: Any, checks: list[tuple[int, list[Any]]], n: int) -> Any:
        return {
            "name": f"{o.alert_name} {name}",
            "interval": f"{clock.step}s",
            "input_series": _histogram(o, buckets, runs_of, n),
            "alert_rule_test": [
                {"eval_time": prom_duration(t), "alertname": o.alert_name, "exp_alerts": exp}
                for t, exp in checks
            ],
        }

    tests = []
    firing = [{"exp_labels": alert["labels"], "exp_annotations": alert["annotations"]}]
    if can_be_slow:
        slow = [(_TOTAL, samples)]
        tests.append(
            case(
                f"fires when {o.objective.label} is over {o.objective.below_ms:g} ms",
                lambda i: slow if i >= home else None,
                [(fires, firing)],
                samples,
            )
        )
    if can_be_fast:
        fast = [(_TOTAL, samples)]
        tests.append(
            case(
                f"stays quiet when {o.objective.label} is within its objective",
                lambda i: fast,
                [(fires, [])],
                samples,
            )
        )
    if can_be_slow and can_be_fast:
        tests.append(_burst_test(o, clock, home, window, case))
    return tests


def _burst_test(o: ObjectiveRules, clock: _Clock, home: int, window: float, case: Any) -> Any:
    """Healthy traffic with one step of slow spans: the percentile is over the objective
    while the burst is in the window, which is shorter than the alert's ``for``."""
    burst_step = math.ceil(clock.at_or_after(2 * window) / clock.step)
    burst = burst_step * clock.step
    checks = sorted(
        {clock.at_or_after(burst + offset) for offset in (0, window / 2, window, 2 * window)}
    )
    after = clock.samples_until(checks[-1]) - burst_step
    healthy = 100

    def runs_of(i: int) -> Runs:
        spike = _TOTAL if i >= home else 0
        return [(healthy, burst_step - 1), (healthy + spike, 1), (healthy, after)]

    return case(
        f"stays quiet on a burst of slow spans shorter than its {o.window} window",
        runs_of,
        [(t, []) for t in checks],
        burst_step + after,
    )


def generate_tests(budgets: BudgetsFile, rules_file: str) -> dict[str, Any]:
    interval = budgets.alerting.rule_interval
    evaluation = (
        round(_seconds(prom_duration(interval))) if interval else _DEFAULT_EVALUATION_SECONDS
    )
    buckets = sorted(budgets.alerting.histogram_buckets_ms)
    if budgets.alerting.duration_unit == "seconds":
        buckets = [b / 1000.0 for b in buckets]
    tests: list[dict[str, Any]] = []
    for s in slo_rules(budgets):
        tests.extend(_slo_tests(s, evaluation))
    for o in objective_rules(budgets):
        tests.extend(_objective_tests(o, buckets, evaluation))
    return {
        "rule_files": [rules_file],
        "evaluation_interval": prom_duration(evaluation),
        # Recordings before the rules that read them, at every evaluation.
        "group_eval_order": [group["name"] for group in generate_rules(budgets)["groups"]],
        "tests": tests,
    }
