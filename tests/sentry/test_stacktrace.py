"""Stack trace text -> Sentry exception values, checked against real exceptions."""

from __future__ import annotations

import json
import random
import traceback
from typing import Any

import pytest
from sentry_sdk.utils import event_from_exception

from otelkit.collector.exporters.sentry.stacktrace import parse

from .support import relay_check


def _text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _frames(value: dict[str, Any]) -> list[tuple[str, str | None, int]]:
    frames = value.get("stacktrace", {}).get("frames", [])
    return [(f.get("abs_path"), f.get("function"), f.get("lineno")) for f in frames]


def _sdk_values(exc: BaseException) -> list[dict[str, Any]]:
    event, _ = event_from_exception(exc)
    return list(event["exception"]["values"])


def _raise_inner() -> None:
    raise ValueError("inner problem")


def _raise_chain() -> None:
    try:
        _raise_inner()
    except ValueError as exc:
        raise KeyError("outer") from exc


def _raise_during_handling() -> None:
    try:
        {}["missing"]
    except KeyError:
        json.loads("{broken")


def _caught(func: Any) -> BaseException:
    try:
        func()
    except BaseException as exc:
        return exc
    raise AssertionError("expected an exception")


@pytest.mark.parametrize("func", [_raise_inner, _raise_chain, _raise_during_handling])
def test_python_frames_match_what_sentry_sdk_reports_for_the_same_exception(func: Any) -> None:
    exc = _caught(func)
    parsed = parse(_text(exc))
    expected = _sdk_values(exc)
    assert parsed.platform == "python"
    assert [v["type"] for v in parsed.values] == [v["type"] for v in expected]
    assert [v["value"] for v in parsed.values] == [v["value"] for v in expected]
    for mine, theirs in zip(parsed.values, expected, strict=True):
        assert _frames(mine) == _frames(theirs)
        assert [f.get("in_app") for f in mine["stacktrace"]["frames"]] == [
            not f["abs_path"].startswith(("/usr/", "/root/.pyenv"))
            for f in theirs["stacktrace"]["frames"]
        ]


def test_chained_exceptions_are_oldest_first_with_their_mechanism() -> None:
    values = parse(_text(_caught(_raise_chain))).values
    assert [v["type"] for v in values] == ["ValueError", "KeyError"]
    cause, main = values
    assert main["mechanism"] == {"type": "otel", "handled": True, "exception_id": 0}
    assert cause["mechanism"]["source"] == "__cause__"
    assert cause["mechanism"]["parent_id"] == 0
    # frames oldest call first: the raising function is last
    assert cause["stacktrace"]["frames"][-1]["function"] == "_raise_inner"
    assert cause["stacktrace"]["frames"][-1]["context_line"] == 'raise ValueError("inner problem")'
    context = parse(_text(_caught(_raise_during_handling))).values
    assert context[0]["mechanism"]["source"] == "__context__"
    assert context[1]["module"] == "json.decoder" and context[1]["type"] == "JSONDecodeError"
    library = [
        f for f in context[1]["stacktrace"]["frames"] if f["abs_path"].endswith("decoder.py")
    ]
    assert library and all(f["in_app"] is False and f["module"] == "json.decoder" for f in library)


def _raise_group() -> None:
    def nested() -> None:
        raise ExceptionGroup(
            "outer", [ValueError("v"), ExceptionGroup("inner", [TypeError("t"), KeyError("k")])]
        )

    try:
        nested()
    except* TypeError as group:
        raise RuntimeError("wrapped") from group


