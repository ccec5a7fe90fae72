"""A parent that exports before it forks, for the pre-fork tests.

``export_before_fork()`` (also run by ``service_app`` at import when
APP_EXPORT_BEFORE_FORK=1, so in a ``gunicorn --preload`` master) records spans, log
records and a counter in phase ``exported`` and flushes them, so the parent's exporters
and gRPC channels are open; then it records phase ``queued``, left in the batch queues
and the metric reader (the schedule delays are long) for the parent's shutdown to send.
Each process names itself in a header of its exports (``name_exports_by_pid``).

Run as a script, it forks CHILDREN workers with ``os.fork`` after that; each records
phase ``child`` and shuts down. The last line printed is JSON: the parent's PID, each
child's exit status, and whether the parent's shutdown flushed in time.
"""

from __future__ import annotations

import json
import logging
import os
import time

from opentelemetry import metrics, trace

PER_PHASE = 4
CHILDREN = 2
SENDER_HEADER = "x-sender-pid"


def name_exports_by_pid() -> None:
    """Exporters created from now on in this process send ``x-sender-pid: <this PID>``
    (OTLP exporters read their headers when created): an export that arrives with
    another process's PID went through an exporter, and channel, created there."""
    os.environ["OTEL_EXPORTER_OTLP_HEADERS"] = f"{SENDER_HEADER}={os.getpid()}"


def record(phase: str) -> None:
    tracer = trace.get_tracer("prefork")
    counter = metrics.get_meter("prefork").create_counter("prefork.work")
    log = logging.getLogger("prefork")
    for index in range(PER_PHASE):
        with tracer.start_as_current_span(f"{phase} {index}"):
            log.warning("%s log %d", phase, index)
            counter.add(1, {"phase": phase})


def export_before_fork() -> None:
    from otelkit.presets import pipeline

    name_exports_by_pid()
    record("exported")
    if not pipeline.flush(20):
        raise RuntimeError("the parent could not export before forking")
    record("queued")


def _wait(pid: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    return -999  # still running: it hangs


def main() -> None:
    import otelkit

    otelkit.configure()
    otelkit.instrument_logging()
    export_before_fork()
    children = []
    for _ in range(CHILDREN):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                name_exports_by_pid()
                record("child")
                code = 0 if otelkit.shutdown(20) else 2
            finally:
                os._exit(code)
        children.append(pid)
    deadline = time.monotonic() + 40
    statuses = {pid: _wait(pid, deadline) for pid in children}
    flushed = otelkit.shutdown(20)
    print(json.dumps({"parent": os.getpid(), "children": statuses, "flushed": flushed}))


if __name__ == "__main__":
    main()
