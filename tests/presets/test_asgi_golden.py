"""Golden tests: otelkit's server-span middleware exports what the FastAPI instrumentation
package exports.

One FastAPI app is built twice, once instrumented by ``opentelemetry-instrumentation-
fastapi`` (with otelkit's options) and once by otelkit's middleware, each with its own
tracer provider; the same requests go to both; the finished spans are encoded by the
stock OTLP encoder and the two ``ExportTraceServiceRequest`` messages are compared field by
field (everything but IDs, times and stack-trace frames, which cannot be equal), in each
``OTEL_SEMCONV_STABILITY_OPT_IN`` mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, BackgroundTasks, FastAPI, HTTPException, Request, Response
from opentelemetry import baggage
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.propagators import (
    TraceResponsePropagator,
    set_global_response_propagator,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.routing import Host, Match, Route

from otelkit.presets import asgi
from otelkit.presets.instrument import SENSITIVE_HEADERS, excluded_urls_pattern
from tests.presets.sink import value_of

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
CAPTURE_REQUEST = ["x-tenant", "authorization", "cookie", "x-api-key"]
CAPTURE_RESPONSE = ["set-cookie", "x-served-by", "content-type"]


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int, request: Request) -> dict[str, Any]:
        return {"id": item_id, "baggage": dict(baggage.get_all())}

    @app.post("/items", status_code=201)
    async def create(response: Response) -> dict[str, str]:
        response.headers["set-cookie"] = "session=secret-value"
        response.headers["x-served-by"] = "golden"
        return {"created": "yes"}

    @app.get("/crash")
    def crash() -> None:
        raise RuntimeError("unhandled failure")

    @app.get("/unavailable")
    async def unavailable() -> None:
        raise HTTPException(status_code=503, detail="down")

    @app.get("/teapot")
    async def teapot() -> Response:
        return Response(status_code=418)

    @app.get("/later")
    async def later(tasks: BackgroundTasks) -> dict[str, bool]:
        tasks.add_task(_send_mail)
        return {"queued": True}

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "pass"}

    return app


def _send_mail() -> None:
    pass


REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/items/7?token=abc&sig=s3cr3t&AWSAccessKeyId=key", {"user-agent": "curl/8.5.0"}),
    (
        "GET",
        "/items/8",
        {
            "traceparent": f"00-{TRACE_ID}-{PARENT}-01",
            "tracestate": "vendor=value",
            "baggage": "request_id=abc,tenant=acme",
            "user-agent": "Mozilla/5.0 (compatible; Googlebot/2.1)",
            "x-tenant": "acme",
            "authorization": "Bearer token-value",
            "cookie": "session=1",
        },
    ),
    ("POST", "/items", {"x-api-key": "k-1", "content-length": "0"}),
    ("GET", "/crash", {}),
    ("GET", "/unavailable", {}),
    ("GET", "/teapot", {}),
    ("GET", "/no/such/route", {}),
    ("DELETE", "/items/3", {}),  # 405: the route exists for other methods
    ("PURGE", "/items/3", {}),  # a method outside the known set
    ("GET", "/later", {"user-agent": "GoogleStackdriverMonitoring-UptimeChecks"}),
    ("GET", "/health/live", {}),  # excluded
]


def _reset_background_task_patch() -> None:
    original = getattr(BackgroundTask, "_otel_original_call", None)
    if original is not None:
        BackgroundTask.__call__ = original  # type: ignore[method-assign]
        del BackgroundTask._otel_original_call  # type: ignore[attr-defined]


@dataclass
class Served:
    spans: list[dict[str, Any]]
    responses: list[httpx.Response]
    middleware: type


def _traced_by(app: FastAPI) -> type:
    """The class of the middleware that starts the server span (inside the outer error
    middleware both instrumentations add)."""
    return type(app.middleware_stack.app)  # type: ignore[union-attr]


def _serve(instrument: Callable[[FastAPI, TracerProvider], None]) -> Served:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "golden"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_background_task_patch()
    app = make_app()
    instrument(app, provider)

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            return [
                await client.request(method, path, headers=headers)
                for method, path, headers in REQUESTS
            ]

    responses = asyncio.run(run())
    _reset_background_task_patch()
    return Served(_exported(exporter), responses, _traced_by(app))


def _exported(exporter: InMemorySpanExporter) -> list[dict[str, Any]]:
    """The OTLP the stock encoder makes of the finished spans, as comparable dicts."""
    request = encode_spans(exporter.get_finished_spans())
    spans = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "resource": {a.key: value_of(a.value) for a in resource_spans.resource.attributes},
                        "scope": (scope_spans.scope.name, scope_spans.scope.version, scope_spans.schema_url),
                        "name": span.name,
                        "kind": span.kind,
                        "attributes": {a.key: value_of(a.value) for a in span.attributes},
                        "dropped_attributes": span.dropped_attributes_count,
                        "status": (span.status.code, span.status.message),
                        "events": [_event(event) for event in span.events],
                        "links": len(span.links),
                        "trace_state": span.trace_state,
                        "remote_parent": (span.parent_span_id.hex(), span.trace_id.hex())
                        if span.parent_span_id.hex() == PARENT
                        else bool(span.parent_span_id),
                        "flags": span.flags,
                        "ended": span.end_time_unix_nano >= span.start_time_unix_nano > 0,
                    }
                )  # fmt: skip
    return spans


def _event(event: Any) -> tuple[str, dict[str, Any]]:
    attributes = {a.key: value_of(a.value) for a in event.attributes}
    stacktrace = attributes.pop("exception.stacktrace", None)
    if stacktrace is not None:  # the frames differ (middleware names); the error does not
        lines = stacktrace.strip().splitlines()
        attributes["exception.stacktrace"] = (lines[0], lines[-1], 'raise RuntimeError("unhandled failure")' in stacktrace)  # fmt: skip
    return event.name, attributes


def _instrument_upstream(
    server_request_hook: Any = None,
) -> Callable[[FastAPI, TracerProvider], None]:
    def instrument(app: FastAPI, provider: TracerProvider) -> None:
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=provider,
            excluded_urls=excluded_urls_pattern(["/health/live"]),
            exclude_spans=["receive", "send"],
            http_capture_headers_server_request=CAPTURE_REQUEST,
            http_capture_headers_server_response=CAPTURE_RESPONSE,
            http_capture_headers_sanitize_fields=list(SENSITIVE_HEADERS),
            server_request_hook=server_request_hook,
        )

    return instrument


def _instrument_otelkit(
    server_request_hook: Any = None,
) -> Callable[[FastAPI, TracerProvider], None]:
    def instrument(app: FastAPI, provider: TracerProvider) -> None:
        asgi.instrument_app(
            app,
            tracer_provider=provider,
            excluded_urls=excluded_urls_pattern(["/health/live"]),
            capture_request_headers=CAPTURE_REQUEST,
            capture_response_headers=CAPTURE_RESPONSE,
            sanitize_fields=list(SENSITIVE_HEADERS),
            server_request_hook=server_request_hook,
        )

    return instrument


@pytest.fixture(params=["http", "", "http/dup"], ids=["stable", "old", "dup"])
def semconv(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", request.param)
    monkeypatch.setattr(_OpenTelemetrySemanticConventionStability, "_initialized", False)
    yield request.param
    monkeypatch.setattr(_OpenTelemetrySemanticConventionStability, "_initialized", False)


def _hook(span: Any, scope: dict[str, Any]) -> None:
    tenant = dict(scope["headers"]).get(b"x-tenant", b"none").decode()
    span.set_attribute("app.tenant", tenant)


def test_the_same_spans_field_by_field(semconv: str) -> None:
    upstream = _serve(_instrument_upstream(_hook))
    otelkit = _serve(_instrument_otelkit(_hook))
    assert (otelkit.middleware, upstream.middleware) == (
        asgi.ServerSpanMiddleware,
        OpenTelemetryMiddleware,
    )
    assert [r.status_code for r in upstream.responses] == [
        200, 200, 201, 500, 503, 418, 404, 405, 405, 200, 200,
    ]  # fmt: skip
    assert [r.status_code for r in otelkit.responses] == [r.status_code for r in upstream.responses]
    assert len(otelkit.spans) == len(upstream.spans) == len(REQUESTS)  # one is excluded, one task
    for ours, theirs in zip(otelkit.spans, upstream.spans, strict=True):
        assert ours == theirs
    names = [span["name"] for span in upstream.spans]
    assert "GET /items/{item_id}" in names and "BackgroundTask _send_mail" in names
    crash = next(span for span in upstream.spans if span["name"] == "GET /crash")
    assert crash["events"][0][0] == "exception" and crash["status"][0] == 2
    remote = next(span for span in upstream.spans if isinstance(span["remote_parent"], tuple))
    assert remote["trace_state"] == "vendor=value"


def test_baggage_and_trace_context_reach_the_app_the_same_way(semconv: str) -> None:
    upstream = _serve(_instrument_upstream())
    otelkit = _serve(_instrument_otelkit())
    assert otelkit.responses[1].json() == upstream.responses[1].json()
    assert upstream.responses[1].json()["baggage"] == {"request_id": "abc", "tenant": "acme"}


def test_the_response_propagator_writes_the_same_header() -> None:
    set_global_response_propagator(TraceResponsePropagator())  # type: ignore[no-untyped-call]
    try:
        upstream = _serve(_instrument_upstream())
        otelkit = _serve(_instrument_otelkit())
    finally:
        set_global_response_propagator(None)  # type: ignore[no-untyped-call]
    for ours, theirs in zip(otelkit.responses, upstream.responses, strict=True):
        assert ("traceresponse" in ours.headers) is ("traceresponse" in theirs.headers)
    header = otelkit.responses[1].headers["traceresponse"]
    assert header.startswith(f"00-{TRACE_ID}-") and header.endswith("-01")


def test_an_app_the_package_already_traces_gets_no_second_server_span() -> None:
    from otelkit.presets.instrument import _instrument_contrib

    def both(app: FastAPI, provider: TracerProvider) -> None:
        _instrument_upstream()(app, provider)
        _instrument_contrib(app, ("/health/live",), None, None, None, {})

    served = _serve(both)
    assert served.middleware is OpenTelemetryMiddleware
    assert len(served.spans) == len(REQUESTS)


class _AnyPathRoute(Route):
    """A route subclass with its own matching: matched the package's way."""

    def matches(self, scope: Any) -> tuple[Match, Any]:
        if scope["path"].startswith("/custom"):
            return Match.FULL, {}
        return Match.NONE, {}