def test_exception_groups_keep_every_member_and_its_parent() -> None:
    exc = _caught(_raise_group)
    values = parse(_text(exc)).values
    by_id = {v["mechanism"]["exception_id"]: v for v in values}
    main = values[-1]
    assert main["mechanism"]["exception_id"] == 0 and main["mechanism"]["is_exception_group"]
    leaves = sorted(v["type"] for v in values if not v["mechanism"].get("is_exception_group"))
    assert leaves == ["KeyError", "RuntimeError", "TypeError", "ValueError"]
    for value in values[:-1]:
        parent = by_id[value["mechanism"]["parent_id"]]
        assert value["mechanism"]["exception_id"] > parent["mechanism"]["exception_id"]
    wrapped = next(v for v in values if v["type"] == "RuntimeError")
    assert _frames(wrapped)[-1][1] == "_raise_group"
    relay_check({"platform": "python", "exception": {"values": values}})


def test_syntax_error_points_at_the_bad_line() -> None:
    exc = _caught(lambda: compile("x = (\n", "broken_module.py", "exec"))
    (value,) = parse(_text(exc)).values
    assert value["type"] == "SyntaxError"
    last = value["stacktrace"]["frames"][-1]
    assert (last["filename"], last["lineno"], last["context_line"]) == (
        "broken_module.py",
        1,
        "x = (",
    )


def test_recursion_error_skips_repeat_markers_and_caret_lines() -> None:
    def recurse(n: int) -> int:
        return recurse(n + 1)

    (value,) = parse(_text(_caught(lambda: recurse(0)))).values
    assert value["type"] == "RecursionError"
    lines = [f.get("context_line", "") for f in value["stacktrace"]["frames"]]
    assert all("^" not in line and "Previous line" not in line for line in lines)
    assert "return recurse(n + 1)" in lines


JAVA = """\
java.lang.IllegalStateException: order 7 failed
\tat com.shop.Orders.place(Orders.java:42)
\tat com.shop.Api.handle(Api.java:10)
\tat java.base/java.lang.Thread.run(Thread.java:833)
Caused by: java.sql.SQLException: deadlock
\tat com.shop.Db.exec(Db.java:7)
\t... 3 more
"""

NODE = """\
TypeError: Cannot read properties of undefined (reading 'id')
    at handler (/app/src/server.js:10:15)
    at Layer.handle [as handle_request] (/app/node_modules/express/lib/router/layer.js:95:5)
    at process.processTicksAndRejections (node:internal/process/task_queues:95:5)"""

GO = """\
panic: runtime error: index out of range [5] with length 3

goroutine 1 [running]:
main.lookup(...)
\t/app/main.go:12 +0x1d
github.com/shop/api.(*Server).Serve(0xc000010000)
\t/app/api/server.go:40 +0x25
main.main()
\t/app/main.go:20 +0x25
"""

DOTNET = """\
System.InvalidOperationException: Order failed ---> System.Data.SqlClient.SqlException: Deadlock
   at Shop.Data.Db.Exec(String sql) in /src/Shop/Data/Db.cs:line 42
   --- End of inner exception stack trace ---
   at Shop.Api.OrdersController.Post(Order o) in /src/Shop/Api/OrdersController.cs:line 30
   at Microsoft.AspNetCore.Mvc.Infrastructure.ActionMethodExecutor.Execute()"""


def test_dotnet_trace_with_inner_exception() -> None:
    parsed = parse(DOTNET)
    inner, outer = parsed.values
    assert parsed.platform == "csharp"
    assert (inner["type"], inner["value"], inner["mechanism"]["source"]) == (
        "System.Data.SqlClient.SqlException", "Deadlock", "inner_exception",
    )  # fmt: skip
    assert [
        (f.get("module"), f["function"], f.get("lineno")) for f in outer["stacktrace"]["frames"]
    ] == [
        ("Microsoft.AspNetCore.Mvc.Infrastructure.ActionMethodExecutor", "Execute", None),
        ("Shop.Api.OrdersController", "Post", 30),
    ]
    assert [f["in_app"] for f in outer["stacktrace"]["frames"]] == [False, True]
    assert inner["stacktrace"]["frames"][0]["filename"] == "Db.cs"


