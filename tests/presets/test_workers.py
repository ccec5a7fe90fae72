"""Pre-fork and multi-process servers: every worker exports, each as its own instance."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from tests.presets import procs
from tests.presets.sink import OtlpSink

CASES = {
    "gunicorn": ("gunicorn", "manual", ["-w", "2"]),
    "gunicorn-preload": ("gunicorn", "manual", ["-w", "2", "--preload"]),
    "gunicorn-instrument": ("gunicorn", "auto", ["-w", "2"]),
    "gunicorn-instrument-preload": ("gunicorn", "auto", ["-w", "2", "--preload"]),
    "uvicorn-workers": ("uvicorn", "manual", ["--workers", "2"]),
    "uvicorn-workers-instrument": ("uvicorn", "auto", ["--workers", "2"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_worker_exports_as_its_own_instance(
    case: str, sink: OtlpSink, tmp_path: Path
) -> None:
    server, mode, options = CASES[case]
    sink.clear()

    def build(port: int) -> list[str]:
        if server == "gunicorn":
            command = procs.gunicorn_command(port, *options)
        else:
            command = procs.uvicorn_command(port, *options)
        return procs.auto(command) if mode == "auto" else command

    # The app's own request metrics (off by default) give every worker metrics to export.
    env = procs.telemetry_env(
        sink.endpoint, f"workers-{case}", APP_MODE=mode, OTELKIT_HTTP_SERVER_METRICS="true"
    )
    with procs.server(build, env, tmp_path, case) as running:
        pids = procs.worker_pids(running.url)
        assert len(pids) == 2, f"requests reached only {pids}:\n{running.log()}"
        running.stop()

    instances_by_pid: dict[int, set[str]] = defaultdict(set)
    for span in sink.spans():
        if span.attributes.get("http.route") == "/slow":
            instances_by_pid[span.resource["process.pid"]].add(span.resource["service.instance.id"])
    assert set(instances_by_pid) == pids, f"spans came from {dict(instances_by_pid)}"
    assert all(len(ids) == 1 for ids in instances_by_pid.values())
    instance_ids = set().union(*instances_by_pid.values())
    assert len(instance_ids) == 2

    metric_instances = {
        point.resource["service.instance.id"]
        for point in sink.metric_points()
        if point.metric == "http.server.request.duration"
    }
    assert metric_instances == instance_ids
