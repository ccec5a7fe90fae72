"""Errors from web pages: Chrome/Edge, Firefox and Safari stack traces, release, dist and
the page and browser, as Sentry's JavaScript SDK reports them.

The traces follow each engine's documented ``Error.prototype.stack`` format (V8 for
Chrome and Edge, SpiderMonkey for Firefox, JavaScriptCore for Safari).
"""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from sentry_relay.processing import StoreNormalizer

from otelkit.collector.exporters.sentry.stacktrace import parse

from .standin import sentry_standin
from .support import kv, random_id, raw_span, relay_check, run, trace_request

APP = "https://shop.example/static/js/main.4f2a9c.js"
CHUNK = "https://shop.example/static/js/node_modules_react-dom_index_js.chunk.js"
LODASH = "https://cdn.jsdelivr.net/npm/lodash@4.17.21/lodash.min.js"
REDUX = "https://shop.example/static/js/node_modules/@reduxjs/toolkit/dist/index.js"
HTMX = "https://unpkg.com/htmx.org@1.9.10/dist/htmx.min.js"
PAGE = "https://shop.example/checkout"

CHROME = f"""\
TypeError: Cannot read properties of undefined (reading 'price')
    at priceOf ({APP}:2:10345)
    at Array.map (<anonymous>)
    at {APP}:2:11020
    at async CartView.render ({APP}:3:88)
    at eval (eval at loadPlugin ({APP}:5:120), <anonymous>:1:7)
    at Object.dispatch ({CHUNK}:1:900)
    at {LODASH}:9:3021"""

EDGE = f"""\
TypeError: Cannot read properties of undefined (reading 'price')
    at priceOf ({APP}:2:10345)
    at new Checkout ({APP}:4:51)
    at HTMLButtonElement.<anonymous> ({APP}:6:17)"""

FIREFOX = f"""\
priceOf@{APP}:2:10345
CartView/render/<@{APP}:2:11020
async*render@{APP}:3:88
@{APP} line 5 > eval:1:7
loadPlugin@{APP}:5:120
dispatch@{REDUX}:4:200
@{HTMX}:1:4410
"""

SAFARI = f"""\
priceOf@{APP}:2:10345
map@[native code]
{APP}:2:11020
render@{APP}:3:88
eval code
eval@[native code]
loadPlugin@{APP}:5:120
global code@{PAGE}:14:3"""


def _frame(
    abs_path: str,
    function: str,
    lineno: int | None = None,
    colno: int | None = None,
    in_app: bool = True,
) -> dict[str, Any]:
    filename = abs_path.split("://", 1)[1].partition("/")[2] if "://" in abs_path else abs_path
    frame: dict[str, Any] = {
        "abs_path": abs_path,
        "filename": "/" + filename if "://" in abs_path else filename,
        "function": function,
        "in_app": in_app,
    }
    if lineno is not None:
        frame["lineno"] = lineno
    if colno is not None:
        frame["colno"] = colno
    return frame


# Oldest call first, as Sentry lists frames.
EXPECTED = {
    "chrome": [
        _frame(LODASH, "?", 9, 3021, in_app=False),
        _frame(CHUNK, "Object.dispatch", 1, 900, in_app=False),
        _frame(APP, "eval", 5, 120),
        _frame(APP, "CartView.render", 3, 88),
        _frame(APP, "?", 2, 11020),
        _frame("<anonymous>", "Array.map", in_app=False),
        _frame(APP, "priceOf", 2, 10345),
    ],
    "edge": [
        _frame(APP, "HTMLButtonElement.<anonymous>", 6, 17),
        _frame(APP, "Checkout", 4, 51),
        _frame(APP, "priceOf", 2, 10345),
    ],
    "firefox": [
        _frame(HTMX, "?", 1, 4410, in_app=False),
        _frame(REDUX, "dispatch", 4, 200, in_app=False),
        _frame(APP, "loadPlugin", 5, 120),
        _frame(APP, "eval", 5),
        _frame(APP, "render", 3, 88),
        _frame(APP, "CartView/render/<", 2, 11020),
        _frame(APP, "priceOf", 2, 10345),
    ],
    "safari": [
        _frame(PAGE, "global code", 14, 3),
        _frame(APP, "loadPlugin", 5, 120),
        _frame("[native code]", "eval", in_app=False),
        _frame(APP, "render", 3, 88),
        _frame(APP, "?", 2, 11020),
        _frame("[native code]", "map", in_app=False),
        _frame(APP, "priceOf", 2, 10345),
    ],
}
TRACES = {"chrome": CHROME, "edge": EDGE, "firefox": FIREFOX, "safari": SAFARI}
AGENTS = {
    "chrome": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36",
    "edge": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.2592.87",
    "firefox": "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "safari": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Safari/605.1.15",
}
BROWSER_NAMES = {"chrome": "Chrome", "edge": "Edge", "firefox": "Firefox", "safari": "Safari"}
WEB_RESOURCE = {
    "telemetry.sdk.language": "webjs",
    "service.name": "shop-web",
    "service.version": "2.3.0",
    "sentry.dist": "build-42",
}


