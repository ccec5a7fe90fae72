"""In-process checks of the pieces that need no global SDK state."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import httpx
import pytest

from otelkit.presets.context import current_request, user_attributes
from otelkit.presets.health import CallableCheck, HealthRegistry, health_document
from otelkit.presets.instrument import excluded_urls_pattern
from otelkit.presets.logs import JsonFormatter
from otelkit.presets.requestid import RequestIdMiddleware, valid_request_id
from otelkit.presets.settings import Settings, parse_resource_attributes
from otelkit.presets.sql import sanitize_sql


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT * FROM users WHERE email = 'a@b.c'", "SELECT * FROM users WHERE email = ?"),
        ("SELECT 'it''s' , 42, 3.5e2 FROM t1", "SELECT ? , ?, ? FROM t1"),
        ("SELECT %(v)s + 1 FROM t WHERE id = $1", "SELECT %(v)s + ? FROM t WHERE id = $1"),
        ("UPDATE t SET x = :x WHERE y = ?", "UPDATE t SET x = :x WHERE y = ?"),
    ],
)
def test_sanitize_sql_removes_literals_and_keeps_placeholders(
    statement: str, expected: str
) -> None:
    assert sanitize_sql(statement) == expected


def test_environment_picks_log_level_and_format_and_every_trace_is_kept() -> None:
    dev = Settings.resolve({"OTELKIT_ENVIRONMENT": "development"})
    assert (dev.log_level, dev.log_format) == ("DEBUG", "text")
    prod = Settings.resolve({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=production"})
    assert (prod.log_level, prod.log_format) == ("INFO", "json")
    for settings in (dev, prod, Settings.resolve({})):
        assert (settings.sampler, settings.sampler_arg) == ("parentbased_always_on", None)


@pytest.mark.parametrize(
    ("env", "ratio", "expected"),
    [
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            None,
            ("traceidratio", 0.1),
        ),
        (
            {"OTEL_TRACES_SAMPLER": "PARENTBASED_TRACEIDRATIO"},
            None,
            ("parentbased_traceidratio", None),
        ),
        ({"OTEL_TRACES_SAMPLER_ARG": "0.1"}, None, ("parentbased_always_on", None)),
        (
            {"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "x"},
            None,
            ("always_on", None),
        ),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, 0.5, ("parentbased_traceidratio", 0.5)),
    ],
)
def test_a_sampling_ratio_is_used_only_where_the_user_chose_one(
    env: dict[str, str], ratio: float | None, expected: tuple[str, float | None]
) -> None:
    settings = Settings.resolve(env, sample_ratio=ratio)
    assert (settings.sampler, settings.sampler_arg) == expected


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half"])
def test_a_ratio_outside_zero_to_one_is_refused(value: str) -> None:
    env = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": value}
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG"):
        Settings.resolve(env)
    with pytest.raises(ValueError, match="sample_ratio"):
        Settings.resolve({}, sample_ratio=1.5)


def test_explicit_choices_win_over_the_environment_defaults() -> None:
    settings = Settings.resolve(
        {
            "OTELKIT_ENVIRONMENT": "production",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_PYTHON_LOG_LEVEL": "warning",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        },
        service_name="shop",
    )
    assert settings.sampler == "always_on"
    assert settings.log_level == "WARNING"
    assert settings.protocol == "http/protobuf"
    assert settings.service_name == "shop"
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        Settings.resolve({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"})


def test_resource_attributes_are_percent_decoded() -> None:
    assert parse_resource_attributes("a=1, b=x%20y,broken") == {"a": "1", "b": "x y"}


def test_pii_is_left_out_unless_allowed() -> None:
    attrs = user_attributes("7", {"email": "a@b.c", "ip": "10.0.0.1", "plan": "pro"}, allow=False)
    assert attrs == {"enduser.id": "7", "enduser.plan": "pro"}
    allowed = user_attributes("7", {"email": "a@b.c", "ip": "10.0.0.1"}, allow=True)
    assert allowed["user.email"] == "a@b.c" and allowed["client.address"] == "10.0.0.1"


@pytest.mark.parametrize(
    ("value", "valid"),
    [("abc-123.X:y_z", True), ("", False), ("a b", False), ("x" * 129, False), ("é", False)],
)
def test_request_id_validation(value: str, valid: bool) -> None:
    assert valid_request_id(value) is valid


async def _echo_app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    request = current_request()
    body = json.dumps({"request_id": request.request_id if request else None}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": body})  # type: ignore[operator]


def test_middleware_keeps_good_ids_replaces_bad_ones_and_echoes_them() -> None:
    app = RequestIdMiddleware(_echo_app)  # type: ignore[arg-type]

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return [
                await client.get("/", headers={"X-Request-ID": "keep-me"}),
                await client.get("/", headers={"X-Request-ID": "drop me"}),
                await client.get("/"),
            ]

    kept, replaced, generated = asyncio.run(scenario())
    assert kept.headers["x-request-id"] == "keep-me" == kept.json()["request_id"]
    assert replaced.headers["x-request-id"] != "drop me"
    assert replaced.json()["request_id"] == replaced.headers["x-request-id"]
    assert len(generated.headers["x-request-id"]) == 32
    assert current_request() is None


def test_json_formatter_writes_one_object_with_context_and_exception() -> None:
    formatter = JsonFormatter(service="shop", environment="production")
    try:
        raise KeyError("missing")
    except KeyError:
        record = logging.LogRecord(
            "app", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info()
        )
    record.request_id = "r-1"
    entry = json.loads(formatter.format(record))
    assert entry["message"] == "failed x" and entry["level"] == "ERROR" and entry["logger"] == "app"
    assert entry["request_id"] == "r-1" and entry["service"] == "shop"
    assert entry["exception_type"] == "KeyError" and "Traceback" in entry["exception"]
    assert entry["time"].endswith("Z")


def test_health_checks_run_concurrently_once_per_cache_period() -> None:
    calls = []

    async def slow_ok() -> None:
        calls.append(1)
        await asyncio.sleep(0.05)

    async def hangs() -> None:
        await asyncio.sleep(10)

    registry = HealthRegistry(
        [CallableCheck(slow_ok), CallableCheck(hangs), CallableCheck(lambda: False, "falsy")],
        timeout=0.2,
        cache_ttl=60,
    )

    async def storm() -> list[list[object]]:
        return await asyncio.gather(*(registry.results() for _ in range(20)))  # type: ignore[arg-type]

    rounds = asyncio.run(storm())
    assert len(calls) == 1
    document = health_document(rounds[0])  # type: ignore[arg-type]
    assert document["status"] == "fail"
    assert document["checks"]["slow_ok"][0]["status"] == "pass"
    assert "timed out" in document["checks"]["hangs"][0]["output"]
    assert document["checks"]["falsy"][0]["status"] == "fail"


def test_excluded_paths_match_exactly() -> None:
    import re

    patterns = excluded_urls_pattern(["/health", "/health/live"]).split(",")

    def excluded(url: str) -> bool:
        return any(re.search(pattern, url) for pattern in patterns)

    assert excluded("http://h/health") and excluded("http://h/health/live?x=1")
    assert not excluded("http://h/healthy") and not excluded("http://h/health/other")
    assert not excluded("http://h/api/health")


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, "request_id=r-9"),
        ("team=a", "team=a,request_id=r-9"),
        ("request_id=up", "request_id=up"),
    ],
)
def test_outgoing_requests_carry_the_request_id(existing: str | None, expected: str) -> None:
    from otelkit.presets.context import enter_request, exit_request
    from otelkit.presets.instrument import _request_hook

    request = httpx.Request(
        "GET", "http://down/", headers={"baggage": existing} if existing else {}
    )
    token = enter_request("r-9")
    try:
        _request_hook(None, request)
    finally:
        exit_request(token)
    assert request.headers["x-request-id"] == "r-9"
    assert request.headers["baggage"] == expected


def test_a_log_call_is_read_once_for_stdout_and_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stdout line and the exported record come from one reading of the record: its
    attributes are collected and its traceback formatted a single time."""
    import io

    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        InMemoryLogRecordExporter,
        SimpleLogRecordProcessor,
    )

    from otelkit.presets import logs

    readings = []
    read = logs._read
    monkeypatch.setattr(logs, "_read", lambda record: readings.append(record) or read(record))
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    out = io.StringIO()
    stdout = logs.StdoutHandler(JsonFormatter(service="shop"), "both")
    stdout.setStream(out)
    logger = logging.getLogger("test.read-once")
    logger.propagate = False
    for handler in (stdout, logs.OtlpHandler(provider, "both", code_attributes=False)):
        logger.addHandler(handler)
    try:
        raise ValueError("bad input")
    except ValueError:
        logger.exception("order %s failed", 7, extra={"order.id": 7})
    assert len(readings) == 1
    line = json.loads(out.getvalue())
    (exported,) = exporter.get_finished_logs()
    record = exported.log_record
    assert record.body == line["message"] == "order 7 failed"
    assert record.attributes is not None
    assert record.attributes["order.id"] == line["order.id"] == 7
    assert record.attributes["exception.stacktrace"].rstrip("\n") == line["exception"]
    assert record.attributes["exception.type"] == line["exception_type"] == "ValueError"


def test_access_log_setting_takes_four_values() -> None:
    assert Settings.resolve({}).access_log == "stdout"
    assert Settings.resolve({"OTELKIT_ACCESS_LOG": "OTLP"}).access_log == "otlp"
    with pytest.raises(ValueError, match="OTELKIT_ACCESS_LOG='loud' is not supported"):
        Settings.resolve({"OTELKIT_ACCESS_LOG": "loud"})
