"""Collector throughput: spans per second and CPU per span, against a parse-only receiver.

    python benchmarks/collector_throughput.py [--quick] [--seconds 8] [--pipelines nop,file]
        [--security bearer,tls,bearer+tls]
    python benchmarks/collector_throughput.py --workers 1,2 [--workers-config nop|default]
    python benchmarks/collector_throughput.py --pipelines default --security none
        --transports grpc [--baseline-tree DIR] [--tail-memory 50000]

A load process (separate from everything it measures) sends one pre-serialized request of
512 realistic server spans (10 attributes each) over and over, with a fixed number of
requests in flight, over OTLP/gRPC and over OTLP/HTTP (protobuf). It goes to:

* ``bare``: a minimal receiver in its own process (grpc.aio and uvicorn/httptools, as the
  collector uses) that only ``ParseFromString``s each request and discards it -- the
  ceiling of any Python OTLP receiver;
* an ``otelkit collector run`` process for each selected pipeline: ``nop`` is
  ``otlp -> memory_limiter -> batch -> nop``, ``file`` is the same ending in the ``file``
  exporter, ``direct`` is ``otlp -> nop`` (the receiver alone), ``redaction`` is
  ``otlp -> memory_limiter -> redaction -> batch -> nop`` (the shipped configs' secret
  scrubbing; compare it with ``nop``). Pipelines whose components are not installed are
  skipped with a note;
* for ``loadbalancing``: ``otlp -> loadbalancing`` routing by trace ID to two more
  parse-only receivers, and ``otlp -> otlp`` to one of them (both without gzip or
  processors); the difference in CPU per span is the cost of routing;
* the ``nop`` pipeline again for each ``--security`` case: ``bearer`` (the receiver
  checks a ``bearertokenauth`` token on every request), ``tls`` (TLS 1.3 with a
  certificate the benchmark makes; connections are kept, so this is the per-request
  cost of encryption, not of handshakes), ``bearer+tls`` (both). Each is also given as a
  ratio to the plain ``nop`` pipeline measured in the same run;
* ``default`` in ``--pipelines``: the shipped ``collector/otelkit.yaml`` pinned to one
  CPU (``--core``), fed an app's traffic over gRPC (see "The default configuration"
  below); ``--baseline-tree DIR`` runs another checkout's copy beside it, and
  ``--tail-memory N`` measures tail sampling's resident memory per trace held.

For each, the collector process's CPU time (``/proc/<pid>/stat``) over the measured
window gives CPU per span and spans per CPU-second; its resident memory (``VmRSS``, and
the peak ``VmHWM``) is read at the end of the window. Every figure is also given as a
ratio to the bare receiver measured in the same run. All targets run side by side (idle
when not measured) and the cases are measured in interleaved rounds, so background load
on a shared machine disturbs them alike; each case shows its best round. The load
process needs CPU too, so on 2 cores the absolute spans/s is bounded by both; CPU per
span is the steadier figure. Targets run with the same glibc malloc settings (see
``STEADY_MALLOC``) unless ``--glibc-defaults`` is given.

``--workers 1,2`` measures ``otelkit collector run --workers N`` instead (the nop
pipeline, or the shipped configuration with ``--workers-config default``): spans/s and
CPU per span summed over the supervisor and its workers, loaded over one connection per
request in flight, as ratios to 1 worker, the routing step's cost alone, and the
projection to 16 cores (see "Worker processes" below).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

BATCH = 512
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
ROUTES = ["/users/{id}", "/orders/{id}", "/health", "/search", "/cart/{id}/items", "/login"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0", "curl/8.4.0", "python-httpx/0.27.0"]
PIPELINES: dict[str, tuple[list[str], str]] = {
    "nop": (["memory_limiter", "batch"], "nop"),
    "file": (["memory_limiter", "batch"], "file"),
    "direct": ([], "nop"),
    "redaction": (["memory_limiter", "redaction", "batch"], "nop"),
}
SECURITY_CASES = ("bearer", "tls", "bearer+tls")
TOKEN = "benchmark-token-0123456789abcdef"


@dataclass(frozen=True)
class Security:
    """What a load process must present: a token and/or the CA that signed the server."""

    token: str | None = None
    ca_file: str | None = None


def make_certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """(CA, server certificate, server key) for 127.0.0.1, made with ``cryptography``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("bench CA")).issuer_name(name("bench CA"))
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - day).not_valid_after(now + day)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(name("bench CA"))
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - day).not_valid_after(now + day)
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


# The request --------------------------------------------------------------------------


