"""Resource detection, the human formatter, the HTTP health check and per-client httpx."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from otelkit.presets.health import HealthRegistry, HttpCheck
from otelkit.presets.logs import HumanFormatter
from otelkit.presets.resource import container_id, kubernetes_attributes

CONTAINER = "a" * 64


def test_container_id_from_cgroup_v1_or_mountinfo(tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.write_text(f"12:pids:/docker/{CONTAINER}\n")
    assert container_id(cgroup, tmp_path / "missing") == CONTAINER
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"1 2 0:1 /var/lib/containerd/io/{CONTAINER}/hostname /etc/hostname rw\n")
    assert container_id(tmp_path / "missing", mountinfo) == CONTAINER
    cgroup.write_text("0::/\n")
    assert container_id(cgroup, tmp_path / "missing") is None


def test_kubernetes_attributes_come_from_downward_api_variables() -> None:
    assert kubernetes_attributes({"HOSTNAME": "pod-1"}) == {}
    env = {
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "HOSTNAME": "shop-7d9f-abcde",
        "POD_NAMESPACE": "prod",
        "NODE_NAME": "node-3",
        "POD_UID": "uid-1",
    }
    assert kubernetes_attributes(env) == {
        "k8s.pod.name": "shop-7d9f-abcde",
        "k8s.namespace.name": "prod",
        "k8s.node.name": "node-3",
        "k8s.pod.uid": "uid-1",
    }


def test_human_formatter_shows_request_id_and_exception() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord(
            "app", logging.WARNING, __file__, 1, "hello %s", ("you",), sys.exc_info()
        )
    record.request_id = "r-1"
    text = HumanFormatter().format(record)
    first = text.splitlines()[0]
    assert (
        "WARNING" in first
        and "app" in first
        and "[req=r-1]" in first
        and first.endswith("hello you")
    )
    assert "ValueError: bad" in text


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_check_expects_a_status(status_server: str) -> None:
    registry = HealthRegistry(
        [
            HttpCheck(f"{status_server}/ok", name="ok"),
            HttpCheck(f"{status_server}/bad", name="bad"),
            HttpCheck(f"{status_server}/bad", name="expected-500", expect_status=500),
        ]
    )
    results = {result.name: result for result in asyncio.run(registry.results())}
    assert results["ok"].status == "pass"
    assert results["bad"].status == "fail" and "status 500" in (results["bad"].output or "")
    assert results["expected-500"].status == "pass"


ONE_CLIENT = """
import json, sys
import httpx, otelkit
from otelkit.presets.context import enter_request
otelkit.configure(service_name="client")
traced, plain = httpx.Client(), httpx.Client()
otelkit.instrument_httpx(traced)
enter_request("r-77")
sent = {}
for name, client in (("traced", traced), ("plain", plain)):
    request = client.build_request("GET", sys.argv[1] + "/ok")
    client.send(request)
    sent[name] = request.headers.get("x-request-id")
print("SENT " + json.dumps(sent), flush=True)
"""


def test_instrumenting_one_client_leaves_the_others_alone(status_server: str) -> None:
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTELKIT_ENVIRONMENT": "development",
        "OTELKIT_LOG_FORMAT": "none",
    }
    result = subprocess.run(
        [sys.executable, "-c", ONE_CLIENT, status_server],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sent_line = next(line for line in result.stdout.splitlines() if line.startswith("SENT "))
    assert json.loads(sent_line.removeprefix("SENT ")) == {"traced": "r-77", "plain": None}
    assert result.stdout.count('"kind": "SpanKind.CLIENT"') == 1
