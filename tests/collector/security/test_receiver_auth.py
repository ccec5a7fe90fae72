"""Receiver authentication: no token, a wrong token and a wrong password are refused with
gRPC UNAUTHENTICATED / HTTP 401 before the body is read; the right ones get through."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from passlib.hash import apr_md5_crypt, bcrypt

from otelkit.collector.pdata.signals import Signal
from tests.collector.builders import traces
from tests.collector.e2e.clients import make_spans, sdk_exporters
from tests.collector.receivers.harness import RunningReceiver, running_receiver
from tests.collector.security.support import TOKEN, extension

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF = {"content-type": "application/x-protobuf"}


def protocols(authenticator: str) -> dict[str, object]:
    auth = {"authenticator": authenticator}
    return {
        "grpc": {"endpoint": "127.0.0.1:0", "auth": auth},
        "http": {"endpoint": "127.0.0.1:0", "auth": auth},
    }


@pytest.fixture(scope="module")
def bearer() -> Iterator[RunningReceiver]:
    extensions = {"bearertokenauth": extension("bearertokenauth", token=TOKEN)}
    with running_receiver(protocols("bearertokenauth"), extensions=extensions) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    if "bearer" in request.fixturenames:
        running: RunningReceiver = request.getfixturevalue("bearer")
        for consumer in running.consumers.values():
            consumer.payloads.clear()


def unauthenticated(running: RunningReceiver, transport: str) -> float:
    return running.telemetry.total(
        "otelkit_receiver_unauthenticated_requests_total", transport=transport
    )


def grpc_export(target: str, body: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> None:
    with grpc.insecure_channel(target) as channel:
        channel.unary_unary(TRACE_EXPORT)(body, timeout=10, metadata=metadata)


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_exporter_with_the_token_is_accepted(bearer: RunningReceiver, transport: str) -> None:
    target = bearer.grpc_target if transport == "grpc" else bearer.http_target
    exporter = sdk_exporters(transport, target, headers={"authorization": f"Bearer {TOKEN}"})[
        "traces"
    ]
    try:
        assert exporter.export(make_spans(3)) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert bearer.consumers[Signal.TRACES].items() == 6


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong-token"}, {"authorization": TOKEN}],
    ids=["no-token", "wrong-token", "no-scheme"],
)
@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_exporter_without_the_right_token_is_refused(
    bearer: RunningReceiver, transport: str, headers: dict[str, str]
) -> None:
    before = unauthenticated(bearer, transport)
    target = bearer.grpc_target if transport == "grpc" else bearer.http_target
    exporter = sdk_exporters(transport, target, headers=headers)["traces"]
    try:
        assert exporter.export(make_spans(3)) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert bearer.consumers[Signal.TRACES].payloads == []
    assert unauthenticated(bearer, transport) == before + 1  # not retried: permanent


def test_http_401_names_the_scheme_and_never_echoes_the_token(bearer: RunningReceiver) -> None:
    body = traces([[2]]).SerializeToString()
    headers = {**PROTOBUF, "authorization": "Bearer attacker-guess"}
    response = httpx.post(f"{bearer.http_url}/v1/traces", content=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "attacker-guess" not in response.text and TOKEN not in response.text
    # Unknown paths are not revealed to an unauthenticated client either.
    assert httpx.get(f"{bearer.http_url}/nothing").status_code == 401


def test_http_refusal_comes_before_the_body_is_sent(bearer: RunningReceiver) -> None:
    """A client announcing 10 MB gets its 401 without sending a byte of the body."""
    head = (
        f"POST /v1/traces HTTP/1.1\r\nHost: {bearer.http_target}\r\n"
        "Content-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\n"
        "Content-Length: 10000000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", bearer.receiver.http_port), timeout=5) as sock:
        sock.sendall(head)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401")


def test_grpc_refusal_does_not_parse_the_message(bearer: RunningReceiver) -> None:
    """Garbage without a token is UNAUTHENTICATED, not INVALID_ARGUMENT: never parsed."""
    refused_before = bearer.refused(Signal.TRACES, "grpc")
    with pytest.raises(grpc.RpcError) as caught:
        grpc_export(bearer.grpc_target, b"\xff\xff not protobuf")
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert TOKEN not in (caught.value.details() or "")
    assert bearer.refused(Signal.TRACES, "grpc") == refused_before
    grpc_export(
        bearer.grpc_target,
        traces([[1]]).SerializeToString(),
        (("authorization", f"Bearer {TOKEN}"),),
    )
    assert bearer.consumers[Signal.TRACES].items() == 1


def test_custom_header_and_scheme() -> None:
    auth = extension("bearertokenauth/api", token=TOKEN, header="X-Api-Key", scheme="")
    with running_receiver(
        protocols("bearertokenauth/api"), extensions={"bearertokenauth/api": auth}
    ) as running:
        url = f"{running.http_url}/v1/traces"
        body = traces([[1]]).SerializeToString()
        assert httpx.post(url, content=body, headers={**PROTOBUF, "x-api-key": TOKEN}).is_success
        refused = httpx.post(
            url, content=body, headers={**PROTOBUF, "authorization": f"Bearer {TOKEN}"}
        )
        assert refused.status_code == 401


def test_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    auth = extension("bearertokenauth", filename=str(token_file))
    with running_receiver(protocols("bearertokenauth"), extensions={"bearertokenauth": auth}) as r:
        url = f"{r.http_url}/v1/traces"
        body = traces([[1]]).SerializeToString()

        def status(token: str) -> int:
            headers = {**PROTOBUF, "authorization": f"Bearer {token}"}
            return httpx.post(url, content=body, headers=headers).status_code

        assert status("first-token") == 200
        assert status("second-token") == 401
        replacement = tmp_path / "token.new"
        replacement.write_text("second-token\n")
        replacement.replace(token_file)  # atomic swap, as Kubernetes secrets rotate
        deadline = time.monotonic() + 10
        while status("second-token") != 200:
            assert time.monotonic() < deadline, "rotated token not picked up"
            time.sleep(0.2)
        assert status("first-token") == 401


def basic(username: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {**PROTOBUF, "authorization": f"Basic {pair}"}


def test_basicauth_checks_htpasswd_file_and_inline_entries(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(
        f"alice:{bcrypt.using(rounds=5).hash('alice-pw')}\n"
        f"bob:{apr_md5_crypt.hash('bob-pw')}\n"
        "carol:old-plain-pw\n"
    )
    auth = extension(
        "basicauth/server",
        htpasswd={"file": str(htpasswd), "inline": "carol:new-plain-pw\n"},
    )
    with running_receiver(
        protocols("basicauth/server"), extensions={"basicauth/server": auth}
    ) as running:
        url = f"{running.http_url}/v1/traces"
        body = traces([[1]]).SerializeToString()

        def status(headers: dict[str, str]) -> int:
            return httpx.post(url, content=body, headers=headers).status_code

        assert status(basic("alice", "alice-pw")) == 200
        assert status(basic("alice", "alice-pw")) == 200  # remembered: no second bcrypt
        assert status(basic("bob", "bob-pw")) == 200
        assert status(basic("carol", "new-plain-pw")) == 200  # inline wins over the file
        assert status(basic("carol", "old-plain-pw")) == 401
        assert status(basic("alice", "bob-pw")) == 401
        assert status(basic("mallory", "alice-pw")) == 401
        assert status(PROTOBUF) == 401
        assert status({**PROTOBUF, "authorization": "Basic !!notbase64"}) == 401
        refused = httpx.post(url, content=body, headers=basic("alice", "nope"))
        assert refused.headers["www-authenticate"].startswith("Basic")
        with pytest.raises(grpc.RpcError) as caught:
            grpc_export(running.grpc_target, body, (("authorization", "Basic Ym9iOm5vcGU="),))
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        pair = base64.b64encode(b"bob:bob-pw").decode()
        grpc_export(running.grpc_target, body, (("authorization", f"Basic {pair}"),))
        assert running.consumers[Signal.TRACES].items() == 5
