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
    every: float  # seconds between requests
    body: dict[str, Any] | None = None


SCENARIOS = (
    Scenario("normal", "GET", "/products", "/products", 0.5),
    Scenario("normal", "GET", "/products/3", "/products/{product_id}", 0.7),
    Scenario("normal", "POST", "/checkout", "/checkout", 2.0, {"product_id": 1}),
    Scenario("exception", "GET", "/orders/13/invoice", "/orders/{order_id}/invoice", 1.2),
    Scenario("n_plus_one", "GET", "/orders", "/orders", 3.0),
    Scenario("slow_query", "GET", "/reports/sales", "/reports/sales", 4.0),
    Scenario("sequential", "GET", "/recommendations", "/recommendations", 5.0),
    Scenario(
        "budget_breach",
        "POST",
        "/checkout",
        "/checkout",
        6.0,
        {"product_id": 2, "payment": "invoice"},
    ),
)


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
            await asyncio.gather(*(self._loop(client, s, stop) for s in SCENARIOS))

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
