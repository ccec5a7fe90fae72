"""The two-tier shape as it runs: the shipped front-tier config
(deploy/kubernetes-two-tier/otelkit-front) in front of two collectors on the shipped
configuration, real SDK exporters as the apps. The headless Service's DNS answer is
replaced by the same two addresses in a static resolver, the listeners move to free
loopback ports, and the processing collectors require the bearer token on OTLP/gRPC, as
the production configuration does; everything else is the shipped files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.collector.e2e.clients import (
    make_metrics,
    make_spans,
    metric_total,
    scrape,
    sdk_exporters,
)
from tests.support.collector import (
    SHIPPED_CONFIG,
    RunningCollector,
    allocate_ports,
    collector,
    shipped_collector,
)

FRONT_CONFIG = (
    Path(__file__).resolve().parents[2]
    / "deploy/kubernetes-two-tier/otelkit-front/otelkit-loadbalancer.yaml"
)
DNS = """      dns:
        hostname: otelkit-collector-headless
        port: 4317
        interval: 5s
        timeout: 1s
"""
TOKEN = "two-tier-token"

pytestmark = pytest.mark.usefixtures("quiet_sdk_exports")


def front_text(backends: list[str]) -> str:
    text = FRONT_CONFIG.read_text()
    assert text.count(DNS) == 2, "the front tier's resolver changed shape"
    text = text.replace(DNS, f"      static:\n        hostnames: [{', '.join(backends)}]\n")
    for port, name in (("4317", "grpc"), ("4318", "http"), ("13133", "health"), ("8888", "telemetry")):  # fmt: skip
        assert text.count(f"0.0.0.0:{port}") == 1, port
        text = text.replace(f"0.0.0.0:{port}", f"127.0.0.1:{{{name}}}")
    return text


def processing_text() -> str:
    """collector/otelkit.yaml taking OTLP/gRPC only with the token."""
    edits = [
        ("        endpoint: ${env:OTELKIT_GRPC_ENDPOINT:-127.0.0.1:4317}\n",
         "        endpoint: ${env:OTELKIT_GRPC_ENDPOINT:-127.0.0.1:4317}\n"
         "        auth: {authenticator: bearertokenauth}\n"),
        ("extensions:\n", "extensions:\n  bearertokenauth:\n    filename: ${env:OTELKIT_TOKEN_FILE}\n"),
        ("  extensions: [health_check]", "  extensions: [bearertokenauth, health_check]"),
    ]  # fmt: skip
    text = SHIPPED_CONFIG.read_text()
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def calls(processing: RunningCollector) -> float:
    return metric_total(scrape(processing.ports["prometheus"]), "traces_span_metrics_calls_total")


def test_red_metrics_summed_over_the_processing_collectors_count_every_span(
    tmp_path: Path,
) -> None:
    """Each processing collector counts only the traces routed to it, so the span metrics
    of one service come from both (each must be scraped, and queries sum); the sum is
    exactly what the app sent. The app's own metrics land on one collector (routed by
    service), and both tiers refuse OTLP without the token."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    (tmp_path / "p0").mkdir()
    (tmp_path / "p1").mkdir()
    spans, metrics = make_spans(200), make_metrics()
    env = {"OTELKIT_TOKEN_FILE": str(token_file)}
    with (
        shipped_collector(tmp_path / "p0", env, processing_text()) as p0,
        shipped_collector(tmp_path / "p1", env, processing_text()) as p1,
    ):
        backends = [f"127.0.0.1:{p.ports['grpc']}" for p in (p0, p1)]
        with collector(front_text(backends), tmp_path, name="front",
                       ports=allocate_ports("grpc", "http", "health", "telemetry"),
                       env=env) as front:  # fmt: skip
            target = f"127.0.0.1:{front.ports['grpc']}"
            refused = sdk_exporters("grpc", target)
            assert refused["traces"].export(list(spans[:2])).name == "FAILURE"
            bypass = sdk_exporters("grpc", backends[0])
            assert bypass["traces"].export(list(spans[:2])).name == "FAILURE"
            apps = sdk_exporters("grpc", target, headers={"authorization": f"Bearer {TOKEN}"})
            for start in range(0, len(spans), 50):
                assert apps["traces"].export(list(spans[start : start + 50])).name == "SUCCESS"
            assert apps["metrics"].export(metrics).name == "SUCCESS"
            for exporter in (*refused.values(), *bypass.values(), *apps.values()):
                exporter.shutdown()
            # Span metrics flush every 15 s (the connector's default).
            deadline = time.monotonic() + 60
            while calls(p0) + calls(p1) < len(spans) and time.monotonic() < deadline:
                time.sleep(0.5)
            shares = [calls(p0), calls(p1)]
            owners = [
                metric_total(scrape(p.ports["prometheus"]), "orders_placed_total") for p in (p0, p1)
            ]
            assert front.stop() == 0, front.log()
    assert sum(shares) == len(spans) == 400, shares
    assert all(share > 0 for share in shares), "both collectors hold part of the traces"
    assert sorted(owners) == [0, 12], "every series of the service on one collector"