def build_request(batch: int = BATCH, seed: int = 7) -> bytes:
    """One trace export request of ``batch`` server spans, 10 attributes each."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    def attr(key: str, value: str | int) -> KeyValue:
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        return KeyValue(key=key, value=AnyValue(string_value=value))

    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in (
        ("service.name", "checkout"),
        ("service.version", "2.14.1"),
        ("deployment.environment.name", "production"),
        ("host.name", "checkout-7d9f8c-x2x9k"),
        ("telemetry.sdk.language", "python"),
    ):
        rs.resource.attributes.append(attr(key, value))
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.fastapi"
    ss.scope.version = "0.48b0"
    start = 1_700_000_000_000_000_000
    for i in range(batch):
        route = rng.choice(ROUTES)
        item = rng.randrange(100_000)
        span = ss.spans.add(
            trace_id=rng.randbytes(16),
            span_id=rng.randbytes(8),
            parent_span_id=rng.randbytes(8) if i % 3 else b"",
            name=f"GET {route}",
            kind=2,
            start_time_unix_nano=start + i * 1_000_000,
            end_time_unix_nano=start + i * 1_000_000 + rng.randrange(200_000, 90_000_000),
        )
        status = rng.choice([200, 200, 200, 201, 404, 500])
        span.attributes.extend(
            [
                attr("http.request.method", "GET"),
                attr("http.route", route),
                attr("url.full", f"https://shop.example.com{route.replace('{id}', str(item))}"),
                attr("http.response.status_code", status),
                attr("server.address", "shop.example.com"),
                attr("server.port", 443),
                attr("user_agent.original", rng.choice(AGENTS)),
                attr("client.address", f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"),
                attr("network.protocol.version", "1.1"),
                attr("http.request.id", f"{rng.getrandbits(64):016x}"),
            ]
        )
        span.status.code = 2 if status >= 500 else 0
    data: bytes = request.SerializeToString()
    return data


# The load process -----------------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int
    failures: int
    seconds: float
    cpu_seconds: float
    first_failure: str


def load_main(
    transport: str,
    port: int,
    body: bytes | AppTraffic,
    warmup: float,
    seconds: float,
    inflight: int,
    out: Connection,
    security: Security = Security(),
    rate: float = 0.0,
) -> None:
    """Entry point of the load process: warm up, tell the parent, measure, report.
    ``rate``: spans per second to send at (0: as fast as the target answers)."""
    result = asyncio.run(
        _load(transport, port, body, warmup, seconds, inflight, out, security, rate)
    )
    out.send(("done", result))


async def _load(
    transport: str,
    port: int,
    body: bytes | AppTraffic,
    warmup: float,
    seconds: float,
    inflight: int,
    out: Connection,
    security: Security,
    rate: float = 0.0,
) -> LoadResult:
    if isinstance(body, AppTraffic):
        send = await _app_grpc_sender(port, body, security)
    else:
        senders = {"grpc": _grpc_sender, "http": _http_sender, "grpc-conns": _grpc_connections}
        send = await senders[transport](port, body, inflight, security)
    counts = {"ok": 0, "failed": 0}
    first_failure: list[str] = []
    deadline = time.monotonic() + warmup

    # Paced: each worker sends one request per ``interval``, the workers staggered.
    interval = inflight * BATCH / rate if rate > 0 else 0.0

    async def worker(index: int) -> None:
        due = time.monotonic() + interval * index / inflight
        while time.monotonic() < deadline:
            if interval:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                due += interval
            try:
                await send(index)
                counts["ok"] += 1
            except Exception as exc:
                counts["failed"] += 1
                if not first_failure:
                    first_failure.append(f"{type(exc).__name__}: {exc}"[:200])

    await asyncio.gather(*(worker(i) for i in range(inflight)))
    counts["ok"] = counts["failed"] = 0
    first_failure.clear()
    out.send(("start", None))
    cpu0, t0 = _own_cpu(), time.monotonic()
    deadline = t0 + seconds
    await asyncio.gather(*(worker(i) for i in range(inflight)))
    return LoadResult(
        counts["ok"],
        counts["failed"],
        time.monotonic() - t0,
        _own_cpu() - cpu0,
        first_failure[0] if first_failure else "",
    )


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


async def _grpc_sender(
    port: int, body: bytes, inflight: int, security: Security
) -> Callable[[int], Any]:
    import grpc

    target, options = f"127.0.0.1:{port}", [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    if security.ca_file:
        root = Path(security.ca_file).read_bytes()
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
        channel = grpc.aio.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.aio.insecure_channel(target, options=options)
    export = channel.unary_unary(TRACE_EXPORT)
    metadata = (("authorization", f"Bearer {security.token}"),) if security.token else None

    async def send(_: int) -> None:
        await export(body, timeout=30, metadata=metadata)

    return send


async def _http_sender(
    port: int, body: bytes, inflight: int, security: Security
) -> Callable[[int], Any]:
    """A minimal keep-alive HTTP/1.1 client: the request bytes are built once."""
    import ssl

    auth = f"Authorization: Bearer {security.token}\r\n" if security.token else ""
    head = (
        f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: application/x-protobuf\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    request = head + body
    context = ssl.create_default_context(cafile=security.ca_file) if security.ca_file else None
    connections = [
        await asyncio.open_connection("127.0.0.1", port, ssl=context) for _ in range(inflight)
    ]

    async def send(index: int) -> None:
        reader, writer = connections[index]
        writer.write(request)
        status_and_headers = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in status_and_headers.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await reader.readexactly(length)
        if not status_and_headers.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(status_and_headers.split(b"\r\n", 1)[0].decode())

    return send


# The bare receiver ------------------------------------------------------------------------


def serve_bare(grpc_port: int, http_port: int) -> None:
    """Parse-only OTLP receiver: grpc.aio + uvicorn/httptools on one asyncio loop."""
    asyncio.run(_serve_bare(grpc_port, http_port))


async def _serve_bare(grpc_port: int, http_port: int) -> None:
    import grpc
    import uvicorn
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    parse = ExportTraceServiceRequest.FromString

    async def export(request: bytes, context: Any) -> bytes:
        parse(request)
        return b""

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)])
    handler = grpc.unary_unary_rpc_method_handler(export)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": handler}
            )
        ]
    )
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        parse(b"".join(chunks))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/x-protobuf"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=http_port,
        http="httptools",
        loop="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )
    await uvicorn.Server(config).serve()


# Targets ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"target exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def collector_config(
    pipeline: str, grpc_port: int, http_port: int, workdir: Path, security: str = ""
) -> str:
    processors, exporter = PIPELINES[pipeline]
    protocol = ""
    extensions = ""
    if "bearer" in security:
        protocol += ", auth: {authenticator: bearertokenauth}"
        extensions = f"extensions:\n  bearertokenauth: {{token: {TOKEN}}}\n"
    if "tls" in security:
        _, cert, key = make_certificates(workdir)
        protocol += f", tls: {{cert_file: {cert}, key_file: {key}}}"
    exporters = {
        "nop": "  nop: {}\n",
        # Rotation keeps the benchmark's disk use bounded.
        "file": f"  file:\n    path: {workdir / 'spans.jsonl'}\n"
        "    rotation: {max_megabytes: 200, max_backups: 1}\n",
    }
    return (
        extensions + "receivers:\n  otlp:\n    protocols:\n"
        f"      grpc: {{endpoint: 127.0.0.1:{grpc_port}{protocol}}}\n"
        f"      http: {{endpoint: 127.0.0.1:{http_port}{protocol}}}\n"
        "processors:\n"
        "  memory_limiter: {check_interval: 1s, limit_mib: 1536, spike_limit_mib: 384}\n"
        "  batch: {}\n"
        + ("  redaction: {}\n" if "redaction" in processors else "")
        + f"exporters:\n{exporters[exporter]}"
        "service:\n"
        + ("  extensions: [bearertokenauth]\n" if extensions else "")
        + f"  telemetry: {{metrics: {{address: 127.0.0.1:{free_port()}}}}}\n"
        "  pipelines:\n"
        f"    traces: {{receivers: [otlp], processors: [{', '.join(processors)}], "
        f"exporters: [{exporter}]}}\n"
    )


def pipeline_of(target: str) -> tuple[str, str]:
    """``nop+bearer+tls`` -> (``nop``, ``bearer+tls``)."""
    pipeline, _, security = target.partition("+")
    return pipeline, security


def missing_components(pipeline: str) -> list[str]:
    from otelkit.collector.runtime.component import Kind
    from otelkit.collector.runtime.registry import Registry, RegistryError

    registry = Registry.discover()
    processors, exporter = PIPELINES[pipeline]
    wanted = [(Kind.RECEIVER, "otlp"), (Kind.EXPORTER, exporter)]
    wanted += [(Kind.PROCESSOR, name) for name in processors]
    missing = []
    for kind, name in wanted:
        try:
            registry.get(kind, name)
        except RegistryError:
            missing.append(f"{kind.value} {name}")
    return missing


@dataclass
class Target:
    name: str
    label: str
    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log: Path
    security: Security = Security()


# glibc returns freed heap tops to the OS and re-faults them on the next ~200 KiB request
# buffer; whether a process hits that depends on heap-layout luck (a parse-only server
# did: 5-10x the page faults, +40% CPU per span). Every target gets the same settings,
# so the comparison measures Python work, not heap luck. --glibc-defaults turns it off.
STEADY_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(128 << 20), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def start_target(name: str, workdir: Path, env: dict[str, str]) -> Target:
    grpc_port, http_port = free_port(), free_port()
    log = workdir / f"{name}.log"
    if name == "bare":
        command = [sys.executable, __file__, "--serve-bare", str(grpc_port), str(http_port)]
        label = "bare receiver (parse only)"
    else:
        pipeline, security = pipeline_of(name)
        directory = workdir / name
        directory.mkdir()
        config = directory / "collector.yaml"
        config.write_text(collector_config(pipeline, grpc_port, http_port, directory, security))
        command = [sys.executable, "-m", "otelkit.cli", "collector", "run", "--config", str(config)]
        processors, exporter = PIPELINES[pipeline]
        label = " -> ".join(["otlp", *processors, exporter]) + (
            f" [{security}]" if security else ""
        )
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, **env}
        )
    target = Target(name, label, process, grpc_port, http_port, log)
    if name != "bare":
        _, security = pipeline_of(name)
        target.security = Security(
            TOKEN if "bearer" in security else None,
            str(workdir / name / "ca.pem") if "tls" in security else None,
        )
    try:
        wait_for_port(grpc_port, process)
        wait_for_port(http_port, process)
    except RuntimeError as exc:
        stop_target(target)
        raise RuntimeError(f"{name}: {exc}\n{log.read_text(errors='replace')[-2000:]}") from exc
    return target


def stop_target(target: Target) -> None:
    if target.process.poll() is None:
        target.process.terminate()
        try:
            target.process.wait(30)
        except subprocess.TimeoutExpired:
            target.process.kill()
            target.process.wait(5)


# The loadbalancing target -------------------------------------------------------------------
# Routing cost per span: ``otlp -> loadbalancing`` to two parse-only receivers, against
# ``otlp -> otlp`` to one of them, in the same run. Both skip gzip (``compression: none``)
# and processors, so the difference is the routing: splitting each request by trace ID
# (512 traces in the benchmark's request) and sending two requests instead of one.
LB_TARGETS = {
    "lb-forward": "otlp -> otlp (to 1 parse-only receiver)",
    "loadbalancing": "otlp -> loadbalancing (to 2 parse-only receivers)",
}


def loadbalancing_config(name: str, grpc_port: int, http_port: int, sinks: list[int]) -> str:
    otlp = "{tls: {insecure: true}, compression: none}"
    if name == "loadbalancing":
        hostnames = ", ".join(f"127.0.0.1:{port}" for port in sinks)
        exporter = (
            f"  loadbalancing:\n    protocol: {{otlp: {otlp}}}\n"
            f"    resolver: {{static: {{hostnames: [{hostnames}]}}}}\n"
        )
    else:
        exporter = f"  otlp: {{endpoint: 127.0.0.1:{sinks[0]}, tls: {{insecure: true}}, compression: none}}\n"
    exporter_id = "loadbalancing" if name == "loadbalancing" else "otlp"
    return (
        "receivers:\n  otlp:\n    protocols:\n"
        f"      grpc: {{endpoint: 127.0.0.1:{grpc_port}}}\n"
        f"      http: {{endpoint: 127.0.0.1:{http_port}}}\n"
        f"exporters:\n{exporter}"
        "service:\n"
        f"  telemetry: {{metrics: {{address: 127.0.0.1:{free_port()}}}}}\n"
        f"  pipelines:\n    traces: {{receivers: [otlp], exporters: [{exporter_id}]}}\n"
    )


def start_loadbalancing_targets(
    workdir: Path, env: dict[str, str]
) -> tuple[list[Target], list[Target]]:
    """(the two measured collectors, the two parse-only receivers they send to)."""
    sinks = [start_target("bare", workdir, env) for _ in range(2)]
    for sink in sinks:
        sink.label = "parse-only receiver behind the loadbalancing targets"
    targets = []
    for name, label in LB_TARGETS.items():
        grpc_port, http_port = free_port(), free_port()
        directory = workdir / name
        directory.mkdir()
        config = directory / "collector.yaml"
        config.write_text(
            loadbalancing_config(name, grpc_port, http_port, [s.grpc_port for s in sinks])
        )
        command = [sys.executable, "-m", "otelkit.cli", "collector", "run", "--config", str(config)]
        log = directory / "collector.log"
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, **env}
            )
        target = Target(name, label, process, grpc_port, http_port, log)
        targets.append(target)
        try:
            wait_for_port(grpc_port, process)
            wait_for_port(http_port, process)
        except RuntimeError as exc:
            for started in [*targets, *sinks]:
                stop_target(started)
            raise RuntimeError(f"{name}: {exc}\n{log.read_text(errors='replace')[-2000:]}") from exc
    return targets, sinks


def report_loadbalancing(figures: list[Figure]) -> None:
    """CPU per span of the loadbalancing target against the plain otlp forwarder."""
    lb, forward = LB_TARGETS["loadbalancing"], LB_TARGETS["lb-forward"]
    rows = [
        (f.transport, f, p)
        for f in figures
        if f.target == lb
        for p in figures
        if p.transport == f.transport and p.target == forward
    ]
    if not rows:
        return
    print()
    print("routing cost of the loadbalancing exporter (traceID, 2 backends) against otlp -> otlp")
    header = (
        f"{'transport':<9} {'otlp us/span':>12} {'lb us/span':>10} {'routing us/span':>15} "
        f"{'us/span ratio':>13} {'spans/s ratio':>13}"
    )
    print(header)
    print("-" * len(header))
    for transport, f, plain in rows:
        print(
            f"{transport:<9} {plain.us_per_span:>12.2f} {f.us_per_span:>10.2f} "
            f"{f.us_per_span - plain.us_per_span:>15.2f} {f.us_per_span / plain.us_per_span:>13.2f} "
            f"{f.spans_per_second / plain.spans_per_second:>13.2f}"
        )


# Measurement --------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def process_memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def settle(target: Target, timeout: float = 20.0) -> None:
    """Wait until ``target`` is idle again (an exporter may still drain its queue), so it
    does not take CPU from the next case."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = process_cpu(target.process.pid)
        time.sleep(0.25)
        if process_cpu(target.process.pid) - before < 0.02:
            return