def _routed_app() -> FastAPI:
    app = FastAPI()
    orders = APIRouter(prefix="/orders")

    @orders.get("/{order_id}")
    def order(order_id: int) -> None: ...

    @orders.delete("/{order_id}")
    def cancel(order_id: int) -> None: ...

    nested = APIRouter(prefix="/lines")

    @nested.get("/{line}")
    def line(line: str) -> None: ...

    orders.include_router(nested)
    app.include_router(orders, prefix="/v1")

    @app.get("/items/{item_id:int}")
    def item(item_id: int) -> None: ...

    @app.post("/items/{name}")
    def named(name: str) -> None: ...

    @app.api_route("/files/{path:path}", methods=["GET", "put"])
    def files(path: str) -> None: ...

    @app.websocket("/ws")
    async def socket(websocket: Any) -> None: ...

    app.router.routes.append(_AnyPathRoute("/custom", lambda request: None))
    app.mount("/static", Starlette(routes=[Route("/{name}", lambda request: None)]))
    app.router.routes.append(Host("api.{tenant}.test", Starlette()))

    @app.get("/late")
    def late() -> None: ...

    return app


@pytest.mark.parametrize("root_path", ["", "/prefix"])
def test_the_span_name_and_route_are_the_packages(root_path: str) -> None:
    from opentelemetry.instrumentation.fastapi import _get_default_span_details

    app = _routed_app()
    paths = [
        "/v1/orders/5", "/v1/orders/x", "/v1/orders/5/lines/a", "/items/3", "/items/abc",
        "/items", "/files/a/b.txt", "/ws", "/custom/x", "/static/app.js", "/late", "/",
        "/docs", "/openapi.json", "/nowhere", "/v1/orders/",
    ]  # fmt: skip
    methods = ["GET", "get", "POST", "DELETE", "PUT", "PURGE", "", " GET "]
    for path in paths:
        for method in methods:
            for host in (b"shop.test", b"api.acme.test"):
                scope = {
                    "type": "http",
                    "app": app,
                    "method": method,
                    "path": root_path + path,
                    "root_path": root_path,
                    "headers": [(b"host", host)],
                }
                expected = _get_default_span_details(dict(scope))
                assert asgi.http_span_details(dict(scope)) == expected, (method, path, host)
