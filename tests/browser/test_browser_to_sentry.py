"""A real browser: headless Chromium loads a page instrumented with the OpenTelemetry web
SDK (bundled by esbuild, with a source map) from one origin; the page sends a span with a
recorded exception, with a bearer token, through CORS to an ``otelkit collector run`` on
another origin, whose Sentry exporter sends the error to the Sentry stand-in. The event's
top frame, resolved with the bundle's source map, lands on the line of the page's source
that threw.
"""

from __future__ import annotations

import http.client
import json
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode

from sentry_relay.processing import StoreNormalizer

from otelkit.collector.pdata.otlp_json import iter_file
from tests.browser.page_build import SOURCE, build_page, original_position
from tests.sentry.standin import sentry_standin
from tests.sentry.support import relay_check
from tests.support.collector import allocate_ports, collector
from tests.support.services import free_port, require_binary

log = logging.getLogger(__name__)
TOKEN = "browser-token-6c1f0a"  # the page's own token (a second entry in tokens)
DIST = "build-7"
CONFIG = """
extensions:
  bearertokenauth: {tokens: ["server-token-0b8e2d", "%(token)s"]}
receivers:
  otlp:
    protocols:
      http:
        endpoint: "127.0.0.1:{http}"
        auth: {authenticator: bearertokenauth}
        cors:
          allowed_origins: ["%(origin)s"]
          allowed_headers: [Authorization]
          max_age: 7200
processors:
  redaction: {allow_all_keys: true, summary: silent}
  batch: {timeout: 50ms}
exporters:
  sentry: {dsn: "%(dsn)s", trace_wait: 300ms}
  file: {path: "%(spans)s"}
service:
  extensions: [bearertokenauth]
  pipelines:
    traces: {receivers: [otlp], processors: [redaction, batch], exporters: [sentry, file]}
"""
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=10000", "--dump-dom",
)  # fmt: skip


@dataclass
class Exchange:
    """One request through the relay and its answer, as the browser saw them."""

    method: str
    path: str
    request_headers: dict[str, str]
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    started: float = 0.0
    seconds: float = 0.0


@contextmanager
def recording_relay(upstream_port: int) -> Iterator[tuple[int, list[Exchange]]]:
    """A reverse proxy on its own port that forwards every request to the collector as it
    came (the browser's Origin and preflight headers included) and records both sides."""
    exchanges: list[Exchange] = []

    class Relay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            exchange = Exchange(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                started=time.monotonic(),
            )  # fmt: skip
            upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
            exchange.status = answer.status
            exchange.response_headers = {k.lower(): v for k, v in answer.getheaders()}
            exchange.seconds = time.monotonic() - exchange.started
            exchanges.append(exchange)
            upstream.close()
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_OPTIONS = do_POST = _forward  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    with serving(Relay) as port:
        yield port, exchanges


@contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler] | partial[BaseHTTPRequestHandler],
) -> Iterator[int]:
    server = QuietServer(("127.0.0.1", free_port()), handler)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a browser closing its keep-alive connections is no error


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def throwing_line() -> int:
    lines = SOURCE.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if "throw new TypeError" in line)


def run_chromium(url: str, profile: Path) -> str:
    chromium = require_binary("chromium")
    result = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_a_page_in_chromium_reaches_sentry_through_cors_with_frames_the_source_map_resolves(
    tmp_path: Path,
) -> None:
    require_binary("chromium")
    page_dir = tmp_path / "page"
    page_dir.mkdir()
    page = build_page(page_dir)
    spans_file = tmp_path / "spans.jsonl"
    ports = allocate_ports("http")
    with (
        sentry_standin() as standin,
        serving(partial(QuietFiles, directory=str(page))) as page_port,
        recording_relay(ports["http"]) as (relay_port, exchanges),
    ):
        origin = f"http://127.0.0.1:{page_port}"
        config = CONFIG % {"token": TOKEN, "origin": origin, "dsn": standin.dsn,
                           "spans": spans_file}  # fmt: skip
        with collector(config, tmp_path, ports=ports):
            collector_url = f"http://127.0.0.1:{relay_port}"
            query = urlencode({"collector": collector_url, "token": TOKEN, "dist": DIST})
            page_url = f"{origin}/index.html?{query}"
            started = time.monotonic()
            dom = run_chromium(page_url, tmp_path / "profile")
            assert 'id="status">flushed<' in dom, dom[-2000:]
            deadline = time.monotonic() + 30
            while not standin.items("event") and time.monotonic() < deadline:
                time.sleep(0.02)
            event_arrived = time.monotonic()
            (event,) = standin.items("event")

    # The preflight passed: the browser asked for Authorization, the collector allowed it.
    preflight = next(e for e in exchanges if e.method == "OPTIONS")
    assert preflight.path == "/v1/traces"
    assert preflight.request_headers["origin"] == origin
    assert "authorization" in preflight.request_headers["access-control-request-headers"]
    assert preflight.status == 204
    assert preflight.response_headers["access-control-allow-origin"] == origin
    assert "authorization" in preflight.response_headers["access-control-allow-headers"].lower()
    # The span reached the collector, sent with the page's token, and was accepted.
    (export,) = [e for e in exchanges if e.method == "POST"]
    assert export.request_headers["authorization"] == f"Bearer {TOKEN}"
    assert export.status == 200
    assert export.response_headers["access-control-allow-origin"] == origin
    spans = [span for request in iter_file(spans_file) for rs in request.resource_spans
             for ss in rs.scope_spans for span in ss.spans]  # fmt: skip
    assert [span.name for span in spans] == ["checkout click"]
    assert [event.name for event in spans[0].events] == ["exception"]
    log.warning(
        "browser: preflight %.1f ms, export %.1f ms, export to Sentry event %.1f ms, "
        "page load to Sentry event %.1f ms",
        preflight.seconds * 1e3, export.seconds * 1e3,
        (event_arrived - export.started) * 1e3, (event_arrived - started) * 1e3,
    )  # fmt: skip

    # The error event: a browser's, with release and dist for source maps.
    assert event["platform"] == "javascript"
    assert event["release"] == "shop-web@1.4.2"
    assert event["dist"] == DIST
    (value,) = event["exception"]["values"]
    assert value["type"] == "TypeError"
    assert value["value"] == "coupon code too short: ABC"
    top = value["stacktrace"]["frames"][-1]  # Sentry lists frames oldest first
    assert top["abs_path"] == f"{origin}/dist/app.js"
    assert top["in_app"] is True
    resolved = original_position(page, top["lineno"], top["colno"])
    assert str(resolved["source"]).endswith("src/app.js")
    assert resolved["line"] == throwing_line()
    assert resolved["name"] in ("TypeError", None)
    # The page and the browser, as Sentry's JavaScript SDK reports them; no token leaks.
    assert event["request"]["url"] == f"{origin}/index.html"
    assert "HeadlessChrome" in event["request"]["headers"]["User-Agent"]
    assert TOKEN not in json.dumps(event)
    relay_check(event)
    # Sentry derives the browser context from the User-Agent, as for its own JS SDK.
    normalized = StoreNormalizer(normalize_user_agent=True).normalize_event(event)
    assert normalized["contexts"]["browser"]["name"] == "HeadlessChrome"
    assert normalized["contexts"]["os"]["name"] == "Linux"