@dataclass
class Figure:
    transport: str
    target: str
    spans_per_second: float
    cores: float
    rss_mib: float
    peak_mib: float
    load_cores: float
    failures: int
    first_failure: str

    @property
    def us_per_span(self) -> float:
        return self.cores / self.spans_per_second * 1e6 if self.spans_per_second else float("nan")

    @property
    def spans_per_core(self) -> float:
        return self.spans_per_second / self.cores if self.cores else float("nan")


def measure(
    target: Target, transport: str, body: bytes | AppTraffic, args: argparse.Namespace
) -> Figure:
    port = target.grpc_port if transport == "grpc" else target.http_port
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    load_args = (transport, port, body, args.warmup, args.seconds, args.inflight, child)
    rate = getattr(args, "rate", 0.0) if isinstance(body, AppTraffic) else 0.0
    load = context.Process(target=load_main, args=(*load_args, target.security, rate))
    load.start()
    try:
        if not parent.poll(args.warmup + 60):
            raise RuntimeError("load process did not start")
        parent.recv()
        cpu0 = process_cpu(target.process.pid)
        if not parent.poll(args.seconds + 60):
            raise RuntimeError("load process did not finish")
        cpu1 = process_cpu(target.process.pid)
        rss, peak = process_memory(target.process.pid)
        _, result = parent.recv()
    finally:
        load.join(30)
        if load.is_alive():
            load.kill()
    assert isinstance(result, LoadResult)
    return Figure(
        transport,
        target.label,
        result.requests * BATCH / result.seconds,
        (cpu1 - cpu0) / result.seconds,
        rss,
        peak,
        result.cpu_seconds / result.seconds,
        result.failures,
        result.first_failure,
    )


