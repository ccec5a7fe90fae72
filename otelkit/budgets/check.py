"""The CI gate: budgets checked against a trace file, k6-style.

Reads the ``file`` exporter's OTLP/JSON lines (or any OTLP/JSON trace file, one request
per line or one pretty-printed request), gives every span to the first budget that
matches it, and judges each budget over the whole file: a budget is broken when a span
is over its ``max`` or an objective's percentile is over its limit (windows do not
apply: the file is one window). Percentiles here are exact (nearest rank, the same
rank the sketch estimates). SLOs are not judged: a test run's error ratio says little.

A budget whose selector matched no span is a misconfiguration (a renamed route or
service would otherwise pass the gate for ever): it fails with its own exit code unless
the run says unmatched budgets are expected.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelkit.budgets.findings import service_name
from otelkit.budgets.matcher import BudgetMatcher, attribute_texts
from otelkit.budgets.model import Budget, BudgetsFile, Match, over_limit

EXIT_OK, EXIT_USAGE, EXIT_BROKEN, EXIT_UNMATCHED = 0, 2, 3, 4


def exact_quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[math.floor(q * (len(sorted_values) - 1))]


@dataclass
class BudgetResult:
    name: str
    budget: Budget
    durations: list[float] = field(default_factory=list)
    over_max: int = 0

    def quantile(self, q: float) -> float | None:
        return exact_quantile(self.sorted, q) if self.durations else None

    @property
    def sorted(self) -> list[float]:
        self.durations.sort()
        return self.durations

    def objective_results(self) -> list[tuple[str, float | None, bool]]:
        out = []
        for o in self.budget.objectives:
            observed = self.quantile(o.quantile)
            ok = observed is None or observed <= o.below_ms
            out.append((f"{o.label}<{o.below_ms:g}ms", observed, ok))
        return out

    @property
    def verdict(self) -> str:
        if not self.durations:
            return "no spans"
        broken = self.over_max > 0 or not all(ok for _, _, ok in self.objective_results())
        return "BROKEN" if broken else "ok"


def evaluate(
    budgets: BudgetsFile, requests: Iterable[ExportTraceServiceRequest]
) -> list[BudgetResult]:
    matcher = BudgetMatcher(budgets.budgets)
    results = [BudgetResult(b.name, b.budget) for b in matcher.budgets]
    for request in requests:
        for rs in request.resource_spans:
            candidates = matcher.for_service(service_name(rs.resource.attributes))
            if not candidates:
                continue
            resource_attrs = attribute_texts(rs.resource.attributes, matcher.wanted_keys)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    budget = matcher.match(span, candidates, resource_attrs)
                    if budget is None:
                        continue
                    result = results[budget.index]
                    duration_ns = span.end_time_unix_nano - span.start_time_unix_nano
                    result.durations.append(duration_ns / 1e6)
                    ceiling = budget.budget.max_ns
                    if ceiling is not None and over_limit(duration_ns, ceiling):
                        result.over_max += 1
    return results


def read_traces(path: str | Path) -> Iterator[ExportTraceServiceRequest]:
    """Trace requests in an OTLP/JSON file; other signals' lines are skipped."""
    from otelkit.collector.pdata.otlp_json import decode_any

    text = Path(path).read_bytes()
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        payloads = [decode_any(line) for line in lines]
    except ValueError as line_error:
        try:
            payloads = [decode_any(text)]  # one pretty-printed request
        except ValueError:
            raise line_error from None
    for payload in payloads:
        if isinstance(payload, ExportTraceServiceRequest):
            yield payload


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(results: list[BudgetResult]) -> str:
    header = ("budget", "spans", "p50 ms", "p95 ms", "p99 ms", "over max", "objectives", "verdict")
    rows = [header]
    for r in results:
        objectives = ", ".join(
            f"{label} {_ms(obs)} {'ok' if ok else 'BROKEN'}"
            for label, obs, ok in r.objective_results()
        )
        max_text = f"{r.over_max} (max {r.budget.max:g}ms)" if r.budget.max is not None else "-"
        rows.append(
            (
                r.name,
                str(len(r.durations)),
                _ms(r.quantile(0.5)),
                _ms(r.quantile(0.95)),
                _ms(r.quantile(0.99)),
                max_text,
                objectives or "-",
                r.verdict,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def unmatched(results: list[BudgetResult]) -> list[BudgetResult]:
    return [r for r in results if not r.durations]


def describe_selector(match: Match) -> str:
    """A budget's ``match`` as the budgets file spells it: ``service=shop-api route=/x*``."""
    fields = match.model_dump(exclude_none=True, exclude_defaults=True)
    attributes = fields.pop("attributes", {})
    parts = [f"{key}={'|'.join(value)}" for key, value in fields.items()]
    parts += [f"attributes.{key}={'|'.join(value)}" for key, value in attributes.items()]
    return " ".join(parts) or "(matches every span)"


def unmatched_report(results: list[BudgetResult]) -> str:
    return "\n".join(
        f"budget {r.name} matched no spans: {describe_selector(r.budget.match)}"
        for r in unmatched(results)
    )


def exit_code(results: list[BudgetResult], allow_unmatched: bool = False) -> int:
    """3 when a budget is broken; else 4 when one matched nothing (unless allowed)."""
    if any(r.verdict == "BROKEN" for r in results):
        return EXIT_BROKEN
    if unmatched(results) and not allow_unmatched:
        return EXIT_UNMATCHED
    return EXIT_OK
