"""The access record's stdout line is the same whether it is written straight from the
request's facts (otelkit's JSON handler the only one that would see the record) or made
into a ``LogRecord`` and formatted by the handler; anything else that would see the
record (a handler, a logger filter, a record factory) still gets it."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, use_span

from otelkit.presets import access, logs
from otelkit.presets.context import enter_request, exit_request, set_user
from otelkit.presets.logs import JsonFormatter, OtlpHandler, StdoutHandler

SPAN = NonRecordingSpan(
    SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, False, TraceFlags(1))
)
TIME = re.compile(r'"time":"[^"]*"')


class Route:
    path = "/orders/{order_id}"


@pytest.fixture
def stdout() -> Iterator[io.StringIO]:
    """Where otelkit's stdout handler writes; see :func:`_otelkit_handlers_only`."""
    root = logging.getLogger()
    saved = (
        root.handlers[:],
        root.level,
        logging.getLogRecordFactory(),
        logs._factory_installed[0],
    )
    saved_access = (access._state.enabled, access._state.capture_client)
    root.setLevel(logging.INFO)
    logging.setLogRecordFactory(logging.LogRecord)
    logs._factory_installed[0] = False
    logs.install_record_factory()
    access._state.enabled = True
    try:
        yield io.StringIO()
    finally:
        root.handlers[:], level, factory, logs._factory_installed[0] = saved
        root.setLevel(level)
        logging.setLogRecordFactory(factory)
        access._state.enabled, access._state.capture_client = saved_access
        access.ACCESS_LOGGER.filters.clear()


def _otelkit_handlers_only(out: io.StringIO) -> None:
    """otelkit's handlers alone on the root logger (stdout and OTLP, access records on
    stdout only), as ``configure()`` leaves them (pytest adds its own for each test)."""
    handler = StdoutHandler(JsonFormatter("shop", "production"), "stdout")
    handler.setStream(out)
    otlp = OtlpHandler(LoggerProvider(), "stdout", code_attributes=False)
    logging.getLogger().handlers[:] = [handler, otlp]


def _request(status: int, body_size: int, route: bool, user: bool, span: bool) -> None:
    scope: dict[str, Any] = {"method": "GET", "path": "/orders/5", "client": ("10.0.0.7", 5)}
    if route:
        scope["route"] = Route()
    token = enter_request("req-1")
    try:
        if user:
            set_user(7, plan="pro")
        if span:
            with use_span(SPAN):
                access.log_access(scope, status, body_size, 12_345_678)
        else:
            access.log_access(scope, status, body_size, 12_345_678)
    finally:
        exit_request(token)


def _lines(out: io.StringIO) -> list[str]:
    return [TIME.sub('"time":"T"', line) for line in out.getvalue().splitlines()]


CASES = [
    (200, 27, True, False, True),
    (404, 22, False, False, True),
    (503, -1, True, True, True),
    (200, 27, True, True, False),
]


@pytest.mark.parametrize(("status", "body_size", "route", "user", "span"), CASES)
@pytest.mark.parametrize("client", [False, True])
def test_the_line_is_the_formatters_byte_for_byte(
    stdout: io.StringIO,
    status: int,
    body_size: int,
    route: bool,
    user: bool,
    span: bool,
    client: bool,
) -> None:
    _otelkit_handlers_only(stdout)
    access._state.capture_client = client
    _request(status, body_size, route, user, span)
    access.ACCESS_LOGGER.addFilter(lambda record: True)  # a record is made and formatted
    _request(status, body_size, route, user, span)
    direct, formatted = _lines(stdout)
    assert direct == formatted
    assert ('"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"' in direct) is span


def test_the_line_is_written_without_a_record_when_only_otelkit_would_see_it(
    stdout: io.StringIO,
) -> None:
    _otelkit_handlers_only(stdout)
    with use_span(SPAN):
        assert logs.write_access_line(access.ACCESS_LOGGER, logging.INFO, "GET / 200 1.0ms", {})
    assert len(stdout.getvalue().splitlines()) == 1


def test_another_handler_still_gets_the_record(stdout: io.StringIO) -> None:
    _otelkit_handlers_only(stdout)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    _request(200, 27, True, False, True)
    assert [record.name for record in seen] == [logs.ACCESS_LOGGER_NAME]
    assert seen[0].getMessage() == "GET /orders/5 200 12.3ms"
    assert len(stdout.getvalue().splitlines()) == 1


def test_a_record_factorys_fields_and_a_logger_filter_are_honoured(stdout: io.StringIO) -> None:
    _otelkit_handlers_only(stdout)
    previous = logging.getLogRecordFactory()

    def tagged(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.region = "eu"
        return record

    logging.setLogRecordFactory(tagged)
    _request(200, 27, True, False, True)
    assert '"region":"eu"' in stdout.getvalue()
    access.ACCESS_LOGGER.addFilter(lambda record: record.levelno > logging.INFO)
    _request(200, 27, True, False, True)
    _request(500, 27, True, False, True)
    assert [line.count('"level":"ERROR"') for line in _lines(stdout)] == [0, 1]


def test_an_apps_extra_may_name_the_request_fields_otelkit_adds(stdout: io.StringIO) -> None:
    """An application that already logs its own ``request_id`` (or a field ``set_user``
    adds) keeps working inside a request: its value is the record's, where ``logging``
    would raise ``KeyError`` for a field the record factory set."""
    _otelkit_handlers_only(stdout)
    token = enter_request("req-1")
    try:
        set_user(7, plan="pro")
        with use_span(SPAN):
            logging.getLogger("shop").info(
                "paid", extra={"request_id": "mine", "enduser.plan": "team", "amount": 3}
            )
            with pytest.raises(KeyError):  # what no factory added still may not be overwritten
                logging.getLogger("shop").info("paid", extra={"message": "x"})
    finally:
        exit_request(token)
    [line] = _lines(stdout)
    assert '"request_id":"mine"' in line and '"enduser.plan":"team"' in line
    assert '"user_id":"7"' in line and '"amount":3' in line


def test_the_access_record_is_written_when_the_user_set_the_client_address(
    stdout: io.StringIO,
) -> None:
    """``set_user(ip=...)`` with PII allowed puts ``client.address`` on the request's
    records; the access record, which has its own, is still written (the request does not
    fail in the middleware)."""
    _otelkit_handlers_only(stdout)
    access._state.capture_client = True
    scope: dict[str, Any] = {"method": "GET", "path": "/orders/5", "client": ("10.0.0.7", 5)}
    token = enter_request("req-1")
    try:
        set_user(7, ip="203.0.113.9", allow_pii=True)
        with use_span(SPAN):
            access.log_access(scope, 200, 27, 12_345_678)
            access.ACCESS_LOGGER.addFilter(lambda record: True)  # a record is made
            access.log_access(scope, 200, 27, 12_345_678)
    finally:
        exit_request(token)
    line, formatted = _lines(stdout)
    assert line == formatted
    assert '"message":"GET /orders/5 200 12.3ms"' in line
    assert '"client.address":"10.0.0.7"' in line and '"user_id":"7"' in line