@pytest.mark.parametrize("browser", sorted(TRACES))
def test_browser_frames_keep_url_position_function_and_in_app(browser: str) -> None:
    parsed = parse(TRACES[browser], "TypeError", "Cannot read properties of undefined")
    (value,) = parsed.values
    assert parsed.platform == "javascript"
    assert value["type"] == "TypeError"
    assert value["stacktrace"]["frames"] == EXPECTED[browser]
    relay_check({"platform": "javascript", "exception": {"values": parsed.values}})


def test_node_traces_stay_node_and_their_internals_are_not_in_app() -> None:
    parsed = parse(
        "Error: boom\n    at handler (/app/src/server.js:10:15)\n"
        "    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)"
    )
    assert parsed.platform == "node"
    frames = parsed.values[0]["stacktrace"]["frames"]
    assert [(f["abs_path"], f["in_app"]) for f in frames] == [
        ("node:internal/process/task_queues", False),
        ("/app/src/server.js", True),
    ]


def _browser_span(browser: str) -> Span:
    exception = {
        "exception.type": "TypeError",
        "exception.message": "Cannot read properties of undefined (reading 'price')",
        "exception.stacktrace": TRACES[browser],
    }
    attrs = {"url.full": f"{PAGE}?step=2&token=page-secret-token", "user_agent.original": AGENTS[browser]}  # fmt: skip
    return raw_span(random_id(16), random_id(8), name="click checkout", attrs=attrs,
                    error=True, exception=exception)  # fmt: skip


@pytest.mark.parametrize("browser", sorted(TRACES))
def test_browser_error_event_has_platform_release_dist_page_and_browser(browser: str) -> None:
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [trace_request([_browser_span(browser)], **WEB_RESOURCE)])
        (event,) = standin.items("event")
    assert event["platform"] == "javascript"
    assert (event["release"], event["dist"]) == ("shop-web@2.3.0", "build-42")
    assert event["request"] == {
        "url": PAGE,
        "query_string": "step=2&token=[Filtered]",
        "headers": {"User-Agent": AGENTS[browser]},
    }
    assert event["exception"]["values"][-1]["stacktrace"]["frames"] == EXPECTED[browser]
    relay_check(event)
    # Sentry derives the browser context from the User-Agent, as for its own JS SDK.
    normalized = StoreNormalizer(normalize_user_agent=True).normalize_event(event)
    assert normalized["contexts"]["browser"]["name"] == BROWSER_NAMES[browser]
    assert normalized["dist"] == "build-42"


def test_browser_log_record_error_gets_the_page_and_the_browser_of_the_resource() -> None:
    record = LogRecord(severity_number=17, trace_id=random_id(16), span_id=random_id(8))
    record.body.string_value = "checkout failed"
    record.attributes.extend(
        [
            kv("exception.type", "TypeError"),
            kv("exception.stacktrace", FIREFOX),
            kv("url.full", PAGE),
        ]
    )
    logs = ExportLogsServiceRequest()
    resource_logs = logs.resource_logs.add()
    # The web SDK's browser detector puts the user agent on the resource.
    resource = {**WEB_RESOURCE, "browser.platform": "Linux", "user_agent.original": AGENTS["firefox"]}  # fmt: skip
    resource_logs.resource.attributes.extend(kv(k, v) for k, v in resource.items())
    resource_logs.scope_logs.add().log_records.append(record)
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [logs])
        (event,) = standin.items("event")
    assert (event["platform"], event["dist"]) == ("javascript", "build-42")
    assert event["request"] == {"url": PAGE, "headers": {"User-Agent": AGENTS["firefox"]}}
    assert event["exception"]["values"][-1]["stacktrace"]["frames"] == EXPECTED["firefox"]
    relay_check(event)


def test_a_fetch_span_url_is_not_taken_for_the_page() -> None:
    span = _browser_span("chrome")
    span.kind = Span.SPAN_KIND_CLIENT
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [trace_request([span], **WEB_RESOURCE)])
        (event,) = standin.items("event")
    assert event["request"] == {"headers": {"User-Agent": AGENTS["chrome"]}}


def test_dist_is_made_acceptable_to_sentry_and_needs_a_release() -> None:
    span = _browser_span("chrome")
    odd = {**WEB_RESOURCE, "sentry.dist": "build 42/linux " + "x" * 80}
    without_release = {**WEB_RESOURCE, "service.version": ""}
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [trace_request([span], **odd)])
        run({"dsn": standin.dsn}, [trace_request([span], **without_release)])
        first, second = standin.items("event")
    assert first["dist"].startswith("build-42-linux-x") and len(first["dist"]) == 64
    relay_check(first)
    assert "dist" not in second
