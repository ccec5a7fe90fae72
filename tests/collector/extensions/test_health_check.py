"""The health_check extension's endpoints, served in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from otelkit.collector.extensions.health_check import HealthCheck, HealthCheckConfig
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind, Status
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry


def run(test: Callable[[httpx.AsyncClient, ServiceHost], Awaitable[None]], **config: Any) -> None:
    async def main() -> None:
        host = ServiceHost()
        settings = CreateSettings(ComponentID("health_check"), Kind.EXTENSION, SelfTelemetry())
        cfg = HealthCheckConfig.model_validate({"endpoint": "127.0.0.1:0", **config})
        extension = HealthCheck(settings, cfg)
        await extension.start(host)
        base = f"http://127.0.0.1:{extension.port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                await test(client, host)
        finally:
            await extension.shutdown()

    asyncio.run(main())


def started(host: ServiceHost) -> None:
    host.report_status("extension/health_check", Status.OK)
    host.report_status("exporter/otlp", Status.OK)
    host.report_status("receiver/otlp", Status.OK)
    host.ready = True


def test_live_answers_while_serving_even_when_not_ready() -> None:
    async def check(client: httpx.AsyncClient, host: ServiceHost) -> None:
        response = await client.get("/health/live")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/health+json"
        assert response.json()["status"] == "pass"

    run(check)


def test_ready_follows_the_host() -> None:
    async def check(client: httpx.AsyncClient, host: ServiceHost) -> None:
        assert (await client.get("/health/ready")).status_code == 503
        started(host)
        response = await client.get("/health/ready")
        assert response.status_code == 200
        assert response.json()["status"] == "pass"
        host.ready = False  # what Service.shutdown does first
        response = await client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "fail"

    run(check)


def test_health_lists_every_component() -> None:
    async def check(client: httpx.AsyncClient, host: ServiceHost) -> None:
        started(host)
        response = await client.get("/health")
        body = response.json()
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/health+json"
        assert body["status"] == "pass"
        assert body["serviceId"] == "collector-a"
        assert body["releaseId"] == "2026.11"
        assert body["version"]
        entry = body["checks"]["exporter/otlp:status"][0]
        assert entry["componentType"] == "component"
        assert entry["status"] == "pass"
        assert entry["time"].endswith("Z")
        assert set(body["checks"]) == {
            "extension/health_check:status",
            "exporter/otlp:status",
            "receiver/otlp:status",
        }

    run(check, service_id="collector-a", release_id="2026.11")


@pytest.mark.parametrize(
    ("status", "overall", "http_status"),
    [
        (Status.RECOVERABLE_ERROR, "warn", 200),
        (Status.STARTING, "warn", 200),
        (Status.PERMANENT_ERROR, "fail", 503),
    ],
)
def test_health_overall_is_the_worst_component(
    status: Status, overall: str, http_status: int
) -> None:
    async def check(client: httpx.AsyncClient, host: ServiceHost) -> None:
        started(host)
        host.report_status("exporter/otlp", status, "connection refused")
        response = await client.get("/health")
        assert (response.status_code, response.json()["status"]) == (http_status, overall)
        entry = response.json()["checks"]["exporter/otlp:status"][0]
        assert entry["output"] == "connection refused"

    run(check)


def test_root_answers_like_upstream() -> None:
    async def check(client: httpx.AsyncClient, host: ServiceHost) -> None:
        response = await client.get("/")
        assert response.status_code == 503
        assert response.json()["status"] == "Server not available"
        started(host)
        response = await client.get("/")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "Server available"
        assert body["upSince"].endswith("Z")

    run(check)


def test_custom_status_path_unknown_paths_and_methods() -> None:
    async def check(client: httpx.AsyncClient, host: ServiceHost) -> None:
        started(host)
        assert (await client.get("/status")).json()["status"] == "Server available"
        assert (await client.get("/nope")).status_code == 404
        assert (await client.post("/health")).status_code == 405

    run(check, path="/status/")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"endpoint": "localhost"}, "not an endpoint"),
        ({"path": "health"}, "not a URL path"),
        ({"path": "/health/ready"}, "already served"),
    ],
)
def test_config_errors(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        HealthCheckConfig.model_validate(config)


def test_default_endpoint_is_upstreams() -> None:
    assert HealthCheckConfig().endpoint == "localhost:13133"


def test_ready_reports_refusing_data_while_a_component_refuses_everything() -> None:
    async def check(client: httpx.AsyncClient, host: ServiceHost) -> None:
        started(host)
        reason = "refusing data: held data 300 MiB, resident 450 MiB; soft limit 410 MiB"
        host.set_refusing("processor/memory_limiter", reason)
        response = await client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "fail"
        assert response.json()["output"] == f"processor/memory_limiter: {reason}"
        # Liveness and the upstream-style status are not readiness: no restart for load.
        assert (await client.get("/health/live")).status_code == 200
        assert (await client.get("/")).status_code == 200
        host.set_refusing("processor/memory_limiter", None)
        assert (await client.get("/health/ready")).status_code == 200

    run(check)
