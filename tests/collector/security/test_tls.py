"""TLS and mTLS on both receivers and on the otlp/otlphttp clients, with certificates the
test makes: a plain-text client, a client that trusts another CA, no client certificate,
a client certificate from another CA and an expired one are all refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans
from opentelemetry.sdk.trace.export import SpanExportResult
from pydantic import ValidationError

from otelkit.collector.pdata.signals import Signal
from otelkit.collector.receivers.otlp import OtlpReceiverConfig
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.service import ServiceHost
from tests.collector.builders import traces
from tests.collector.e2e.clients import make_spans
from tests.collector.receivers.harness import RunningReceiver, running_receiver
from tests.collector.security.support import exporter
from tests.support.certs import Authority, Issued


class PKI:
    def __init__(self, directory: Path) -> None:
        self.ca = Authority(directory, "otelkit test CA")
        self.other_ca = Authority(directory, "someone else's CA")
        self.server = self.ca.server()
        self.expired_server = self.ca.server("expired-server", expired=True)
        self.client = self.ca.client()
        self.stranger = self.other_ca.client("stranger")
        self.expired_client = self.ca.client("expired-client", expired=True)


@pytest.fixture(autouse=True)
def _sdk_uses_the_given_ca(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests (under the SDK's HTTP exporter) lets these variables override the
    exporter's ``certificate_file``; a machine that sets them would test its own CA store."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


def tls_protocols(tls: dict[str, Any]) -> dict[str, Any]:
    return {
        "grpc": {"endpoint": "127.0.0.1:0", "tls": tls},
        "http": {"endpoint": "127.0.0.1:0", "tls": tls},
    }


def server_tls(issued: Issued, client_ca: Path | None = None) -> dict[str, Any]:
    tls: dict[str, Any] = {"cert_file": str(issued.cert_file), "key_file": str(issued.key_file)}
    if client_ca is not None:
        tls["client_ca_file"] = str(client_ca)
    return tls


@pytest.fixture(scope="module")
def tls_receiver(pki: PKI) -> Iterator[RunningReceiver]:
    with running_receiver(tls_protocols(server_tls(pki.server))) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_receiver(pki: PKI) -> Iterator[RunningReceiver]:
    with running_receiver(tls_protocols(server_tls(pki.server, pki.ca.cert_file))) as running:
        yield running


def sdk_export(
    running: RunningReceiver,
    transport: str,
    ca: Path | None,
    client: Issued | None = None,
    *,
    scheme: str = "https",
) -> SpanExportResult:
    """Export spans with the OpenTelemetry SDK's own exporter, over TLS (or not)."""
    spans = make_spans(2)
    if transport == "grpc":
        if scheme == "http":
            sdk: Any = GrpcSpans(endpoint=f"http://{running.grpc_target}", insecure=True, timeout=2)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca.read_bytes() if ca else None,
                private_key=client.key_file.read_bytes() if client else None,
                certificate_chain=client.cert_file.read_bytes() if client else None,
            )
            sdk = GrpcSpans(
                endpoint=f"https://{running.grpc_target}", credentials=credentials, timeout=2
            )
    else:
        sdk = HttpSpans(
            endpoint=f"{scheme}://{running.http_target}/v1/traces",
            certificate_file=str(ca) if ca else None,
            client_certificate_file=str(client.cert_file) if client else None,
            client_key_file=str(client.key_file) if client else None,
            timeout=2,
        )
    try:
        result: SpanExportResult = sdk.export(spans)
        return result
    finally:
        sdk.shutdown()


def arrived(running: RunningReceiver) -> int:
    items = running.consumers[Signal.TRACES].items()
    running.consumers[Signal.TRACES].payloads.clear()
    return items


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_tls_receiver_serves_sdk_exporters_that_trust_its_ca(
    tls_receiver: RunningReceiver, pki: PKI, transport: str
) -> None:
    assert sdk_export(tls_receiver, transport, pki.ca.cert_file) is SpanExportResult.SUCCESS
    assert arrived(tls_receiver) == 4
    # A client that trusts another CA, and a plain-text client, get nothing through.
    assert sdk_export(tls_receiver, transport, pki.other_ca.cert_file) is SpanExportResult.FAILURE
    assert sdk_export(tls_receiver, transport, None, scheme="http") is SpanExportResult.FAILURE
    assert arrived(tls_receiver) == 0


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_mtls_receiver_takes_only_clients_with_a_certificate_from_its_ca(
    mtls_receiver: RunningReceiver, pki: PKI, transport: str
) -> None:
    ca = pki.ca.cert_file
    assert sdk_export(mtls_receiver, transport, ca, pki.client) is SpanExportResult.SUCCESS
    assert arrived(mtls_receiver) == 4
    for refused in (None, pki.stranger, pki.expired_client):
        result = sdk_export(mtls_receiver, transport, ca, refused)
        assert result is SpanExportResult.FAILURE, refused
    assert arrived(mtls_receiver) == 0


def start_exporter(running: RunningReceiver, component_id: str, **config: Any) -> Any:
    built = exporter(component_id, **config, retry_on_failure={"enabled": False})
    running.run(built.start(ServiceHost()))
    return built


