"""The CI gate: exit 0 when every budget holds, 3 when one is broken, 2 on usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from otelkit.collector.pdata.otlp_json import encode_request
from tests.budgets.spans import S, request

BUDGETS = """
budgets:
  checkout:
    match: {service: shop-api, route: /checkout}
    max: 1s
    objectives: ["p95 < 300ms over 5m"]
  search:
    match: {service: shop-api, span_name: "GET /search*"}
    objectives: ["p(50)<100"]
  unused:
    match: {service: other}
    max: 1s
"""


def checkout(ms: float) -> S:
    return S("POST /checkout", ms=ms, attrs={"http.route": "/checkout"})


def gate(
    tmp_path: Path, *lines: bytes, budgets: str = BUDGETS, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "budgets.yaml").write_text(budgets)
    traces = tmp_path / "traces.jsonl"
    traces.write_bytes(b"".join(line + b"\n" for line in lines))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "otelkit.cli",
            "budgets",
            "check",
            "--budgets",
            str(tmp_path / "budgets.yaml"),
            *flags,
            str(traces),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def fast_run() -> list[bytes]:
    first = request([checkout(100 + i) for i in range(10)] + [S("GET /search?q=a", ms=20)])
    second = request([checkout(200 + i) for i in range(10)])
    return [encode_request(first), encode_request(second)]


def test_passing_trace_file_exits_0_with_a_table(tmp_path: Path) -> None:
    result = gate(tmp_path, *fast_run(), flags=("--allow-unmatched",))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["budget", "spans", "p50", "ms", "p95"]
    checkout_row = next(line for line in lines if line.startswith("checkout"))
    assert checkout_row.split()[1] == "20"  # spans from both requests
    assert "ok" in checkout_row
    assert "no spans" in next(line for line in lines if line.startswith("unused"))
    assert lines[-1] == "all budgets hold"


def test_a_budget_that_matched_no_span_fails_with_its_own_code(tmp_path: Path) -> None:
    result = gate(tmp_path, *fast_run())
    assert result.returncode == 4, result.stdout + result.stderr
    assert "budget unused matched no spans: service=other" in result.stderr
    assert "budget checkout matched" not in result.stderr
    assert "--allow-unmatched" in result.stdout.splitlines()[-1]
    every_budget_used = BUDGETS.partition("  unused:")[0]
    assert gate(tmp_path, *fast_run(), budgets=every_budget_used).returncode == 0


def test_no_selector_matching_any_span_is_not_a_pass(tmp_path: Path) -> None:
    renamed = BUDGETS.replace("route: /checkout", "route: /cart").replace("GET /search", "GET /q")
    result = gate(tmp_path, *fast_run(), budgets=renamed)
    assert result.returncode == 4
    for selector in ("checkout matched no spans: service=shop-api route=/cart",
                     "search matched no spans: service=shop-api span_name=GET /q*"):  # fmt: skip
        assert selector in result.stderr
    allowed = gate(tmp_path, *fast_run(), budgets=renamed, flags=("--allow-unmatched",))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_a_broken_budget_outranks_an_unmatched_one(tmp_path: Path) -> None:
    result = gate(tmp_path, *fast_run(), encode_request(request([checkout(1500)])))
    assert result.returncode == 3
    assert "budget unused matched no spans" in result.stderr


def test_slower_endpoint_breaks_the_budget_and_exits_3(tmp_path: Path) -> None:
    slower = request([checkout(400) for _ in range(3)])  # p95 over 300ms
    result = gate(tmp_path, *fast_run(), encode_request(slower))
    assert result.returncode == 3, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("checkout"))
    assert "p95<300ms 400.0 BROKEN" in row and row.endswith("BROKEN")


def test_one_span_over_the_ceiling_breaks_the_budget(tmp_path: Path) -> None:
    result = gate(tmp_path, *fast_run(), encode_request(request([checkout(1500)])))
    assert result.returncode == 3
    assert "1 (max 1000ms)" in result.stdout


# 1.005s is 1004.9999999999999 ms in floating point: a span of exactly 1005 ms is at it.
@pytest.mark.parametrize(("ceiling", "exact_ms"), [("1s", 1000), ("1.005s", 1005)])
@pytest.mark.parametrize(("offset_ns", "code"), [(-1, 0), (0, 0), (1, 3)])
def test_a_span_exactly_at_its_ceiling_passes_the_gate(
    tmp_path: Path, ceiling: str, exact_ms: int, offset_ns: int, code: int
) -> None:
    budgets = f"budgets: {{checkout: {{match: {{route: /checkout}}, max: {ceiling}}}}}"
    span = S("POST /checkout", attrs={"http.route": "/checkout"}, ns=exact_ms * 10**6 + offset_ns)
    result = gate(tmp_path, encode_request(request([span])), budgets=budgets)
    assert result.returncode == code, result.stdout + result.stderr
    assert f"{1 if code else 0} (max {exact_ms}ms)" in result.stdout


def test_other_signals_in_the_file_are_skipped(tmp_path: Path) -> None:
    logs = b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"hi"}}]}]}]}'
    assert gate(tmp_path, logs, *fast_run(), flags=("--allow-unmatched",)).returncode == 0


@pytest.mark.parametrize("case", ["bad budgets", "missing traces", "not otlp"])
def test_usage_errors_exit_2(tmp_path: Path, case: str) -> None:
    if case == "bad budgets":
        result = gate(tmp_path, *fast_run(), budgets="budgets: {x: {max: soon}}")
        assert "budgets.x.max" in result.stderr
    elif case == "not otlp":
        result = gate(tmp_path, b'{"hello": 1}')
        assert "cannot read traces" in result.stderr
    else:
        (tmp_path / "budgets.yaml").write_text(BUDGETS)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "otelkit.cli",
                "budgets",
                "check",
                "--budgets",
                str(tmp_path / "budgets.yaml"),
                str(tmp_path / "nope.jsonl"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 2, result.stdout + result.stderr


def test_missing_arguments_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "budgets", "check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2


FILE_COLLECTOR = """
receivers:
  otlp: {protocols: {grpc: {endpoint: "127.0.0.1:{grpc}"}}}
exporters:
  file: {path: "{out}", flush_interval: 100ms}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [file]}
"""


@pytest.mark.parametrize(("slow_ms", "code"), [(50, 0), (450, 3)])
def test_gate_on_the_file_exporters_output_of_an_instrumented_run(
    tmp_path: Path, slow_ms: int, code: int
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    from tests.support.collector import allocate_ports, collector

    out = tmp_path / "traces.jsonl"
    ports = allocate_ports("grpc")
    with collector(FILE_COLLECTOR.replace("{out}", str(out)), tmp_path, ports=ports) as running:
        provider = TracerProvider(resource=Resource.create({"service.name": "shop-api"}))
        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=f"127.0.0.1:{ports['grpc']}", insecure=True)
            )
        )
        tracer = provider.get_tracer("ci")
        for i in range(20):
            start = 1_700_000_000_000_000_000 + i * 10**9
            ms = slow_ms if i % 2 else 40
            span = tracer.start_span(
                "POST /checkout",
                kind=SpanKind.SERVER,
                start_time=start,
                attributes={"http.route": "/checkout"},
            )
            span.end(end_time=start + ms * 10**6)
        provider.shutdown()
        assert running.stop() == 0
    (tmp_path / "budgets.yaml").write_text(BUDGETS)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "otelkit.cli",
            "budgets",
            "check",
            "--budgets",
            str(tmp_path / "budgets.yaml"),
            "--allow-unmatched",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == code, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("checkout"))
    assert row.split()[1] == "20"
