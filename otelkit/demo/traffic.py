"""The demo's traffic: each scenario calls one shop route at a steady pace, and counts the
answers it got per route, so the span metrics can be compared with what was sent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(frozen=True)
class Scenario:
    situation: str  # the key of the situation this traffic produces
    method: str
    path: str
    route: str  # the route template, as the span metrics' http_route label shows it
    every: float  # seconds between the starts of one caller's requests
    body: dict[str, Any] | None = None
    callers: int = 1  # concurrent callers, for requests that take longer than ``every``


# Each situation is produced every second or two, so that it is seen within seconds even
# where apps sample traces; about 10% of the requests fail (the invoice bug), enough to
# page on the example budgets' 99.5% availability SLO.
SCENARIOS = (
    Scenario("normal", "GET", "/products", "/products", 0.5),
    Scenario("normal", "GET", "/products/3", "/products/{product_id}", 0.7),
    Scenario("normal", "POST", "/checkout", "/checkout", 2.0, {"product_id": 1}),
    Scenario("exception", "GET", "/orders/13/invoice", "/orders/{order_id}/invoice", 0.8),
    Scenario("n_plus_one", "GET", "/orders", "/orders", 1.0),
    Scenario("slow_query", "GET", "/reports/sales", "/reports/sales", 1.5),
    Scenario("sequential", "GET", "/recommendations", "/recommendations", 1.5, callers=2),
    Scenario(
        "budget_breach", "POST", "/checkout", "/checkout", 2.0,
        {"product_id": 2, "payment": "invoice"}, callers=2,
    ),
)  # fmt: skip


@dataclass
class Traffic:
    """Sends every scenario until stopped; ``sent`` counts answers per route."""

    base_url: str
    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)  # no answer at all
    started_at: float | None = None  # wall clock of the first request

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            callers = [s for s in SCENARIOS for _ in range(s.callers)]
            await asyncio.gather(*(self._loop(client, s, stop) for s in callers))

    async def _loop(
        self, client: httpx.AsyncClient, scenario: Scenario, stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            began = time.monotonic()
            if self.started_at is None:
                self.started_at = time.time()
            try:
                response = await client.request(scenario.method, scenario.path, json=scenario.body)
            except httpx.HTTPError as exc:
                self.failures[f"{scenario.method} {scenario.route}: {type(exc).__name__}"] += 1
            else:
                self.sent[f"{scenario.method} {scenario.route}"] += 1
                self.statuses[response.status_code] += 1
            pause = scenario.every - (time.monotonic() - began)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(pause, 0.0))