@pytest.mark.parametrize("kind", ["otlp", "otlphttp"])
def test_otelkit_exporters_speak_mtls(mtls_receiver: RunningReceiver, pki: PKI, kind: str) -> None:
    endpoint = (
        mtls_receiver.grpc_target if kind == "otlp" else f"https://{mtls_receiver.http_target}"
    )
    client_tls = {
        "ca_file": str(pki.ca.cert_file),
        "cert_file": str(pki.client.cert_file),
        "key_file": str(pki.client.key_file),
    }
    good = start_exporter(mtls_receiver, kind, endpoint=endpoint, tls=client_tls)
    try:
        mtls_receiver.run(good.send(traces([[3]])))
    finally:
        mtls_receiver.run(good.shutdown())
    assert arrived(mtls_receiver) == 3
    for tls in (
        {"ca_file": str(pki.ca.cert_file)},  # no client certificate
        {
            **client_tls,
            "cert_file": str(pki.stranger.cert_file),
            "key_file": str(pki.stranger.key_file),
        },
        {**client_tls, "ca_file": str(pki.other_ca.cert_file)},  # does not trust the server
    ):
        bad = start_exporter(mtls_receiver, kind, endpoint=endpoint, tls=tls, timeout="2s")
        try:
            with pytest.raises(RetryableError):
                mtls_receiver.run(bad.send(traces([[1]])))
        finally:
            mtls_receiver.run(bad.shutdown())
    assert arrived(mtls_receiver) == 0


@pytest.mark.parametrize("kind", ["otlp", "otlphttp"])
def test_otelkit_exporters_refuse_an_expired_server_certificate(pki: PKI, kind: str) -> None:
    with running_receiver(tls_protocols(server_tls(pki.expired_server))) as running:
        endpoint = running.grpc_target if kind == "otlp" else f"https://{running.http_target}"
        built = start_exporter(
            running, kind, endpoint=endpoint, tls={"ca_file": str(pki.ca.cert_file)}, timeout="2s"
        )
        try:
            with pytest.raises(RetryableError):
                running.run(built.send(traces([[1]])))
        finally:
            running.run(built.shutdown())
        assert arrived(running) == 0


def test_inline_pem_certificate_and_key(pki: PKI) -> None:
    tls = {"cert_pem": pki.server.cert_pem, "key_pem": pki.server.key_pem}
    with running_receiver(tls_protocols(tls)) as running:
        for transport in ("grpc", "http"):
            assert sdk_export(running, transport, pki.ca.cert_file) is SpanExportResult.SUCCESS
        assert arrived(running) == 8


def test_certificates_are_reloaded_after_reload_interval(pki: PKI, tmp_path: Path) -> None:
    """The server's files are replaced by a certificate from a new CA; clients that trust
    only the new CA get through once the interval has passed, without a restart."""
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_text(pki.server.cert_pem)
    key.write_text(pki.server.key_pem)
    tls = {"cert_file": str(cert), "key_file": str(key), "reload_interval": "200ms"}
    new_ca = Authority(tmp_path / "new", "rotated CA")
    with running_receiver(tls_protocols(tls)) as running:
        for transport in ("grpc", "http"):
            assert sdk_export(running, transport, pki.ca.cert_file) is SpanExportResult.SUCCESS
        rotated = new_ca.server()
        cert.write_text(rotated.cert_pem)
        key.write_text(rotated.key_pem)
        time.sleep(1.0)
        for transport in ("grpc", "http"):
            deadline = time.monotonic() + 15
            while sdk_export(running, transport, new_ca.cert_file) is not SpanExportResult.SUCCESS:
                assert time.monotonic() < deadline, f"{transport}: rotated certificate not served"
        assert sdk_export(running, "http", pki.ca.cert_file) is SpanExportResult.FAILURE


def test_plain_http_to_a_tls_port_gets_no_answer(tls_receiver: RunningReceiver) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://{tls_receiver.http_target}/v1/traces", content=b"", timeout=3)


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"cert_file": "/x.crt"}, "a certificate needs its key"),
        ({"key_file": "/x.key"}, "a certificate needs its key"),
        ({"client_ca_file": "/ca.pem"}, "a TLS server needs cert_file"),
        (
            {"cert_file": "/x", "key_file": "/y", "min_version": "1.1", "max_version": "1.0"},
            "below",
        ),
    ],
)
def test_incomplete_tls_settings_are_config_errors(tls: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OtlpReceiverConfig.model_validate({"protocols": {"http": {"tls": tls}}})


def test_grpc_refuses_tls_versions_it_cannot_enforce() -> None:
    tls = {"cert_file": "/x", "key_file": "/y", "min_version": "1.3"}
    with pytest.raises(ValidationError, match="cannot be limited"):
        OtlpReceiverConfig.model_validate({"protocols": {"grpc": {"tls": tls}}})
    OtlpReceiverConfig.model_validate({"protocols": {"http": {"tls": tls}}})


def test_http_min_version_is_enforced(pki: PKI) -> None:
    import ssl

    tls = {**server_tls(pki.server), "min_version": "1.3"}
    with running_receiver({"http": {"endpoint": "127.0.0.1:0", "tls": tls}}) as running:
        context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"https://{running.http_target}/v1/traces", verify=context, timeout=3)
        context = ssl.create_default_context(cafile=str(pki.ca.cert_file))
        answer = httpx.post(
            f"https://{running.http_target}/v1/traces",
            content=traces([[1]]).SerializeToString(),
            headers={"content-type": "application/x-protobuf"},
            verify=context,
        )
        assert answer.status_code == 200