def report(figures: list[Figure], body: bytes, args: argparse.Namespace, notes: list[str]) -> None:
    print(
        f"collector throughput: {BATCH}-span requests ({len(body) / 1024:.0f} KiB protobuf, "
        f"10 attributes per span), {args.inflight} in flight, {args.seconds:g}s measured per "
        f"case after {args.warmup:g}s warm-up, best of {args.rounds} interleaved rounds, "
        f"{os.cpu_count()} CPUs"
    )
    header = (
        f"{'transport':<9} {'target':<58} {'spans/s':>9} {'cores':>5} {'us/span':>7} "
        f"{'spans/core-s':>12} {'RSS MiB':>7} {'peak':>5} {'load cores':>10} "
        f"{'spans/s vs bare':>15} {'per-core vs bare':>16}"
    )
    print(header)
    print("-" * len(header))
    for transport in ("grpc", "http"):
        rows = [f for f in figures if f.transport == transport]
        bare = next((f for f in rows if f.target.startswith("bare")), None)
        for f in rows:
            ratio = f.spans_per_second / bare.spans_per_second if bare else float("nan")
            core_ratio = f.spans_per_core / bare.spans_per_core if bare else float("nan")
            print(
                f"{f.transport:<9} {f.target:<58} {f.spans_per_second:>9,.0f} {f.cores:>5.2f} "
                f"{f.us_per_span:>7.2f} {f.spans_per_core:>12,.0f} {f.rss_mib:>7.0f} "
                f"{f.peak_mib:>5.0f} {f.load_cores:>10.2f} {ratio:>15.2f} {core_ratio:>16.2f}"
            )
            if f.failures:
                print(f"          {f.failures} requests refused: {f.first_failure}")
    print(
        "anchor: the upstream Go collector's OTLP pass-through holds 10k spans/s under 20% of "
        "a core (>= 50k spans per core-second); aim here: nop pipeline >= 0.5 x bare."
    )
    report_security(figures)
    report_redaction(figures)
    report_loadbalancing(figures)
    for note in notes:
        print(f"note: {note}")


def report_security(figures: list[Figure]) -> None:
    """Each --security case against the plain nop pipeline of the same run."""
    rows = []
    for f in figures:
        if not f.target.endswith("]"):
            continue
        plain_label, _, case = f.target.rpartition(" [")
        plain = next(
            (p for p in figures if p.transport == f.transport and p.target == plain_label), None
        )
        if plain is not None:
            rows.append((case.rstrip("]"), f, plain))
    print_ratios(
        "cost of auth and TLS: the nop pipeline with them, as ratios to the plain nop pipeline",
        rows,
    )


def report_redaction(figures: list[Figure]) -> None:
    """The redaction pipeline against the nop pipeline of the same run (it only adds the
    ``redaction`` processor). In-process per-span figures: ``benchmarks/redaction.py``."""
    labels = {
        name: " -> ".join(["otlp", *PIPELINES[name][0], PIPELINES[name][1]])
        for name in ("redaction", "nop")
    }
    rows = [
        ("redaction", f, p)
        for f in figures
        if f.target == labels["redaction"]
        for p in figures
        if p.transport == f.transport and p.target == labels["nop"]
    ]
    print_ratios("cost of redaction: the redaction pipeline as ratios to the nop pipeline", rows)


def print_ratios(title: str, rows: list[tuple[str, Figure, Figure]]) -> None:
    """(case, figure, baseline) rows: spans/s and CPU per span as ratios to the baseline."""
    if not rows:
        return
    print()
    print(title)
    header = f"{'transport':<9} {'case':<12} {'spans/s ratio':>13} {'us/span ratio':>13} {'us/span added':>13}"
    print(header)
    print("-" * len(header))
    for case, f, plain in rows:
        print(
            f"{f.transport:<9} {case:<12} {f.spans_per_second / plain.spans_per_second:>13.2f} "
            f"{f.us_per_span / plain.us_per_span:>13.2f} {f.us_per_span - plain.us_per_span:>13.2f}"
        )


# The default configuration (collector/otelkit.yaml) -----------------------------------------
#
# ``default`` runs the shipped configuration as a user does (its ports, data directory and
# budgets file moved by its environment variables, no SENTRY_DSN), pinned to one core, and
# sends it what an instrumented app's BatchSpanProcessor sends: 512-span requests in which
# concurrent requests' traces interleave and some traces continue in the next request.
# ``--baseline-tree DIR`` runs the same configuration from a second checkout too
# (``default@DIR``), so a change is measured against its base in the same run.
# ``--tail-memory N`` measures what tail sampling holds per trace in flight.

APP_SERVICE = "shop-api"
APP_ROUTES = ["/checkout", "/products/{id}", "/orders/{id}", "/cart/{id}/items", "/search"]
APP_QUERIES = [
    "SELECT id, name, price FROM products WHERE id = $1",
    "SELECT * FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT 20",
    "UPDATE carts SET updated_at = now() WHERE id = $1",
    "INSERT INTO order_lines (order_id, product_id, quantity) VALUES ($1, $2, $3)",
    "SELECT count(*) FROM cart_items WHERE cart_id = $1",
]
# Every trace ID of a request starts with these 8 bytes; the load process puts a fresh
# prefix in their place each time it has sent every request once, so every trace is new.
TRACE_PREFIX = bytes.fromhex("9e3779b97f4a7c15")
APP_REQUESTS = 16  # distinct requests in one round of the traffic


@dataclass(frozen=True)
class AppTraffic:
    """Requests of interleaved multi-span traces whose trace IDs the sender renews."""

    bodies: tuple[bytes, ...]
    traces: int  # traces in one round of ``bodies``


