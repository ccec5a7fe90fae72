"""Traces -> transactions: assembly across batches, local roots, mapping, sampling."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelkit.collector.exporters.sentry.transactions import TraceAssembler

from .standin import SentryStandIn, sentry_standin
from .support import random_id, raw_span, relay_check, run, trace_request

SERVER, CLIENT, CONSUMER = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_CONSUMER


def _transactions(standin: SentryStandIn) -> list[dict[str, Any]]:
    found = standin.items("transaction")
    for transaction in found:
        relay_check(transaction)
    return found


def test_a_trace_arriving_in_three_batches_becomes_one_transaction() -> None:
    tid, root = random_id(16), random_id(8)
    children = [random_id(8) for _ in range(6)]
    spans = [raw_span(tid, root, name="GET /orders", kind=SERVER, attrs={"http.request.method": "GET", "http.route": "/orders"})]  # fmt: skip
    spans += [raw_span(tid, c, root, name=f"child {i}", start=1_790_000_000.0 + i / 1000) for i, c in enumerate(children)]  # fmt: skip
    batches = [trace_request(spans[4:]), trace_request(spans[:2]), trace_request(spans[2:4])]
    with sentry_standin() as standin:
        telemetry = run({"dsn": standin.dsn, "trace_wait": "400ms"}, batches, pause=0.05)
        (transaction,) = _transactions(standin)
    assert transaction["transaction"] == "GET /orders"
    assert transaction["transaction_info"] == {"source": "route"}
    assert transaction["contexts"]["trace"]["span_id"] == root.hex()
    assert sorted(s["span_id"] for s in transaction["spans"]) == sorted(c.hex() for c in children)
    assert [s["description"] for s in transaction["spans"]] == [f"child {i}" for i in range(6)]
    assert telemetry.total("otelcol_exporter_sent_spans_total") == 7


def test_each_local_root_is_its_own_transaction() -> None:
    tid = random_id(16)
    root, call, remote_server, db, orphan = (random_id(8) for _ in range(5))
    spans = [
        raw_span(tid, root, name="GET /checkout", kind=SERVER, attrs={"http.method": "GET", "http.target": "/checkout?x=1"}),
        raw_span(tid, call, root, name="POST", kind=CLIENT, attrs={"http.method": "POST", "http.url": "http://user:pw@pay/charge?token=abc"}),
        raw_span(tid, remote_server, call, name="POST /charge", kind=SERVER, attrs={"http.request.method": "POST", "http.route": "/charge"}),
        raw_span(tid, db, remote_server, name="INSERT", kind=CLIENT, attrs={"db.system": "postgresql", "db.statement": "INSERT INTO charges VALUES ($1)"}),
        raw_span(tid, orphan, random_id(8), name="late child", kind=Span.SPAN_KIND_INTERNAL),
    ]  # fmt: skip
    with sentry_standin() as standin:
        run(
            {"dsn": standin.dsn},
            [trace_request(spans[:2]), trace_request(spans[2:], service="payments")],
        )
        found = {t["contexts"]["trace"]["span_id"]: t for t in _transactions(standin)}
    assert set(found) == {root.hex(), remote_server.hex(), orphan.hex()}
    checkout = found[root.hex()]
    assert (checkout["transaction"], checkout["transaction_info"]["source"]) == (
        "GET /checkout",
        "url",
    )
    (client,) = checkout["spans"]
    assert client["op"] == "http.client"
    assert client["description"] == "POST http://[Filtered]@pay/charge?token=[Filtered]"
    charge = found[remote_server.hex()]
    assert charge["contexts"]["trace"]["parent_span_id"] == call.hex()
    assert charge["tags"]["service"] == "payments"
    assert [(s["op"], s["description"]) for s in charge["spans"]] == [
        ("db", "INSERT INTO charges VALUES ($1)")
    ]
    assert found[orphan.hex()]["transaction_info"]["source"] == "custom"


@pytest.mark.parametrize(
    ("attrs", "kind", "error", "op", "description", "status"),
    [
        ({"http.request.method": "GET", "http.route": "/u/{id}", "http.response.status_code": 404}, SERVER, True, "http.server", "GET /u/{id}", "not_found"),
        ({"http.method": "GET", "http.status_code": 503, "http.target": "/old"}, SERVER, True, "http.server", "GET /old", "unavailable"),
        ({"http.request.method": "GET", "url.full": "https://api.example/x", "http.response.status_code": 429}, CLIENT, True, "http.client", "GET https://api.example/x", "resource_exhausted"),
        ({"db.system.name": "postgresql", "db.query.text": "SELECT 1"}, CLIENT, False, "db", "SELECT 1", "ok"),
        ({"db.system": "sqlite", "db.statement": "SELECT 2"}, CLIENT, True, "db", "SELECT 2", "unknown"),
        ({"rpc.system": "grpc", "rpc.service": "Cart", "rpc.method": "Add", "rpc.grpc.status_code": 5}, CLIENT, True, "grpc.client", "Cart/Add", "not_found"),
        ({"messaging.system": "kafka"}, CONSUMER, False, "queue.process", "orders process", "ok"),
        ({"faas.trigger": "timer"}, Span.SPAN_KIND_INTERNAL, False, "timer", "orders process", "ok"),
        ({}, Span.SPAN_KIND_INTERNAL, False, "default", "orders process", "ok"),
    ],
)  # fmt: skip
def test_op_description_and_status_follow_stable_and_older_conventions(
    attrs: dict[str, Any], kind: int, error: bool, op: str, description: str, status: str
) -> None:
    tid, root, child = random_id(16), random_id(8), random_id(8)
    spans = [
        raw_span(tid, root, name="job", kind=Span.SPAN_KIND_INTERNAL),
        raw_span(tid, child, root, name="orders process", kind=kind, attrs=attrs, error=error),
    ]
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [trace_request(spans)])
        transactions = _transactions(standin)
    # A CONSUMER child of an INTERNAL parent in the same service stays a child span.
    (span,) = [s for t in transactions for s in t["spans"]] or [
        transactions[-1]["contexts"]["trace"]
    ]
    assert (span["op"], span.get("description", description), span["status"]) == (
        op,
        description,
        status,
    )


def _traces(count: int, *, error_every: int = 0, flag: tuple[str, Any] | None = None) -> list[Any]:
    spans = []
    for i in range(count):
        attrs = dict([flag]) if flag and i == 0 else {}
        spans.append(raw_span(random_id(16), random_id(8), name=f"t{i}", attrs=attrs, error=bool(error_every) and i % error_every == 0))  # fmt: skip
    return spans


def test_sampling_is_deterministic_by_trace_id_and_keeps_errors_and_flagged_traces() -> None:
    spans = _traces(200, error_every=50) + _traces(1, flag=("otelkit.budget.exceeded", True))
    spans += _traces(1, flag=("otelkit.perf_issue.type", "n_plus_one_db_queries"))
    spans += _traces(1, flag=("otelkit.budget.exceeded", False))  # not a breach
    with sentry_standin() as first, sentry_standin() as second:
        telemetry = run({"dsn": first.dsn, "traces_sample_rate": 0.25}, [trace_request(spans)])
        run({"dsn": second.dsn, "traces_sample_rate": 0.25}, [trace_request(spans)])
        kept = {t["contexts"]["trace"]["trace_id"] for t in _transactions(first)}
        kept_again = {t["contexts"]["trace"]["trace_id"] for t in second.items("transaction")}
        headers = [r.envelope.headers["trace"] for r in first.accepted()]
    assert kept == kept_again
    by_name = {s.name: s.trace_id.hex() for s in spans[:200]}
    must_keep = {by_name[f"t{i}"] for i in (0, 50, 100, 150)} | {spans[200].trace_id.hex(), spans[201].trace_id.hex()}  # fmt: skip
    assert must_keep <= kept
    assert 30 < len(kept) < 80
    assert telemetry.total("otelkit_sentry_spans_sampled_out_total") == 203 - len(kept)
    assert all(h["sample_rate"] == "0.25" and h["public_key"] for h in headers)


def test_no_transactions_at_rate_zero_but_errors_still_go() -> None:
    spans = [*_traces(20), raw_span(random_id(16), random_id(8), name="bad", error=True)]
    with sentry_standin() as standin:
        run({"dsn": standin.dsn, "traces_sample_rate": 0}, [trace_request(spans)])
        names = [t["transaction"] for t in _transactions(standin)]
    assert names == ["bad"]


def test_long_transactions_are_trimmed_and_say_so() -> None:
    tid, root = random_id(16), random_id(8)
    spans = [raw_span(tid, root, name="batch job")]
    spans += [raw_span(tid, random_id(8), root, name=f"step {i}", start=1_790_000_000 + i / 1e4) for i in range(30)]  # fmt: skip
    with sentry_standin() as standin:
        telemetry = run(
            {"dsn": standin.dsn, "transactions": {"max_spans": 10}}, [trace_request(spans)]
        )
        (transaction,) = _transactions(standin)
    assert [s["description"] for s in transaction["spans"]] == [f"step {i}" for i in range(10)]
    assert transaction["contexts"]["otelkit"]["spans_dropped"] == 20
    assert telemetry.total("otelcol_exporter_send_failed_spans_total", reason="trimmed") == 20


def test_huge_transactions_stay_under_the_item_limit() -> None:
    tid, root = random_id(16), random_id(8)
    big = "x" * 4000
    spans = [raw_span(tid, root, name="import")]
    spans += [raw_span(tid, random_id(8), root, name="row", attrs={f"a{k}": big for k in range(5)}) for _ in range(400)]  # fmt: skip
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [trace_request(spans)])
        (transaction,) = _transactions(standin)
        (received,) = standin.accepted()
    assert len(received.body) < 1_000_000
    assert transaction["contexts"]["otelkit"]["spans_dropped"] > 0
    assert len(transaction["spans"]) + transaction["contexts"]["otelkit"]["spans_dropped"] == 400


def test_assembler_bounds_memory_by_letting_the_oldest_traces_go_early() -> None:
    now = [0.0]
    assembler = TraceAssembler(trace_wait=5.0, max_spans=10, clock=lambda: now[0])
    from otelkit.collector.exporters.sentry.transactions import SpanRef

    def ref(tid: bytes) -> SpanRef:
        return SpanRef(raw_span(tid, random_id(8)), None, "")  # type: ignore[arg-type]

    tids = [random_id(16) for _ in range(4)]
    assert assembler.add([ref(tids[0]) for _ in range(4)]) == []
    now[0] = 1.0
    assert assembler.add([ref(tids[1]) for _ in range(4)]) == []
    early = assembler.add([ref(tids[2]) for _ in range(4)])
    assert [t[0].span.trace_id for t in early] == [tids[0]]
    assert assembler.evicted_early == 1 and assembler.buffered == 8
    now[0] = 5.5
    assert [t[0].span.trace_id for t in assembler.due()] == []
    now[0] = 6.0
    assert [t[0].span.trace_id for t in assembler.due()] == [tids[1], tids[2]]
    assert assembler.buffered == 0


def test_a_span_delivered_twice_appears_once() -> None:
    tid, root, child = random_id(16), random_id(8), random_id(8)
    spans = [raw_span(tid, root, name="job"), raw_span(tid, child, root, name="step")]
    with sentry_standin() as standin:
        run({"dsn": standin.dsn}, [trace_request(spans), trace_request(spans)])
        (transaction,) = _transactions(standin)
    assert [s["span_id"] for s in transaction["spans"]] == [child.hex()]


def test_a_slow_requests_children_wait_for_their_root() -> None:
    tid, root = random_id(16), random_id(8)
    children = [raw_span(tid, random_id(8), root, name=f"query {i}", kind=CLIENT,
                         attrs={"db.system": "postgresql", "db.statement": f"SELECT {i}"}) for i in range(3)]  # fmt: skip
    server = raw_span(tid, root, name="GET /report", kind=SERVER, duration=2.0,
                      attrs={"http.request.method": "GET", "http.route": "/report"})  # fmt: skip
    batches = [trace_request(children), trace_request([server])]
    with sentry_standin() as standin:
        run(
            {"dsn": standin.dsn, "trace_wait": "50ms", "transactions": {"incomplete_wait": "5s"}},
            batches,
            pause=0.4,
        )
        (transaction,) = _transactions(standin)
    assert transaction["transaction"] == "GET /report"
    assert [s["description"] for s in transaction["spans"]] == ["SELECT 0", "SELECT 1", "SELECT 2"]


def test_incomplete_traces_wait_only_so_long() -> None:
    now = [0.0]
    assembler = TraceAssembler(
        trace_wait=1.0, max_spans=100, clock=lambda: now[0], incomplete_wait=3.0
    )
    from otelkit.collector.exporters.sentry.transactions import SpanRef

    tid, remote_parent = random_id(16), random_id(8)
    orphan = SpanRef(raw_span(tid, random_id(8), random_id(8), kind=CLIENT), None, "")  # type: ignore[arg-type]
    entry = SpanRef(raw_span(random_id(16), random_id(8), remote_parent, kind=SERVER), None, "")  # type: ignore[arg-type]
    assembler.add([orphan, entry])
    now[0] = 1.0
    assert [t[0] for t in assembler.due()] == [entry]  # a SERVER span's caller is remote: complete
    now[0] = 2.5
    assert assembler.due() == []
    now[0] = 3.5
    assert [t[0] for t in assembler.due()] == [orphan]
