"""The ``file`` exporter, built through its factory and fed payloads in-process."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import struct
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from pydantic import ValidationError

from otelkit.collector.exporters.file import FileExporter, factory, read_requests
from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.runtime.component import ComponentID, CreateSettings, Kind
from otelkit.collector.runtime.errors import RetryableError
from otelkit.collector.runtime.service import ServiceHost
from otelkit.collector.runtime.telemetry import SelfTelemetry
from tests.collector.builders import logs, metrics, traces
from tests.collector.pdata.test_otlp_json import every_field_requests

FAST_RETRY = {"initial_interval": "10ms", "max_interval": "20ms", "max_elapsed_time": "10s"}
BACKUP_NAME = re.compile(r"spans-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}\.jsonl$")


def make(config: dict[str, Any]) -> tuple[FileExporter, SelfTelemetry]:
    telemetry = SelfTelemetry()
    settings = CreateSettings(ComponentID("file"), Kind.EXPORTER, telemetry)
    cfg = factory.config_class.model_validate({"retry_on_failure": FAST_RETRY, **config})
    exporter = factory.create(settings, cfg, frozenset(Signal))
    assert isinstance(exporter, FileExporter)
    return exporter, telemetry


def run(config: dict[str, Any], body: Callable[[FileExporter], Awaitable[None]]) -> SelfTelemetry:
    """Start the exporter, run ``body``, shut down (draining the queue)."""
    exporter, telemetry = make(config)

    async def main() -> None:
        await exporter.start(ServiceHost())
        try:
            await body(exporter)
        finally:
            await exporter.shutdown()

    asyncio.run(main())
    return telemetry


def feed(*payloads: Payload) -> Callable[[FileExporter], Awaitable[None]]:
    async def body(exporter: FileExporter) -> None:
        for payload in payloads:
            await exporter.consume(payload)

    return body


def big_traces(spans: int, tag: str) -> Payload:
    request = traces([[spans]], prefix=tag)
    for span in request.resource_spans[0].scope_spans[0].spans:
        span.attributes.append(KeyValue(key="pad", value=AnyValue(string_value="x" * 900)))
    return request


def test_every_span_point_and_record_reads_back_equal_in_order(tmp_path: Path) -> None:
    sent = [*every_field_requests(), traces([[3, 2], [1]]), metrics([2, 3]), logs([[4]])]
    path = tmp_path / "deep" / "er" / "otel.jsonl"  # parent folders are created
    telemetry = run({"path": str(path)}, feed(*sent))  # type: ignore[arg-type]
    assert list(read_requests(path)) == sent
    lines = path.read_bytes().splitlines()
    assert len(lines) == len(sent) and lines[0].startswith(b'{"resourceSpans":[')
    spans = sum(count_items(p) for p in sent if isinstance(p, type(traces([[1]]))))
    assert telemetry.total("otelcol_exporter_sent_spans_total") == spans


def test_lines_keep_the_order_batches_arrived_in(tmp_path: Path) -> None:
    sent = [logs([[1]], prefix=f"batch{i}-") for i in range(40)]
    run({"path": str(tmp_path / "out.jsonl")}, feed(*sent))
    assert list(read_requests(tmp_path / "out.jsonl")) == sent


def test_appends_to_an_existing_file_unless_told_not_to(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first, second = logs([[1]], prefix="first"), logs([[1]], prefix="second")
    run({"path": str(path)}, feed(first))
    run({"path": str(path)}, feed(second))
    assert list(read_requests(path)) == [first, second]
    run({"path": str(path), "append": False}, feed(second))
    assert list(read_requests(path)) == [second]


def test_rotation_by_size_keeps_max_backups_and_loses_nothing_in_between(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    batches = [big_traces(300, f"b{i}-") for i in range(8)]  # about 0.35 MB each
    rotation = {"max_megabytes": 1, "max_backups": 50}
    run({"path": str(path), "rotation": rotation}, feed(*batches))
    backups = sorted(p for p in tmp_path.iterdir() if p != path)
    assert len(backups) >= 2
    assert all(BACKUP_NAME.match(p.name) for p in backups), backups
    assert all(p.stat().st_size <= 1024 * 1024 for p in [*backups, path])
    read_back = [r for file in [*backups, path] for r in read_requests(file)]
    assert read_back == batches


def test_max_backups_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    batches = [big_traces(300, f"b{i}-") for i in range(8)]
    run({"path": str(path), "rotation": {"max_megabytes": 1, "max_backups": 1}}, feed(*batches))
    backups = [p for p in tmp_path.iterdir() if p != path]
    assert len(backups) == 1
    newest = [*read_requests(backups[0]), *read_requests(path)]
    assert 2 <= len(newest) < len(batches)
    assert newest == batches[-len(newest) :]


def test_backups_older_than_max_days_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    now = datetime.now(UTC)
    stamps = {"old": now - timedelta(days=3, hours=1), "recent": now - timedelta(hours=1)}
    names = {
        key: f"spans-{stamp.strftime('%Y-%m-%dT%H-%M-%S.%f')[:-3]}.jsonl"
        for key, stamp in stamps.items()
    }
    for name in names.values():
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "unrelated-2020-01-01T00-00-00.000.jsonl").write_text("keep me\n")
    run({"path": str(path), "rotation": {"max_days": 2}}, feed(logs([[1]])))
    left = {p.name for p in tmp_path.iterdir()}
    assert names["old"] not in left
    assert {names["recent"], "unrelated-2020-01-01T00-00-00.000.jsonl", "spans.jsonl"} <= left


@pytest.mark.parametrize(
    ("config", "signal"),
    [({"format": "proto"}, Signal.TRACES), ({"format": "proto", "compression": "zstd"},
      Signal.TRACES), ({"format": "json", "compression": "zstd"}, None)],
)  # fmt: skip
def test_proto_and_compressed_output_is_length_prefixed(
    tmp_path: Path, config: dict[str, Any], signal: Signal | None
) -> None:
    path = tmp_path / "out.bin"
    sent = [traces([[2]], prefix=f"t{i}-") for i in range(3)]
    run({"path": str(path), **config}, feed(*sent))
    data = path.read_bytes()
    (first_size,) = struct.unpack(">I", data[:4])  # big-endian, as upstream
    if "compression" not in config:
        assert data[4 : 4 + first_size] == sent[0].SerializeToString()
    kwargs: dict[str, Any] = {
        "format": config["format"],
        "compression": config.get("compression", ""),
    }
    assert list(read_requests(path, signal=signal, **kwargs)) == sent


def test_a_failed_write_is_retried_and_leaves_no_half_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.jsonl"
    before, after = logs([[1]], prefix="before"), logs([[50]], prefix="after")
    failures = {"left": 2}
    real_write = os.write

    def flaky_write(fd: int, data: Any) -> int:
        if fd == exporter.file._fd and failures["left"]:
            failures["left"] -= 1
            real_write(fd, bytes(data[: len(data) // 2]))  # half of it lands, then the disk fills
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    exporter, telemetry = make({"path": str(path)})

    async def main() -> None:
        await exporter.start(ServiceHost())
        await exporter.consume(before)
        await asyncio.sleep(0.05)
        monkeypatch.setattr(os, "write", flaky_write)
        with pytest.raises(RetryableError, match="No space left on device"):
            await exporter.send(after)  # a direct send reports the failure ...
        await exporter.consume(after)  # ... and the queue retries until it lands
        await exporter.shutdown()

    asyncio.run(main())
    assert failures["left"] == 0
    assert list(read_requests(path)) == [before, after]
    assert telemetry.total("otelcol_exporter_sent_log_records_total") == 51


def test_an_unwritable_path_fails_at_start_with_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    exporter, _ = make({"path": str(blocker / "out.jsonl")})

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"cannot open .*out\.jsonl"):
            await exporter.start(ServiceHost())
        await exporter.shutdown()

    asyncio.run(main())


def test_defaults_and_validation() -> None:
    config = factory.config_class.model_validate({"path": "x.jsonl"})
    assert config.sending_queue.num_consumers == 1  # lines in arrival order
    assert config.format == "json" and config.append and config.rotation is None
    assert config.timeout == 0
    rotation = factory.config_class.model_validate({"path": "x", "rotation": {}}).rotation
    assert (rotation.max_megabytes, rotation.max_backups, rotation.max_days) == (100, 100, 0)
    for bad in [{}, {"path": ""}, {"path": "x", "format": "xml"}, {"path": "x", "compression": "gzip"},
                {"path": "x", "rotation": {"max_megabytes": 0}}, {"path": "x", "flush_interval": "soon"}]:  # fmt: skip
        with pytest.raises(ValidationError):
            factory.config_class.model_validate(bad)


def test_reading_proto_needs_the_signal(tmp_path: Path) -> None:
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="needs the signal"):
        list(read_requests(tmp_path / "x.bin", format="proto"))
    (tmp_path / "x.bin").write_bytes(b"\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="truncated request"):
        list(read_requests(tmp_path / "x.bin", format="proto", signal=Signal.LOGS))


@pytest.mark.parametrize(("flush_interval", "syncs"), [("0", 5), ("1h", 1)])
def test_flush_interval_sets_how_often_the_file_is_synced_to_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flush_interval: str, syncs: int
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "out.jsonl"
    batches = [logs([[1]], prefix=f"b{i}") for i in range(5)]
    run({"path": str(path), "flush_interval": flush_interval}, feed(*batches))
    assert len(synced) == syncs  # after every batch, or once at shutdown
    assert list(read_requests(path)) == batches
