"""A budget's percentile windows under ``--workers N``: kept by worker 0 for the whole
collector, asked by the other workers for every batch they measure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from otelkit.collector.processors.budget import BudgetConfig, BudgetProcessor
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind, WorkerRole
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.budgets.spans import S, Sink, all_spans, attrs_of, event_attrs, request
from tests.budgets.test_budget_processor import BUDGETS

Ask = Callable[[int, bytes], Awaitable[bytes]]


class Link:
    def __init__(self, ask: Ask) -> None:
        self.ask = ask


def worker(tmp_path: Path, index: int, ask: Ask) -> tuple[BudgetProcessor, SelfTelemetry]:
    path = tmp_path / "budgets.yaml"
    path.write_text(BUDGETS)
    telemetry = SelfTelemetry()
    settings = CreateSettings(
        ComponentID("budget"), Kind.PROCESSOR, telemetry,
        worker=WorkerRole(index, 2), peers=Link(ask),
    )  # fmt: skip
    config = BudgetConfig(budgets_file=str(path), min_samples=10)
    return BudgetProcessor(settings, config, Sink()), telemetry


def slow_checkouts(count: int) -> object:
    return request([S("POST /checkout", ms=900, attrs={"http.route": "/checkout"})] * count)


def percentile_findings(*requests: object) -> int:
    return sum(
        1
        for req in requests
        for span in all_spans(req)  # type: ignore[arg-type]
        for finding in event_attrs(span)
        if finding["otelkit.finding.type"] == "percentile"
    )


def test_two_workers_shares_are_judged_in_one_window_and_reported_once(tmp_path: Path) -> None:
    """Six slow spans in each worker: neither alone has ``min_samples`` (10), together
    they break the p95 objective once, reported by the worker whose batch tipped it."""

    async def unused(index: int, body: bytes) -> bytes:
        raise AssertionError("worker 0 asks nobody")

    keeper, keeper_telemetry = worker(tmp_path, 0, unused)

    async def to_keeper(index: int, body: bytes) -> bytes:
        assert index == 0
        return await keeper.answer_peer(body)

    other, other_telemetry = worker(tmp_path, 1, to_keeper)
    batches = [slow_checkouts(6) for _ in range(4)]

    async def scenario() -> None:
        await keeper.consume(batches[0])
        await other.consume(batches[1])
        await keeper.consume(batches[2])
        await other.consume(batches[3])

    asyncio.run(scenario())
    assert [percentile_findings(b) for b in batches] == [0, 1, 0, 0]
    violations = sum(
        t.total("otelkit_budget_violations_total", type="percentile")
        for t in (keeper_telemetry, other_telemetry)
    )
    assert violations == 1
    p95 = keeper_telemetry.value(
        "otelkit_budget_window_quantile_milliseconds", {"budget": "checkout", "quantile": "p95"}
    )
    assert abs(p95 - 900) <= 9  # the window of both workers' spans


def test_while_worker_0_is_away_the_batches_are_counted_not_judged_alone(
    tmp_path: Path,
) -> None:
    async def away(index: int, body: bytes) -> bytes:
        raise RetryableError("worker 0 is not reachable")

    other, telemetry = worker(tmp_path, 1, away)
    batch = slow_checkouts(12)
    asyncio.run(other.consume(batch))
    assert percentile_findings(batch) == 0
    assert telemetry.total("otelkit_budget_unjudged_spans_total", budget="checkout") == 12
    marked = [attrs_of(span).get("otelkit.budget.name") for span in all_spans(batch)]  # type: ignore[arg-type]
    assert marked == ["checkout"] * 12  # the spans are still marked
