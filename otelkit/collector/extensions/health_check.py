"""``health_check``: liveness, readiness and per-component health over HTTP.

Responses use ``application/health+json`` (draft-inadarei-api-health-check):

* ``/health/live`` — 200 ``pass`` while the process serves requests. It does not look
  at components: a down exporter must not get the collector restarted (that cascades).
* ``/health/ready`` — 200 ``pass`` once every component has started, 503 ``fail``
  before that, from the moment shutdown begins, and while a component refuses all data
  (the memory limiter over its limit: ``"output": "refusing data: ..."``), so load
  balancers send elsewhere.
* ``/health`` — the overall status and one check per component
  (``"exporter/otlp:status"``). A component that failed for good makes it ``fail``
  (503); one starting, stopping or in a recoverable error makes it ``warn`` (200).
* ``path`` (default ``/``) answers as upstream's ``health_check`` does:
  ``{"status": "Server available", "upSince": ..., "uptime": ...}`` with 200, or
  ``"Server not available"`` with 503 when not started or shutting down. It does not
  follow refusals: charts often use it for liveness too, and a collector refusing data
  under load must not be restarted for it.

The extension starts first and stops last, so it answers throughout start and shutdown.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from pydantic import Field, field_validator

from otelkit.collector.runtime.component import (
    ComponentConfig,
    CreateSettings,
    Extension,
    Host,
    Status,
    extension_factory,
)
from otelkit.collector.runtime.http import HttpServer, Receive, Scope, Send, respond
from otelkit.collector.runtime.listeners import Listener
from otelkit.collector.runtime.tls import TLSServerSettings
from otelkit.collector.runtime.types import Endpoint

HEALTH_JSON = "application/health+json"
HealthStatus = Literal["pass", "warn", "fail"]

_COMPONENT_HEALTH: dict[Status, HealthStatus] = {
    Status.OK: "pass",
    Status.STARTING: "warn",
    Status.RECOVERABLE_ERROR: "warn",
    Status.STOPPING: "warn",
    Status.PERMANENT_ERROR: "fail",
    Status.STOPPED: "fail",
}
_FIXED_PATHS = ("/health", "/health/live", "/health/ready")
_RANK: dict[HealthStatus, int] = {"pass": 0, "warn": 1, "fail": 2}


def _otelkit_version() -> str:
    try:
        return version("otelkit")
    except PackageNotFoundError:
        return "unknown"


class HealthCheckConfig(ComponentConfig):
    endpoint: Endpoint = "localhost:13133"
    path: str = Field("/", description="Where the upstream-compatible status is served.")
    service_id: str | None = Field(
        None, description="serviceId in /health responses; default otelkit-collector@<host>."
    )
    release_id: str | None = Field(
        None, description="releaseId in /health responses; default the otelkit version."
    )
    tls: TLSServerSettings | None = Field(None, description="Serve HTTPS (upstream's key).")

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not a URL path: expected one starting with /")
        path = path.rstrip("/") or "/"
        if path in _FIXED_PATHS:
            raise ValueError(f"{path} is already served; choose another path, such as /")
        return path

    def listeners(self) -> list[Listener]:
        return [
            Listener(
                "health check",
                self.endpoint,
                False,
                can_authenticate=False,
                protocol="HTTPS" if self.tls else "HTTP",
                path="/health",
            )
        ]


class HealthCheck(Extension):
    def __init__(self, settings: CreateSettings, config: HealthCheckConfig) -> None:
        self._config = config
        # In a worker process the supervisor serves health for every worker at once.
        self._serves = settings.worker is None
        self._host: Host | None = None
        self._started = time.time()
        self._server = HttpServer(config.endpoint, self._app, name=settings.label, tls=config.tls)
        otelkit_version = _otelkit_version()
        self._identity = {
            "version": otelkit_version.split(".")[0],
            "releaseId": config.release_id or otelkit_version,
            "serviceId": config.service_id or f"otelkit-collector@{socket.gethostname()}",
            "description": "otelkit collector",
        }
        self._routes = {
            "/health/live": self._live,
            "/health/ready": self._ready,
            "/health": self._health,
            config.path: self._upstream_status,
        }

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self, host: Host) -> None:
        self._host = host
        self._started = time.time()
        if self._serves:
            await self._server.start()

    async def shutdown(self) -> None:
        await self._server.stop()

    # HTTP ----------------------------------------------------------------------------
    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        route = self._routes.get(scope["path"].rstrip("/") or "/")
        if route is None:
            paths = ", ".join(sorted(self._routes))
            await respond(send, 404, f"not found; try {paths}\n".encode(), "text/plain")
            return
        if scope["method"] not in ("GET", "HEAD"):
            await respond(send, 405, b"use GET\n", "text/plain", [(b"allow", b"GET, HEAD")])
            return
        status, body, content_type = route()
        payload = json.dumps(body).encode()
        headers = [(b"cache-control", b"no-store")]
        await respond(send, status, payload, content_type, headers)

    def _live(self) -> tuple[int, dict[str, Any], str]:
        return 200, self._document("pass"), HEALTH_JSON

    def _ready(self) -> tuple[int, dict[str, Any], str]:
        refusals = self._host.refusals() if self._host is not None else {}
        if self._is_ready() and not refusals:
            return 200, self._document("pass"), HEALTH_JSON
        body = self._document("fail")
        if not self._is_ready():
            body["output"] = "not ready: starting or shutting down"
        else:
            body["output"] = "; ".join(f"{who}: {why}" for who, why in sorted(refusals.items()))
        return 503, body, HEALTH_JSON

    def _health(self) -> tuple[int, dict[str, Any], str]:
        checks = self._checks()
        worst: HealthStatus = "pass" if self._is_ready() else "warn"
        for entries in checks.values():
            for entry in entries:
                if _RANK[entry["status"]] > _RANK[worst]:
                    worst = entry["status"]
        body = self._document(worst)
        body["checks"] = checks
        if not self._is_ready():
            body["output"] = "not ready: starting or shutting down"
        return (503 if worst == "fail" else 200), body, HEALTH_JSON

    def _upstream_status(self) -> tuple[int, dict[str, Any], str]:
        body = {
            "status": "Server available" if self._is_ready() else "Server not available",
            "upSince": _iso(self._started),
            "uptime": f"{time.time() - self._started:.3f}s",
        }
        return (200 if self._is_ready() else 503), body, "application/json"

    # Documents -----------------------------------------------------------------------
    def _is_ready(self) -> bool:
        return self._host is not None and self._host.is_ready()

    def _document(self, status: HealthStatus) -> dict[str, Any]:
        return {"status": status, **self._identity}

    def _checks(self) -> dict[str, list[dict[str, Any]]]:
        if self._host is None:
            return {}
        now = _iso(time.time())
        checks: dict[str, list[dict[str, Any]]] = {}
        for label, (status, message) in sorted(self._host.component_statuses().items()):
            entry: dict[str, Any] = {
                "componentId": label,
                "componentType": "component",
                "observedValue": status.value,
                "status": _COMPONENT_HEALTH.get(status, "warn"),
                "time": now,
            }
            if message:
                entry["output"] = message
            checks[f"{label}:status"] = [entry]
        return checks


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _create(settings: CreateSettings, config: HealthCheckConfig) -> HealthCheck:
    return HealthCheck(settings, config)


factory = extension_factory("health_check", HealthCheckConfig, _create)
