"""``otelkit logs query`` and ``otelkit logs tail`` as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from otelkit.cli import main
from otelkit.logstore.store import open_store
from tests.logstore.conftest import random_trace_id
from tests.logstore.requests import SECOND, Rec, request

TRACE = random_trace_id()


@pytest.fixture
def filled(store_url: str) -> str:
    store = open_store(store_url)
    store.start_writer()
    now = time.time_ns()
    records = [
        Rec("cart loaded", severity=9, ts=now - 30 * SECOND, trace_id=TRACE),
        Rec("card declined\nretrying", severity=17, ts=now - 20 * SECOND, trace_id=TRACE),
        Rec({"event": "refund", "amount": 12.5}, severity=13, ts=now - 10 * SECOND),
        Rec("yesterday's line", severity=9, ts=now - 86400 * SECOND),
    ]
    store.submit(request(records, service="checkout")).result(timeout=30)
    store.close()
    return store_url


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["logs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_query_prints_a_table_newest_first(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "query", "--url", filled, "--since", "1h")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3
    assert "WARN" in lines[0] and '{"event": "refund", "amount": 12.5}' in lines[0]
    assert "ERROR" in lines[1] and TRACE.hex() in lines[1]
    assert "card declined⏎retrying" in lines[1]
    assert "checkout" in lines[2] and "cart loaded" in lines[2]


def test_query_filters_and_json_output(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "query", "--url", filled, "--trace-id", TRACE.hex(), "--json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["body"] for r in records] == ["cart loaded", "card declined\nretrying"]
    code, out, _ = run(capsys, "query", "--url", filled, "--severity", "warn", "--grep", "refund")
    assert code == 0 and len(out.splitlines()) == 1


def test_one_records_text_cannot_split_its_line_or_act_on_the_terminal(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """ESC sequences once reached the terminal as sent: erase the line above (another
    record's), hide the rest; a CR or a newline in the severity text split a line."""
    store = open_store(store_url)
    store.start_writer()
    now = time.time_ns()
    hostile = [
        Rec("\x1b[1A\x1b[2Kerased the line above", ts=now - 3 * SECOND),
        Rec("\x1b[8mhides what follows\x9b0m", severity_text="ERROR\nforged", ts=now - 2 * SECOND),
        Rec("carriage\rreturn\x00nul\x7f\u2028sep\ttab", ts=now - SECOND),
    ]
    store.submit(request([Rec("the line above", ts=now - 4 * SECOND)])).result(timeout=30)
    store.submit(request(hostile, service="shop\x1b]0;title\x07")).result(timeout=30)
    store.close()
    code, out, _ = run(capsys, "query", "--url", store_url, "--order", "oldest")
    assert code == 0
    lines = out.removesuffix("\n").split("\n")
    assert len(lines) == 4 and lines[0].endswith("  the line above")
    assert lines[1].endswith("\\x1b[1A\\x1b[2Kerased the line above")
    assert "ERROR⏎forged" in lines[2] and "\\x1b[8mhides what follows\\x9b0m" in lines[2]
    assert "shop\\x1b]0;title\\x07" in lines[3]
    nul = "\\x00" if store_url.startswith("sqlite") else "\ufffd"  # PostgreSQL: no NUL
    assert lines[3].endswith(f"carriage\\x0dreturn{nul}nul\\x7f\\u2028sep\ttab")
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]", out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--severity", "loud"], "--severity: unknown severity 'loud'"),
        (["--trace-id", "123"], "--trace-id: '123' is not a trace ID"),
        (["--from", "last tuesday"], "--from: 'last tuesday' is not a time"),
        (["--limit", "0"], "--limit: must be between 1 and 10000"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    filled: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, "query", "--url", filled, *args)
    assert code == 2
    assert out == ""
    assert message in err


def test_missing_store_is_an_error_not_a_new_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "query", "--url", f"sqlite:///{tmp_path / 'absent.db'}")
    assert code == 1
    assert "no log store at" in err
    assert not (tmp_path / "absent.db").exists()


def test_url_from_the_environment(
    filled: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTELKIT_LOGSTORE_URL", filled)
    proc = subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "logs", "query", "--limit", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["severity_number"] == 13


def test_tail_shows_the_last_lines_then_follows(filled: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "otelkit.cli", "logs", "tail", "--url", filled, "-n", "2",
         "--json", "--interval", "0.2", "--max-polls", "50", "--service", "checkout"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = [json.loads(proc.stdout.readline())["body"] for _ in range(2)]
        assert first == ["card declined\nretrying", {"event": "refund", "amount": 12.5}]
        store = open_store(filled)
        store.start_writer()
        old = time.time_ns() - 3600 * SECOND
        # A late record with an old timestamp still shows: tail follows arrival order.
        store.submit(request([Rec("late arrival", ts=old), Rec("new line")])).result(30)
        store.submit(request([Rec("other service")], service="auth")).result(30)
        store.close()
        followed = [json.loads(proc.stdout.readline())["body"] for _ in range(2)]
        assert followed == ["late arrival", "new line"]
    finally:
        proc.kill()
        proc.wait(10)


def test_a_file_that_is_not_a_store_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("just some text, long enough to be read as a header")
    code, _, err = run(capsys, "query", "--url", f"sqlite:///{tmp_path / 'notes.txt'}")
    assert code == 1
    assert "file is not a database" in err or "not an otelkit log store" in err