def _app_trace(rng: random.Random, start: int) -> list[dict[str, Any]]:
    """One request's spans in the order they end: DB (and now and then outgoing HTTP)
    calls, then the server span. About one trace in twenty has an N+1 query, one in
    fifty a slow query, one in twenty a 5xx."""
    trace_id = TRACE_PREFIX + rng.randbytes(8)
    root = rng.randbytes(8)
    route = rng.choice(APP_ROUTES)
    item = rng.randrange(100_000)
    children: list[dict[str, Any]] = []
    at = start + rng.randrange(100_000, 500_000)
    calls = [rng.choice(APP_QUERIES) for _ in range(rng.randrange(2, 7))]
    if rng.random() < 0.05:
        calls += [APP_QUERIES[0]] * 8
    for query in calls:
        took = rng.randrange(300_000, 8_000_000)
        if rng.random() < 0.02:
            took = 600_000_000
        children.append(
            {"trace_id": trace_id, "span_id": rng.randbytes(8), "parent": root, "kind": 3,
             "name": query.split()[0] + " shop", "start": at, "end": at + took,
             "attrs": [("db.system", "postgresql"), ("db.namespace", "shop"),
                       ("db.query.text", query), ("server.address", "db.internal"),
                       ("server.port", 5432)]}
        )  # fmt: skip
        at += took + rng.randrange(50_000, 300_000)
    if rng.random() < 0.25:
        took = rng.randrange(2_000_000, 40_000_000)
        children.append(
            {"trace_id": trace_id, "span_id": rng.randbytes(8), "parent": root, "kind": 3,
             "name": "GET", "start": at, "end": at + took,
             "attrs": [("http.request.method", "GET"),
                       ("url.full", f"http://payments.internal/v1/quotes/{item}"),
                       ("server.address", "payments.internal"), ("server.port", 80),
                       ("http.response.status_code", 200)]}
        )  # fmt: skip
        at += took
    status = 500 if rng.random() < 0.05 else rng.choice([200, 200, 200, 201, 404])
    server = {
        "trace_id": trace_id, "span_id": root, "parent": b"", "kind": 2,
        "name": f"GET {route}", "start": start, "end": at + rng.randrange(100_000, 900_000),
        "status": 2 if status >= 500 else 0,
        "attrs": [("http.request.method", "GET"), ("http.route", route),
                  ("url.full", f"https://shop.example.com{route.replace('{id}', str(item))}"),
                  ("http.response.status_code", status), ("server.address", "shop.example.com"),
                  ("server.port", 443), ("user_agent.original", rng.choice(AGENTS)),
                  ("client.address", f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"),
                  ("network.protocol.version", "1.1")],
    }  # fmt: skip
    return [*children, server]


# A fixed start keeps the traffic the same from one process to the next, for the
# benchmarks that compare what checkouts keep and find.
FIXED_START_NS = 1_700_000_000_000_000_000


def build_app_traffic(
    requests: int = APP_REQUESTS, seed: int = 11, start_ns: int = FIXED_START_NS
) -> AppTraffic:
    """``requests`` requests of ``BATCH`` spans each: about 20 requests in progress at a
    time, their spans interleaved as they end, cut into batches wherever ``BATCH`` falls
    (so some traces continue in the next request), the first starting at ``start_ns``."""
    rng = random.Random(seed)
    spans: list[dict[str, Any]] = []
    open_traces: list[list[dict[str, Any]]] = []
    clock = start_ns
    traces = 0
    while len(spans) < requests * BATCH:
        while len(open_traces) < 20:
            open_traces.append(_app_trace(rng, clock))
        trace = rng.choice(open_traces)
        spans.append(trace.pop(0))
        clock += 1_000_000
        if not trace:
            open_traces.remove(trace)
            traces += 1
    spans = spans[: requests * BATCH]
    bodies = tuple(_app_request(spans[i : i + BATCH]) for i in range(0, len(spans), BATCH))
    return AppTraffic(bodies, traces)


def _app_request(spans: list[dict[str, Any]]) -> bytes:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    def attr(key: str, value: str | int) -> KeyValue:
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        return KeyValue(key=key, value=AnyValue(string_value=value))

    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in (
        ("service.name", APP_SERVICE),
        ("service.version", "2.14.1"),
        ("deployment.environment.name", "production"),
        ("host.name", "shop-api-7d9f8c-x2x9k"),
        ("telemetry.sdk.language", "python"),
    ):
        rs.resource.attributes.append(attr(key, value))
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.fastapi"
    ss.scope.version = "0.48b0"
    for s in spans:
        span = ss.spans.add(
            trace_id=s["trace_id"],
            span_id=s["span_id"],
            parent_span_id=s["parent"],
            name=s["name"],
            kind=s["kind"],
            start_time_unix_nano=s["start"],
            end_time_unix_nano=s["end"],
        )
        span.attributes.extend(attr(k, v) for k, v in s["attrs"])
        span.status.code = s.get("status", 0)
    data: bytes = request.SerializeToString()
    return data


def renewed(body: bytes, round_number: int) -> bytes:
    """``body`` with the trace IDs of round ``round_number``."""
    return body.replace(TRACE_PREFIX, round_number.to_bytes(8, "big"))


async def _app_grpc_sender(
    port: int, traffic: AppTraffic, security: Security
) -> Callable[[int], Any]:
    """Sends the traffic's requests in turn; each round has trace IDs never sent before
    (the round numbers start at a random point, so rounds of other runs differ too) and
    times after the last round's, as an app's spans come (see :func:`advanced`)."""
    import grpc

    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    export = channel.unary_unary(TRACE_EXPORT)
    metadata = (("authorization", f"Bearer {security.token}"),) if security.token else None
    first = random.getrandbits(40) << 16
    sent = [first]
    times = [span_times(body) for body in traffic.bodies]

    async def send(_: int) -> None:
        n = sent[0]
        sent[0] += 1
        round_number, index = divmod(n, len(traffic.bodies))
        body = renewed(traffic.bodies[index], round_number)
        body = advanced(body, times[index], (n - first) // len(traffic.bodies))
        await export(body, timeout=30, metadata=metadata)

    return send


# A round of the app traffic spans under 9 s of span time (a span ends every 1 ms); each
# round is moved this much later than the one before, so rounds never overlap.
ROUND_SHIFT_NS = 10_000_000_000
_TIME = struct.Struct("<Q")


def span_times(body: bytes) -> list[tuple[int, int]]:
    """Where each span's start and end time lie in ``body`` (their fixed64 bytes), and
    their values."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    found: list[tuple[int, int]] = []
    at = 0
    request = ExportTraceServiceRequest.FromString(body)
    for span in (s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans):
        for tag, value in (
            (b"\x39", span.start_time_unix_nano),
            (b"\x41", span.end_time_unix_nano),
        ):
            at = body.index(tag + _TIME.pack(value), at) + 1
            found.append((at, value))
    return found


def advanced(body: bytes, times: list[tuple[int, int]], rounds: int) -> bytes:
    """``body`` with every span ``rounds`` x ``ROUND_SHIFT_NS`` later: a log store then
    takes each round's records after the last round's, as from a live app, instead of
    inserting the same times all over its time indexes again."""
    moved = bytearray(body)
    shift = rounds * ROUND_SHIFT_NS
    for at, value in times:
        _TIME.pack_into(moved, at, value + shift)
    return bytes(moved)


def default_env(workdir: Path) -> tuple[dict[str, str], int, int]:
    """Environment moving every port and path of collector/otelkit.yaml, and the OTLP
    gRPC and HTTP ports."""
    grpc_port, http_port = free_port(), free_port()
    data = workdir / "data"
    data.mkdir(parents=True)
    env = {
        "OTELKIT_GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
        "OTELKIT_HTTP_ENDPOINT": f"127.0.0.1:{http_port}",
        "OTELKIT_PROMETHEUS_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELKIT_HEALTH_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELKIT_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "OTELKIT_DATA_DIR": str(data),
    }
    return env, grpc_port, http_port


def start_default(
    name: str,
    workdir: Path,
    env: dict[str, str],
    tree: str,
    core: int,
    config: str = "collector/otelkit.yaml",
) -> Target:
    """collector/otelkit.yaml (or ``config``) from checkout ``tree``, pinned to CPU
    ``core``."""
    directory = workdir / name.replace("/", "_")
    moved, grpc_port, http_port = default_env(directory)
    log = directory / "collector.log"
    command = [sys.executable, "-m", "otelkit.cli", "collector", "run"]
    command += ["--config", config]
    full_env = {**os.environ, **env, **moved, "PYTHONPATH": tree}
    full_env.pop("SENTRY_DSN", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tree,
            env=full_env,
        )
    os.sched_setaffinity(process.pid, {core})
    label = f"collector/otelkit.yaml{'' if name == 'default' else ' @' + name.split('@', 1)[1]}"
    target = Target(name, label, process, grpc_port, http_port, log)
    try:
        wait_for_port(grpc_port, process)
    except RuntimeError as exc:
        stop_target(target)
        raise RuntimeError(f"{name}: {exc}\n{log.read_text(errors='replace')[-2000:]}") from exc
    return target


def report_default(figures: list[Figure]) -> None:
    """The default configuration from each checkout, against the first (``default``):
    per checkout, the round that cost the least CPU per span (the least disturbed by
    other load on the machine; spans/s follows the load process's share of the CPUs)."""
    least: dict[str, Figure] = {}
    for f in figures:
        if not f.target.startswith("collector/otelkit.yaml"):
            continue
        if f.target not in least or f.us_per_span < least[f.target].us_per_span:
            least[f.target] = f
    rows = list(least.values())
    if not rows:
        return
    print()
    print(
        "the default configuration (collector/otelkit.yaml), one core, gRPC, "
        "interleaved multi-span traces; each checkout's round of least CPU per span"
    )
    header = (
        f"{'target':<40} {'spans/s':>9} {'us/span':>8} {'spans/CPU-s':>11} {'RSS MiB':>7} "
        f"{'VmHWM':>6} {'refused':>7} {'spans/CPU-s ratio':>17}"
    )
    print(header)
    print("-" * len(header))
    first = rows[0]
    for f in rows:
        print(
            f"{f.target:<40} {f.spans_per_second:>9,.0f} {f.us_per_span:>8.2f} "
            f"{f.spans_per_core:>11,.0f} {f.rss_mib:>7.0f} {f.peak_mib:>6.0f} {f.failures:>7} "
            f"{f.spans_per_core / first.spans_per_core:>17.2f}"
        )
        if f.failures:
            print(f"          first refusal: {f.first_failure}")


TAIL_MEMORY_CONFIG = """\
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: 127.0.0.1:{grpc_port}}}
processors:
  memory_limiter: {{check_interval: 1s, limit_mib: 4096}}
  # collector/otelkit.yaml's, deciding only after the measurement
  tail_sampling:
    decision_wait: 1h
    num_traces: 10000000
    keep: {{errors: true, budget_breaches: true, perf_issues: true}}
    policies:
      - {{name: one-in-ten, type: probabilistic, probabilistic: {{sampling_percentage: 10}}}}
exporters:
  nop: {{}}
service:
  telemetry: {{metrics: {{address: 127.0.0.1:{metrics_port}}}}}
  pipelines:
    traces: {{receivers: [otlp], processors: [memory_limiter, tail_sampling], exporters: [nop]}}
"""


def tail_memory(traces: int, tree: str, env: dict[str, str]) -> tuple[float, float, float, int]:
    """(RSS MiB with no trace held, with half of ``traces``, with all, traces sent): the
    app traffic sent once, to a tail_sampling that decides nothing while measured."""
    traffic = build_app_traffic(max(APP_REQUESTS, -(-traces * BATCH // 4000)))
    per_round = len(traffic.bodies)
    per_request = traffic.traces / per_round
    requests = max(2, round(traces / per_request))
    with tempfile.TemporaryDirectory(prefix="otelkit-tail-") as tmp:
        grpc_port = free_port()
        config = Path(tmp) / "collector.yaml"
        config.write_text(TAIL_MEMORY_CONFIG.format(grpc_port=grpc_port, metrics_port=free_port()))
        command = [sys.executable, "-m", "otelkit.cli", "collector", "run", "--config", str(config)]
        with open(Path(tmp) / "collector.log", "wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=tree,
                env={**os.environ, **env, "PYTHONPATH": tree},
            )  # fmt: skip
        target = Target("tail", "tail", process, grpc_port, 0, Path(tmp) / "collector.log")
        try:
            wait_for_port(grpc_port, process)
            time.sleep(2)
            none = process_memory(process.pid)[0]
            half = _send_requests(grpc_port, traffic, 0, requests // 2)
            time.sleep(1)
            at_half = process_memory(process.pid)[0]
            _send_requests(grpc_port, traffic, half, requests)
            time.sleep(1)
            at_all = process_memory(process.pid)[0]
        finally:
            stop_target(target)
    return none, at_half, at_all, round(requests * per_request)


def _send_requests(port: int, traffic: AppTraffic, first: int, end: int) -> int:
    """Sends requests ``first`` .. ``end - 1`` of the traffic (new trace IDs each round)."""
    import grpc

    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        export = channel.unary_unary(TRACE_EXPORT)
        for n in range(first, end):
            round_number, index = divmod(n, len(traffic.bodies))
            export(renewed(traffic.bodies[index], round_number + 1), timeout=60)
    return end


def report_tail_memory(traces: int, trees: list[tuple[str, str]], env: dict[str, str]) -> None:
    print()
    print(
        f"tail sampling memory: {traces:,} interleaved multi-span traces held "
        "(decision_wait 1h); per 1,000 traces = RSS growth from half to all of them"
    )
    header = (
        f"{'checkout':<24} {'RSS none':>8} {'RSS half':>8} {'RSS all':>8} "
        f"{'KiB per 1,000 traces':>20} {'bytes/trace':>11} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    first = None
    for name, tree in trees:
        none, half, full, sent = tail_memory(traces, tree, env)
        per_trace = (full - half) * 1024 * 1024 / (sent - sent // 2)
        first = first or per_trace
        print(
            f"{name:<24} {none:>8.1f} {half:>8.1f} {full:>8.1f} "
            f"{per_trace * 1000 / 1024:>20,.0f} {per_trace:>11,.0f} {per_trace / first:>6.2f}"
        )


def best_rounds(figures: list[Figure]) -> list[Figure]:
    """Per case, the round with the most spans/s: the one least disturbed by other load."""
    best: dict[tuple[str, str], Figure] = {}
    for figure in figures:
        key = (figure.transport, figure.target)
        if key not in best or figure.spans_per_second > best[key].spans_per_second:
            best[key] = figure
    return list(best.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~25 s: one round, 2 s per case")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per case")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds; the best of each case is shown"
    )
    parser.add_argument("--inflight", type=int, default=8, help="requests in flight")
    parser.add_argument(
        "--pipelines",
        default="nop,file,direct,redaction,loadbalancing",
        help=f"comma-separated, from: {', '.join(PIPELINES)}, loadbalancing (the bare "
        "receiver always runs)",
    )
    parser.add_argument("--transports", default="grpc,http")
    parser.add_argument(
        "--security",
        default=",".join(SECURITY_CASES),
        help=f"cases of the nop pipeline, from: {', '.join(SECURITY_CASES)}; 'none' for none",
    )
    parser.add_argument(
        "--glibc-defaults", action="store_true", help="run targets without the malloc settings"
    )
    parser.add_argument(
        "--baseline-tree",
        help="also run the default configuration from this checkout (read only), as a baseline",
    )
    parser.add_argument(
        "--tail-memory", type=int, default=0, metavar="TRACES",
        help="measure tail sampling's memory per trace held, with this many traces",
    )  # fmt: skip
    parser.add_argument("--core", type=int, help="CPU the default configuration runs on")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="SPANS_PER_S",
        help="send the default configuration's app traffic at this rate instead of as fast "
        "as it answers (below capacity: no refusal is expected)",
    )
    parser.add_argument("--serve-bare", nargs=2, type=int, metavar=("GRPC_PORT", "HTTP_PORT"))
    parser.add_argument(
        "--workers",
        help="instead of the cases above: a collector with these worker counts "
        "(otelkit collector run --workers N), e.g. 1,2, and the routing step's cost",
    )
    parser.add_argument(
        "--workers-config",
        choices=("nop", "default"),
        default="nop",
        help="with --workers: the nop pipeline, or the shipped collector/otelkit.yaml",
    )
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(*args.serve_bare)
        return
    if args.quick:
        args.seconds, args.warmup, args.rounds = 2.0, 0.75, 1
    if args.workers:
        workers_main(args)
        return

    body = build_request()
    notes: list[str] = []
    targets = ["bare"]
    if args.tail_memory and not args.pipelines.strip():
        root = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        trees = [("this checkout", root)]
        if args.baseline_tree:
            trees.append((args.baseline_tree, args.baseline_tree))
        report_tail_memory(args.tail_memory, trees, {} if args.glibc_defaults else STEADY_MALLOC)
        return
    with_loadbalancing = False
    for name in args.pipelines.split(","):
        name = name.strip()
        if name == "loadbalancing":
            with_loadbalancing = True
            continue
        if name == "default":
            targets.append(name)
            if args.baseline_tree:
                targets.append(f"default@{args.baseline_tree}")
            continue
        if name not in PIPELINES:
            parser.error(f"unknown pipeline {name!r}; known: {', '.join(PIPELINES)}")
        if missing := missing_components(name):
            notes.append(f"pipeline {name} skipped: not installed: {', '.join(missing)}")
        else:
            targets.append(name)
    for case in args.security.split(","):
        case = case.strip()
        if case in ("", "none"):
            continue
        if case not in SECURITY_CASES:
            parser.error(f"unknown security case {case!r}; known: {', '.join(SECURITY_CASES)}")
        if "nop" not in targets:
            targets.append("nop")
        targets.append(f"nop+{case}")
    env = {} if args.glibc_defaults else STEADY_MALLOC
    if env:
        notes.append(
            "every target ran with "
            + " ".join(f"{k}={v}" for k, v in env.items())
            + " (steady glibc heap; --glibc-defaults to measure without)"
        )
    figures: list[Figure] = []
    root = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    # Spans of the last minute, as an app sends them: the log store keeps the access
    # records and findings (its retention would delete records dated years ago).
    recent = time.time_ns() - 60 * 1_000_000_000
    traffic = build_app_traffic(start_ns=recent) if "default" in targets else None
    with tempfile.TemporaryDirectory(prefix="otelkit-bench-") as tmp:
        running: list[Target] = []
        sinks: list[Target] = []
        try:
            for name in targets:
                if name.startswith("default"):
                    tree = name.partition("@")[2] or root
                    running.append(start_default(name, Path(tmp), env, tree, core))
                else:
                    running.append(start_target(name, Path(tmp), env))
            if with_loadbalancing:
                fronts, sinks = start_loadbalancing_targets(Path(tmp), env)
                running += fronts
            for _ in range(args.rounds):
                for transport in args.transports.split(","):
                    for target in running:
                        if target.name.startswith("default"):
                            if transport.strip() != "grpc":
                                continue  # an SDK's default transport; one is enough
                            assert traffic is not None
                            figures.append(measure(target, "grpc", traffic, args))
                        else:
                            figures.append(measure(target, transport.strip(), body, args))
                        settle(target)
        finally:
            for target in [*running, *sinks]:
                stop_target(target)
    if "default" in targets:
        notes.append(
            f"collector/otelkit.yaml ran pinned to CPU {core}, gRPC only, sent "
            f"{len(traffic.bodies) if traffic else 0} requests of interleaved traces in turn "
            "with new trace IDs each round"
        )
    report(best_rounds(figures), body, args, notes)
    report_default(figures)
    if args.tail_memory:
        trees = [("this checkout", root)]
        if args.baseline_tree:
            trees.append((args.baseline_tree, args.baseline_tree))
        report_tail_memory(args.tail_memory, trees, env)


# Worker processes (otelkit collector run --workers N) --------------------------------------
#
# The nop pipeline run as 1 and as N worker processes, loaded over many connections (the
# kernel spreads connections over the workers). Every 512-span request holds 512 traces,
# so with 2 workers half of each request is forwarded to the other worker: the routing
# cost measured is that of SDK batches, which mix many traces. CPU is summed over every
# process of the collector (supervisor and workers).


async def _grpc_connections(
    port: int, body: bytes, inflight: int, security: Security
) -> Callable[[int], Any]:
    """One gRPC connection per request in flight, so they are spread over the workers."""
    import grpc

    options = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.use_local_subchannel_pool", 1),  # a connection of its own, not a shared one
    ]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(inflight)
    ]
    exports = [channel.unary_unary(TRACE_EXPORT) for channel in channels]

    async def send(index: int) -> None:
        await exports[index](body, timeout=30)

    return send


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (a supervisor and its workers)."""
    total = process_cpu(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return total + sum(process_cpu(int(child)) for child in children)


SHIPPED_VARIABLES = (
    "OTELKIT_PROMETHEUS_ENDPOINT",
    "OTELKIT_HEALTH_ENDPOINT",
    "OTELKIT_METRICS_ADDRESS",
)


def start_workers_target(count: int, workdir: Path, env: dict[str, str], config: str) -> Target:
    """``config``: ``nop`` (the nop pipeline) or ``default`` (collector/otelkit.yaml with
    its listeners moved by its variables, and no Sentry DSN)."""
    grpc_port, http_port = free_port(), free_port()
    directory = workdir / f"workers-{count}"
    directory.mkdir()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    if config == "default":
        path = Path(root) / "collector" / "otelkit.yaml"
        env = {
            **env,
            **{name: f"127.0.0.1:{free_port()}" for name in SHIPPED_VARIABLES},
            "OTELKIT_GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
            "OTELKIT_HTTP_ENDPOINT": f"127.0.0.1:{http_port}",
            "OTELKIT_DATA_DIR": str(directory / "data"),
            "OTELKIT_BUDGETS_FILE": str(Path(root) / "collector" / "budgets.yaml"),
            "SENTRY_DSN": "",
        }
        pipeline = "collector/otelkit.yaml"
    else:
        path = directory / "collector.yaml"
        path.write_text(collector_config("nop", grpc_port, http_port, directory))
        pipeline = "otlp -> memory_limiter -> batch -> nop"
    command = [sys.executable, "-m", "otelkit.cli", "collector", "run", "--config", str(path)]
    command += ["--workers", str(count)]
    log = directory / "collector.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=root, env={**os.environ, **env}
        )
    label = f"{pipeline}, {count} worker" + ("s" if count > 1 else "")
    target = Target(f"workers-{count}", label, process, grpc_port, http_port, log)
    try:
        wait_for_port(grpc_port, process)
        wait_for_port(http_port, process)
        time.sleep(2.0)  # every worker binds: the first one to listen opens the port
    except RuntimeError as exc:
        stop_target(target)
        raise RuntimeError(f"{exc}\n{log.read_text(errors='replace')[-2000:]}") from exc
    return target


def measure_tree(target: Target, transport: str, body: bytes, args: argparse.Namespace) -> Figure:
    """:func:`measure`, with the CPU of every process of the collector."""
    port = target.grpc_port if transport.startswith("grpc") else target.http_port
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    load_args = (transport, port, body, args.warmup, args.seconds, args.inflight, child)
    load = context.Process(target=load_main, args=load_args)
    load.start()
    try:
        if not parent.poll(args.warmup + 60):
            raise RuntimeError("load process did not start")
        parent.recv()
        cpu0 = tree_cpu(target.process.pid)
        if not parent.poll(args.seconds + 60):
            raise RuntimeError("load process did not finish")
        cpu1 = tree_cpu(target.process.pid)
        _, result = parent.recv()
    finally:
        load.join(30)
        if load.is_alive():
            load.kill()
    assert isinstance(result, LoadResult)
    return Figure(
        transport, target.label, result.requests * BATCH / result.seconds,
        (cpu1 - cpu0) / result.seconds, 0.0, 0.0, result.cpu_seconds / result.seconds,
        result.failures, result.first_failure,
    )  # fmt: skip


def routing_step_us_per_span(body: bytes, workers: int = 2, repeat: int = 200) -> float:
    """The routing step alone, in this process: cut a serialised request by trace owner
    (each share is then parsed once, by its owner, as one process parses the whole)."""
    from otelkit.collector.runtime.workers.routing import split_encoded_traces

    start = time.process_time()
    for _ in range(repeat):
        split_encoded_traces(body, workers)
    return (time.process_time() - start) / (repeat * BATCH) * 1e6


def channel_us_per_span(body: bytes, calls: int = 400, inflight: int = 8) -> float:
    """The internal channel alone, both ends in this process: CPU per forwarded span to
    send a share to a worker's socket and have it read (not parsed) there."""
    from otelkit.collector.runtime.workers.channel import ChannelServer, Op, Peer
    from otelkit.collector.runtime.workers.routing import split_encoded_traces

    share, spans = split_encoded_traces(body, 2)[1]

    async def taken(op: Op, name: str, data: bytes) -> bytes:
        return b""

    async def run(directory: str) -> float:
        server = ChannelServer(Path(directory) / "worker.sock", taken)
        await server.start()
        peer = Peer(server.path, "worker")

        async def sender() -> None:
            for _ in range(calls // inflight):
                await peer.call(Op.CONSUME, "otlp", b"T" + share)

        await sender()  # connect and warm up
        start = time.process_time()
        await asyncio.gather(*(sender() for _ in range(inflight)))
        used = time.process_time() - start
        await peer.close()
        await server.stop()
        return used / (calls // inflight * inflight * spans) * 1e6

    with tempfile.TemporaryDirectory(prefix="otelkit-bench-") as directory:
        return asyncio.run(run(directory))


def workers_main(args: argparse.Namespace) -> None:
    counts = sorted({int(n) for n in args.workers.split(",")})
    if counts[0] != 1:
        counts.insert(0, 1)  # the baseline every ratio is to
    body = build_request()
    env = {} if args.glibc_defaults else STEADY_MALLOC
    transports = [t.strip().replace("grpc", "grpc-conns") for t in args.transports.split(",")]
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="otelkit-bench-") as tmp:
        running: list[Target] = []
        try:
            for count in counts:
                running.append(start_workers_target(count, Path(tmp), env, args.workers_config))
            for _ in range(args.rounds):
                for transport in transports:
                    for target in running:
                        figures.append(measure_tree(target, transport, body, args))
                        settle(target)
        finally:
            for target in running:
                stop_target(target)
    step_us = routing_step_us_per_span(body)
    report_workers(best_rounds(figures), counts, args, step_us, channel_us_per_span(body))


def report_workers(
    figures: list[Figure],
    counts: list[int],
    args: argparse.Namespace,
    step_us: float,
    channel_us: float,
) -> None:
    print(
        f"collector worker processes ({figures[0].target.partition(',')[0]}): "
        f"{BATCH}-span requests (each span its own trace), "
        f"{args.inflight} in flight on {args.inflight} connections, {args.seconds:g}s measured "
        f"per case, best of {args.rounds} rounds, {os.cpu_count()} CPUs; CPU summed over the "
        "supervisor and its workers"
    )
    header = (
        f"{'transport':<10} {'workers':>7} {'spans/s':>9} {'cores':>5} {'us/span':>7} "
        f"{'spans/core-s':>12} {'load cores':>10} {'spans/s vs 1':>12} {'us/span vs 1':>12} "
        f"{'us/span added':>13}"
    )
    print(header)
    print("-" * len(header))
    for transport in sorted({f.transport for f in figures}):
        rows = {n: f for n in counts for f in figures if f.transport == transport
                and f.target.endswith((f"{n} worker", f"{n} workers"))}  # fmt: skip
        one = rows.get(1)
        for count, f in sorted(rows.items()):
            ratio = f.spans_per_second / one.spans_per_second if one else float("nan")
            cost = f.us_per_span / one.us_per_span if one else float("nan")
            added = f.us_per_span - one.us_per_span if one else float("nan")
            print(
                f"{transport:<10} {count:>7} {f.spans_per_second:>9,.0f} {f.cores:>5.2f} "
                f"{f.us_per_span:>7.2f} {f.spans_per_core:>12,.0f} {f.load_cores:>10.2f} "
                f"{ratio:>12.2f} {cost:>12.2f} {added:>13.2f}"
            )
            if f.failures:
                print(f"           {f.failures} requests refused: {f.first_failure}")
        if one is not None and 2 in rows:
            _project(transport, one, rows[2], step_us)
    print(
        f"routing step alone (cut each request by trace owner, without parsing), "
        f"in-process: {step_us:.2f} us per span"
    )
    print(
        f"internal channel alone (send a share, read it at the other end, no parsing), "
        f"in-process: {channel_us:.2f} us per forwarded span"
    )
    print(
        f"note: on this {os.cpu_count()}-CPU machine the load generator shares the cores with "
        "the collector ('load cores'), so spans/s with 2 workers is bounded by the load too; "
        "CPU per span (us/span) is the figure to scale from."
    )


def _project(transport: str, one: Figure, two: Figure, step_us: float) -> None:
    """CPU per span at 16 workers. Every span is cut (``step_us``, measured alone); the
    rest of what 2 workers add is the forwarding of half the spans, and with N workers
    (N-1)/N of them are forwarded."""
    added = two.us_per_span - one.us_per_span
    forwarding = max(0.0, added - step_us) * 2
    cores = 16
    per_span = one.us_per_span + step_us + forwarding * (cores - 1) / cores
    print(
        f"{transport}: routing cost {added:.2f} us per span at 2 workers (cutting {step_us:.2f}, "
        f"forwarding {forwarding:.2f} per forwarded span); at {cores} cores with the collector "
        f"alone on them: about {per_span:.2f} us per span -> {cores / per_span * 1e6:,.0f} spans/s"
    )


if __name__ == "__main__":
    main()
