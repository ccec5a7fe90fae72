"""Head sampling: every trace kept by default; a chosen ratio is written into the trace
state as the consistent probability sampling specification says (``ot=th:<hex>``), so
span metrics downstream can weight each span by 1/p."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from opentelemetry import context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otelkit.presets.pipeline import make_sampler
from otelkit.presets.sampling import decode_threshold
from otelkit.presets.settings import Settings
from tests.presets import procs
from tests.presets.sink import OtlpSink, Span

LOW_56_BITS = (1 << 56) - 1
UPSTREAM_ENTRIES = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
# (probability, the th value written down by hand from T = (1 - p) * 2^56)
THRESHOLDS = [
    (1.0, "0"),
    (0.5, "8"),
    (0.25, "c"),
    (0.125, "e"),
    (0.1, "e6666666666666"),
    (0.01, "fd70a3d70a3d71"),
]


class SeededIds(RandomIdGenerator):
    """Random trace IDs from a fixed seed, so the kept set can be checked exactly."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.trace_ids: list[int] = []

    def generate_trace_id(self) -> int:
        trace_id = self.random.getrandbits(128) or 1
        self.trace_ids.append(trace_id)
        return trace_id


def _settings(sampler: str, ratio: float | None = None) -> Settings:
    env = {"OTEL_TRACES_SAMPLER": sampler}
    if ratio is not None:
        env["OTEL_TRACES_SAMPLER_ARG"] = repr(ratio)
    return Settings.resolve(env)


@contextmanager
def _provider(sink: OtlpSink, settings: Settings, seed: int = 1) -> Iterator[TracerProvider]:
    """A real SDK provider with otelkit's sampler, exporting OTLP/gRPC to the sink."""
    provider = TracerProvider(
        sampler=make_sampler(settings), id_generator=SeededIds(seed), shutdown_on_exit=False
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=sink.endpoint),
            max_queue_size=8192,
            max_export_batch_size=512,
        )
    )
    sink.clear()
    try:
        yield provider
    finally:
        provider.shutdown()


def _ot(span: Span) -> str | None:
    entries = dict(item.split("=", 1) for item in span.trace_state.split(",") if item)
    return entries.get("ot")


def _threshold_of(ot: str | None) -> int:
    assert ot is not None and ot.startswith("th:"), ot
    value = decode_threshold(ot.removeprefix("th:"))
    assert value is not None
    return value


@pytest.mark.parametrize(("probability", "th"), THRESHOLDS)
def test_ratio_sampler_keeps_spans_by_threshold_and_writes_it(
    probability: float, th: str, sink: OtlpSink
) -> None:
    roots = 3000
    with _provider(sink, _settings("parentbased_traceidratio", probability)) as provider:
        tracer = provider.get_tracer("test")
        for _ in range(roots):
            with tracer.start_as_current_span("root"), tracer.start_as_current_span("child"):
                pass
        provider.force_flush()
        trace_ids = provider.id_generator.trace_ids  # type: ignore[attr-defined]

    threshold = int(th.ljust(14, "0"), 16)
    expected = {format(t, "032x") for t in trace_ids if t & LOW_56_BITS >= threshold}
    spans = sink.spans()
    assert {span.trace_id for span in spans} == expected  # exactly those with R >= T
    assert len(spans) == 2 * len(expected)  # each kept root's child is kept with it
    assert {span.trace_state for span in spans} == {f"ot=th:{th}"}
    kept = len(expected) / roots
    tolerance = 4 * (probability * (1 - probability) / roots) ** 0.5
    assert abs(kept - probability) <= tolerance, (kept, probability)


@pytest.mark.parametrize("probability", [0.5, 0.25, 0.1, 0.01])
def test_fraction_kept_over_many_trace_ids_matches_the_probability(probability: float) -> None:
    sampler = make_sampler(_settings("traceidratio", probability))
    ids = random.Random(7)
    count = 200_000
    kept = sum(
        sampler.should_sample(None, ids.getrandbits(128), "span").decision.is_sampled()
        for _ in range(count)
    )
    tolerance = 4 * (probability * (1 - probability) / count) ** 0.5
    assert abs(kept / count - probability) <= tolerance