def test_java_trace_with_cause() -> None:
    parsed = parse(JAVA, "java.lang.IllegalStateException", "order 7 failed")
    assert parsed.platform == "java"
    cause, main = parsed.values
    assert (main["module"], main["type"], main["value"]) == (
        "java.lang",
        "IllegalStateException",
        "order 7 failed",
    )
    assert (cause["type"], cause["mechanism"]["source"]) == ("SQLException", "cause")
    frames = main["stacktrace"]["frames"]
    assert [(f["module"], f["function"], f.get("lineno")) for f in frames] == [
        ("java.lang.Thread", "run", 833),
        ("com.shop.Api", "handle", 10),
        ("com.shop.Orders", "place", 42),
    ]
    assert [f["in_app"] for f in frames] == [False, True, True]


def test_node_trace() -> None:
    parsed = parse(NODE)
    (value,) = parsed.values
    assert parsed.platform == "node" and value["type"] == "TypeError"
    frames = value["stacktrace"]["frames"]
    assert frames[-1] == {
        "abs_path": "/app/src/server.js", "filename": "/app/src/server.js", "lineno": 10,
        "colno": 15, "in_app": True, "function": "handler",
    }  # fmt: skip
    assert [f["in_app"] for f in frames] == [False, False, True]


def test_go_panic() -> None:
    parsed = parse(GO)
    (value,) = parsed.values
    assert parsed.platform == "go"
    assert (value["type"], value["value"]) == (
        "panic",
        "runtime error: index out of range [5] with length 3",
    )
    assert [
        (f.get("module"), f["function"], f["lineno"]) for f in value["stacktrace"]["frames"]
    ] == [
        ("main", "main", 20),
        ("github.com/shop/api", "(*Server).Serve", 40),
        ("main", "lookup", 12),
    ]


@pytest.mark.parametrize("text", [JAVA, NODE, GO, DOTNET])
def test_other_languages_pass_relay(text: str) -> None:
    parsed = parse(text, "Err", "msg")
    relay_check({"platform": parsed.platform, "exception": {"values": parsed.values}})


def test_unparseable_text_falls_back_to_type_and_message() -> None:
    (value,) = parse(
        "something odd happened\nat no particular place", "pkg.CustomError", "odd"
    ).values
    assert (value["module"], value["type"], value["value"]) == ("pkg", "CustomError", "odd")
    assert "stacktrace" not in value


def test_types_and_modules_are_cut_where_relay_cuts_them() -> None:
    """A type of a megabyte (an app that put something else there) once made the event
    too large for Sentry, and it was dropped whole."""
    python_trace = 'Traceback (most recent call last):\n  File "a.py", line 1, in f\n'
    cases = [
        parse("", "T" * 1_000_000, "m"),
        parse("", "pkg." * 200 + "E" * 300, "m"),
        parse(python_trace + "M" * 300 + "." + "E" * 300 + ": v", "", ""),
    ]
    for parsed in cases:
        value = parsed.values[-1]
        assert len(value["type"]) == 256 and value["type"].endswith("…")
        assert len(value.get("module", "")) <= 256
        relay_check(
            {"platform": parsed.platform or "other", "exception": {"values": parsed.values}}
        )
    assert [len(case.values[-1]["module"]) for case in cases[1:]] == [256, 256]


def test_garbage_never_raises() -> None:
    rng = random.Random(7)
    pieces = [
        "Traceback (most recent call last):", '  File "x.py", line 3, in f', "    code",
        "  | ", "  +-+---- 1 ----", "    | ValueError: v", "\tat a.b(C.java:1)", "    at x (y.js:1:2)",
        "goroutine 1 [running]:", "\t/a.go:1 +0x1", "ValueError: x", "", "    ^^^^", "+---",
        "The above exception was the direct cause of the following exception:",
    ]  # fmt: skip
    for _ in range(300):
        text = "\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        parsed = parse(text, "T", "m")
        assert parsed.values
        relay_check(
            {"platform": parsed.platform or "other", "exception": {"values": parsed.values}}
        )
