"""Health endpoints for the app, in ``application/health+json`` (draft-inadarei-api-health-check).

``/health/live`` answers without touching dependencies (is the process serving?);
``/health/ready`` and ``/health`` run the registered checks concurrently, each with a
timeout, and answer 503 when one fails. Results are cached briefly (single flight), so
a storm of probes costs one round of checks. Checks run with instrumentation suppressed:
probes leave no traces.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from fastapi import APIRouter

HEALTH_JSON = "application/health+json"
Status = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    duration_ms: float
    output: str | None = None

    def as_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "status": self.status,
            "observedValue": round(self.duration_ms, 3),
            "observedUnit": "ms",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if self.output:
            entry["output"] = self.output
        return entry


class HealthCheck:
    """A named dependency check: ``check()`` returns normally on success, raises on failure."""

    name: str = "check"
    component_type: str = "component"

    async def check(self) -> None:
        raise NotImplementedError


class DatabaseCheck(HealthCheck):
    """``SELECT 1`` through a SQLAlchemy engine (``Engine`` or ``AsyncEngine``)."""

    component_type = "datastore"

    def __init__(self, engine: Any, name: str = "database:connectivity", query: str = "SELECT 1"):
        self.engine = engine
        self.name = name
        self.query = query

    def _run_sync(self) -> None:
        from sqlalchemy import text

        with self.engine.connect() as connection:
            connection.execute(text(self.query))

    async def check(self) -> None:
        from sqlalchemy import text

        if hasattr(self.engine, "sync_engine"):
            async with self.engine.connect() as connection:
                await connection.execute(text(self.query))
        else:
            await asyncio.to_thread(self._run_sync)


class HttpCheck(HealthCheck):
    """GET a dependency's URL through httpx and expect a status (200 by default)."""

    component_type = "system"

    def __init__(
        self, url: str, name: str | None = None, expect_status: int = 200, timeout: float = 2.0
    ):
        self.url = url
        self.name = name or f"http:{url}"
        self.expect_status = expect_status
        self.timeout = timeout

    async def check(self) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.get(self.url)
        if response.status_code != self.expect_status:
            raise RuntimeError(f"status {response.status_code}, expected {self.expect_status}")


class CallableCheck(HealthCheck):
    """Any function (sync or async); a false result or an exception fails the check."""

    def __init__(self, function: Callable[[], Any], name: str | None = None):
        self.function = function
        self.name = name or str(getattr(function, "__name__", "check"))

    async def check(self) -> None:
        if inspect.iscoroutinefunction(self.function):
            result = await self.function()
        else:
            result = await asyncio.to_thread(self.function)
            if inspect.isawaitable(result):
                result = await result
        if result is False:
            raise RuntimeError("check returned False")


def as_check(item: HealthCheck | Callable[[], Any]) -> HealthCheck:
    return item if isinstance(item, HealthCheck) else CallableCheck(item)


@dataclass
class HealthRegistry:
    """Runs the checks concurrently with a timeout each; caches the round for ``cache_ttl``."""

    checks: list[HealthCheck] = field(default_factory=list)
    timeout: float = 2.0
    cache_ttl: float = 1.0
    _cached: tuple[float, list[CheckResult]] | None = None
    _inflight: asyncio.Future[list[CheckResult]] | None = None

    def add(self, check: HealthCheck | Callable[[], Any]) -> None:
        self.checks.append(as_check(check))
        self._cached = None

    async def results(self) -> list[CheckResult]:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self.cache_ttl:
            return self._cached[1]
        if self._inflight is not None and not self._inflight.done():
            return await asyncio.shield(self._inflight)
        self._inflight = asyncio.ensure_future(self._run_all())
        results = await asyncio.shield(self._inflight)
        self._cached = (time.monotonic(), results)
        return results

    async def _run_all(self) -> list[CheckResult]:
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        with suppress_instrumentation():
            return list(await asyncio.gather(*(self._run_one(check) for check in self.checks)))

    async def _run_one(self, check: HealthCheck) -> CheckResult:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(check.check(), self.timeout)
        except TimeoutError:
            return CheckResult(check.name, "fail", _ms(started), f"timed out after {self.timeout}s")
        except Exception as exc:
            return CheckResult(check.name, "fail", _ms(started), f"{type(exc).__name__}: {exc}")
        return CheckResult(check.name, "pass", _ms(started))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def overall(results: Iterable[CheckResult]) -> Status:
    statuses = {result.status for result in results}
    if "fail" in statuses:
        return "fail"
    return "warn" if "warn" in statuses else "pass"


def health_document(
    results: list[CheckResult], service_id: str | None = None, version: str | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {"status": overall(results)}
    if service_id:
        document["serviceId"] = service_id
    if version:
        document["version"] = version
    if results:
        document["checks"] = {result.name: [result.as_json()] for result in results}
    return document


def _service_identity(service_id: str | None, version: str | None) -> tuple[str | None, str | None]:
    """Defaults from the configured resource (``service.name``, ``service.version``)."""
    from otelkit.presets import pipeline

    current = pipeline.current()
    if current is None:
        return service_id, version
    attributes = current.resource.attributes
    return (
        service_id or _str_or_none(attributes.get("service.name")),
        version or _str_or_none(attributes.get("service.version")),
    )


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def health_router(
    checks: Iterable[HealthCheck | Callable[[], Any]] = (),
    *,
    prefix: str = "/health",
    timeout: float = 2.0,
    cache_ttl: float = 1.0,
    service_id: str | None = None,
    version: str | None = None,
) -> APIRouter:
    """A FastAPI router with ``{prefix}``, ``{prefix}/live`` and ``{prefix}/ready``.

    ``router.registry.add(check)`` registers more checks later.
    """
    from fastapi import APIRouter
    from fastapi.responses import Response

    registry = HealthRegistry([as_check(check) for check in checks], timeout, cache_ttl)
    router = APIRouter()

    def respond(document: dict[str, Any]) -> Response:
        code = 503 if document["status"] == "fail" else 200
        return Response(json.dumps(document), status_code=code, media_type=HEALTH_JSON)

    async def live() -> Response:
        return respond({"status": "pass"})

    async def ready() -> Response:
        return respond({"status": overall(await registry.results())})

    async def full() -> Response:
        service, release = _service_identity(service_id, version)
        return respond(health_document(await registry.results(), service, release))

    handlers: list[tuple[str, Callable[[], Awaitable[Response]]]] = [
        (prefix, full),
        (f"{prefix}/live", live),
        (f"{prefix}/ready", ready),
    ]
    for path, handler in handlers:
        router.add_api_route(path, handler, methods=["GET"], include_in_schema=False)
    router.registry = registry  # type: ignore[attr-defined]
    from otelkit.presets import access

    access.quiet(path for path, _ in handlers)
    return router