def test_a_ratio_without_a_ratio_sampler_is_ignored_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.1")
    with caplog.at_level(logging.WARNING, "otelkit.presets"):
        sampler = make_sampler(Settings.resolve())
    assert sampler.get_description() == "ParentThreshold{root=AlwaysOnSampler}"
    assert "OTEL_TRACES_SAMPLER_ARG is ignored" in caplog.text


def _remote_parent(trace_id: int, sampled: bool, tracestate: str) -> context.Context:
    flags = "03" if sampled else "02"
    carrier = {
        "traceparent": f"00-{trace_id:032x}-00f067aa0ba902b7-{flags}",
        "tracestate": tracestate,
    }
    return TraceContextTextMapPropagator().extract(carrier)


def _export_children(sink: OtlpSink, settings: Settings, parent: context.Context) -> list[Span]:
    with _provider(sink, settings) as provider:
        tracer = provider.get_tracer("test")
        with (
            tracer.start_as_current_span("server", context=parent),
            tracer.start_as_current_span("db"),
        ):
            pass
        provider.force_flush()
    return sink.spans()


# R = 0x9... passes th:8 (p = 0.5); R = 0x3... does not.
HIGH_R = 0x4BF92F3577B34DA6_A9C4E7A1B2C3D4E5
LOW_R = 0x4BF92F3577B34DA6_A33A4E7A1B2C3D4E


@pytest.mark.parametrize("sampler", ["parentbased_always_on", "parentbased_traceidratio"])
def test_children_of_a_sampled_parent_keep_its_threshold_and_upstream_entries(
    sampler: str, sink: OtlpSink
) -> None:
    parent = _remote_parent(HIGH_R, True, f"{UPSTREAM_ENTRIES},ot=th:8")
    spans = _export_children(sink, _settings(sampler, 0.01), parent)
    assert sorted(span.name for span in spans) == ["db", "server"]
    for span in spans:
        assert span.trace_state == f"{UPSTREAM_ENTRIES},ot=th:8"


def test_an_inconsistent_parent_threshold_is_erased_and_the_parent_followed(
    sink: OtlpSink,
) -> None:
    """Sampled, but its randomness is below its threshold: the probability is unknown."""
    parent = _remote_parent(LOW_R, True, f"{UPSTREAM_ENTRIES},ot=th:8")
    spans = _export_children(sink, _settings("parentbased_traceidratio", 0.5), parent)
    assert len(spans) == 2
    assert {span.trace_state for span in spans} == {UPSTREAM_ENTRIES}


def test_a_parent_sampled_without_threshold_gives_children_none(sink: OtlpSink) -> None:
    parent = _remote_parent(LOW_R, True, UPSTREAM_ENTRIES)
    spans = _export_children(sink, _settings("parentbased_traceidratio", 0.5), parent)
    assert len(spans) == 2 and {span.trace_state for span in spans} == {UPSTREAM_ENTRIES}


def test_children_of_an_unsampled_parent_are_dropped(sink: OtlpSink) -> None:
    parent = _remote_parent(HIGH_R, False, f"{UPSTREAM_ENTRIES},ot=th:0")
    assert _export_children(sink, _settings("parentbased_always_on"), parent) == []


def test_an_explicit_randomness_value_decides_instead_of_the_trace_id(sink: OtlpSink) -> None:
    """``rv`` wins over the trace ID and passes through unchanged."""
    low_rv = _remote_parent(HIGH_R, True, "ot=rv:00000000000001")
    assert _export_children(sink, _settings("traceidratio", 0.5), low_rv) == []
    high_rv = _remote_parent(LOW_R, True, f"ot=rv:f0000000000000,{UPSTREAM_ENTRIES}")
    spans = _export_children(sink, _settings("traceidratio", 0.5), high_rv)
    assert len(spans) == 2
    assert {span.trace_state for span in spans} == {f"ot=th:8;rv:f0000000000000,{UPSTREAM_ENTRIES}"}


def test_an_independent_sampler_replaces_the_upstream_threshold(sink: OtlpSink) -> None:
    """``always_on`` keeps every span, so its spans stand for one each: ``th:0``."""
    parent = _remote_parent(HIGH_R, True, f"{UPSTREAM_ENTRIES},ot=th:c")
    spans = _export_children(sink, _settings("always_on"), parent)
    assert len(spans) == 2
    assert {span.trace_state for span in spans} == {f"ot=th:0,{UPSTREAM_ENTRIES}"}


