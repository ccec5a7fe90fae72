"""TLS on the Sentry and Prometheus remote-write clients: a server that demands a client
certificate gets data only from an exporter configured with one and with the right CA."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otelkit.collector.runtime.service import ServiceHost
from tests.collector.security.support import exporter
from tests.prometheus.payloads import metrics_request, sum_metric
from tests.sentry.standin import SentryStandIn
from tests.sentry.support import logs_request, run
from tests.support.certs import Authority, Issued
from tests.support.services import free_port, require_binary


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


def client_tls(ca: Authority, client: Issued | None) -> dict[str, str]:
    tls = {"ca_file": str(ca.cert_file)}
    if client is not None:
        tls |= {"cert_file": str(client.cert_file), "key_file": str(client.key_file)}
    return tls


@contextmanager
def mtls_sentry(ca: Authority) -> Iterator[SentryStandIn]:
    """The Sentry stand-in behind TLS that requires a client certificate from ``ca``."""
    server = ca.server("sentry")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server.cert_file, server.key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(ca.cert_file)
    standin = SentryStandIn()
    standin._server.socket = context.wrap_socket(standin._server.socket, server_side=True)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


def error_log() -> Any:
    record = LogRecord(
        severity_number=17, severity_text="ERROR", body=AnyValue(string_value="boom")
    )
    return logs_request([record])


@pytest.mark.parametrize("with_client_certificate", [True, False])
def test_sentry_exporter_over_mtls(ca: Authority, with_client_certificate: bool) -> None:
    with mtls_sentry(ca) as standin:
        dsn = standin.dsn.replace("http://", "https://")
        client = ca.client("collector") if with_client_certificate else None
        telemetry = run({"dsn": dsn, "tls": client_tls(ca, client)}, [error_log()])
        failed = telemetry.total("otelcol_exporter_send_failed_log_records_total")
        if with_client_certificate:
            assert len(standin.items("event")) == 1 and failed == 0
        else:
            assert standin.received == [] and failed == 1


@contextmanager
def tls_prometheus(tmp_path: Path, ca: Authority) -> Iterator[tuple[int, ssl.SSLContext]]:
    """A real Prometheus whose web server (and so its remote-write receiver) demands mTLS."""
    binary = require_binary("prometheus")
    server, reader = ca.server("prometheus"), ca.client("reader")
    web = {
        "tls_server_config": {
            "cert_file": str(server.cert_file),
            "key_file": str(server.key_file),
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": str(ca.cert_file),
        }
    }
    (tmp_path / "web.yml").write_text(yaml.safe_dump(web))
    (tmp_path / "prometheus.yml").write_text("global: {scrape_interval: 1s}\n")
    port = free_port()
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--web.config.file={tmp_path / 'web.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-remote-write-receiver",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    context = ssl.create_default_context(cafile=str(ca.cert_file))
    context.load_cert_chain(reader.cert_file, reader.key_file)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"https://127.0.0.1:{port}/-/ready", verify=context).is_success:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield port, context
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def test_remote_write_over_mtls_to_a_real_prometheus(tmp_path: Path, ca: Authority) -> None:
    now = time.time_ns()
    request = metrics_request(
        sum_metric("tls.orders", 7, start=now - 10**9, end=now), resource={"service.name": "shop"}
    )

    async def push(port: int, tls: dict[str, str]) -> float:
        built = exporter(
            "prometheusremotewrite",
            endpoint=f"https://127.0.0.1:{port}/api/v1/write",
            tls=tls,
            retry_on_failure={"enabled": False},
        )
        await built.start(ServiceHost())
        await built.consume(request)
        await built.shutdown()
        return float(built.telemetry.total("otelcol_exporter_send_failed_metric_points_total"))

    with tls_prometheus(tmp_path, ca) as (port, reader):
        assert asyncio.run(push(port, client_tls(ca, None))) == 1  # no client certificate
        assert asyncio.run(push(port, client_tls(ca, ca.client("collector")))) == 0
        deadline = time.monotonic() + 20
        while True:
            answer = httpx.get(
                f"https://127.0.0.1:{port}/api/v1/query",
                params={"query": "tls_orders_total"},
                verify=reader,
            ).json()
            if answer["data"]["result"]:
                break
            assert time.monotonic() < deadline, answer
            time.sleep(0.5)
        assert answer["data"]["result"][0]["value"][1] == "7"