def test_the_threshold_travels_to_the_next_service_in_the_tracestate_header(
    sink: OtlpSink,
) -> None:
    with _provider(sink, _settings("parentbased_traceidratio", 0.25)) as provider:
        tracer = provider.get_tracer("test")
        headers: dict[str, str] = {}
        while not headers:
            with tracer.start_as_current_span("root") as root:
                if root.is_recording():
                    TraceContextTextMapPropagator().inject(headers)
    assert headers["tracestate"] == "ot=th:c"
    assert headers["traceparent"].endswith("-03")  # sampled, trace ID random


def test_default_keeps_every_trace_and_adds_no_threshold(sink: OtlpSink) -> None:
    """A span without ``th`` counts once, which is exact when nothing is head-sampled."""
    for environment in ("production", "development"):
        settings = Settings.resolve({"OTELKIT_ENVIRONMENT": environment})
        with _provider(sink, settings) as provider:
            tracer = provider.get_tracer("test")
            for _ in range(200):
                with tracer.start_as_current_span("root"), tracer.start_as_current_span("c"):
                    pass
            provider.force_flush()
        spans = sink.spans()
        assert len(spans) == 400
        assert {span.trace_state for span in spans} == {""}


SERVER = 2  # OTLP span kind


def _run_two_services(
    sink: OtlpSink, tmp_path: Path, mode: str, requests: int, **front_settings: str
) -> list[Span]:
    """``front`` (calls SQLite and then ``downstream`` over httpx) and ``downstream``, in
    the production environment, each exporting to the sink."""

    def build(port: int) -> list[str]:
        command = procs.uvicorn_command(port)
        return procs.auto(command) if mode == "auto" else command

    production = {"APP_MODE": mode, "OTELKIT_ENVIRONMENT": "production"}
    sink.clear()
    down_env = procs.telemetry_env(sink.endpoint, "downstream", **production)
    with procs.server(build, down_env, tmp_path, "downstream") as down:
        front_env = procs.telemetry_env(
            sink.endpoint, "front", APP_DOWNSTREAM_URL=down.url, **production, **front_settings
        )
        with procs.server(build, front_env, tmp_path, "front") as front:
            with httpx.Client(base_url=front.url, timeout=10) as client:
                for item in range(requests):
                    assert client.get(f"/items/{item}").status_code == 200
            assert front.stop() in procs.CLEAN_EXIT, front.log()
        assert down.stop() in procs.CLEAN_EXIT, down.log()
    return sink.spans()


def _servers(spans: list[Span], service: str) -> list[Span]:
    return [s for s in spans if s.kind == SERVER and s.resource["service.name"] == service]


@pytest.mark.parametrize("mode", ["manual", "auto"])
def test_apps_keep_every_trace_by_default(mode: str, sink: OtlpSink, tmp_path: Path) -> None:
    spans = _run_two_services(sink, tmp_path, mode, requests=30)
    assert len(_servers(spans, "front")) == 30
    assert len(_servers(spans, "downstream")) == 30
    assert {span.trace_state for span in spans} == {""}


def test_a_chosen_ratio_is_carried_by_every_span_of_a_kept_trace(
    sink: OtlpSink, tmp_path: Path
) -> None:
    """front samples 1 in 4 under ``opentelemetry-instrument``; downstream keeps the
    default (parent-based), so its spans carry front's threshold too."""
    requests = 200
    spans = _run_two_services(
        sink,
        tmp_path,
        "auto",
        requests,
        OTEL_TRACES_SAMPLER="parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.25",
    )
    fronts = _servers(spans, "front")
    kept_traces = {span.trace_id for span in fronts}
    assert len(kept_traces) == len(fronts)
    assert abs(len(fronts) / requests - 0.25) <= 4 * (0.25 * 0.75 / requests) ** 0.5
    assert all(int(trace_id, 16) & LOW_56_BITS >= 0xC << 52 for trace_id in kept_traces)
    assert {span.trace_id for span in _servers(spans, "downstream")} == kept_traces
    assert {span.trace_id for span in spans} == kept_traces
    for key in ("db.system", "url.full"):  # front's database and httpx client spans
        assert len([span for span in spans if key in span.attributes]) == len(kept_traces)
    assert {span.trace_state for span in spans} == {"ot=th:c"}
