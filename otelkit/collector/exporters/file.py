"""``file``: writes every export request to a file, as the upstream ``fileexporter`` does.

``format: json`` (the default) writes one OTLP/JSON export request per line, which is
what tests and the budgets CI gate read (:func:`read_requests`, or
:func:`otelkit.collector.pdata.otlp_json.iter_file`). ``format: proto`` writes each
request as protobuf, preceded by its length as a 4-byte big-endian unsigned integer, as
upstream; so does ``compression: zstd`` (each request compressed on its own), whatever
the format.

Options as upstream: ``path``, ``format``, ``compression``, ``flush_interval``,
``append`` and ``rotation: {max_megabytes, max_days, max_backups, localtime}``. A
rotated file is renamed with its rotation time before the extension
(``spans.json`` -> ``spans-2026-11-28T19-52-03.123.json``) and a new file starts at
``path``; beyond ``max_backups`` or older than ``max_days``, backups are deleted.

Where otelkit differs, and why:

* ``append`` defaults to true (upstream truncates the file at start), so a restarted
  collector does not destroy what it wrote before, queued batches included.
* Each batch is written straight to the operating system, with no buffer in the
  process: a reader sees a batch as soon as it is sent, and a failed write fails that
  batch, which the exporter helper retries (a partial write is truncated away first,
  so a retry never leaves half a line). ``flush_interval`` is therefore how often the
  file is forced to disk (``fsync``); ``0`` forces it after every batch.
* ``sending_queue.num_consumers`` defaults to 1, so lines are written in the order the
  batches arrived; more consumers write faster but in any order.
* ``timeout`` defaults to 0 (none): a write that has started is never abandoned and
  retried, which would write the batch twice.
* A batch larger than ``max_megabytes`` is written whole to a file of its own.

Encoding and writing run on one thread of the exporter's own, so a large batch does not
hold up the event loop. ``group_by`` is not supported.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Literal, TypeVar

import zstandard
from pydantic import Field

from otelkit.collector.pdata import otlp_json
from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.runtime.component import (
    ComponentConfig,
    CreateSettings,
    Host,
    exporter_factory,
)
from otelkit.collector.runtime.errors import InvalidDataError, RetryableError
from otelkit.collector.runtime.exporterhelper import (
    ExporterHelperConfig,
    QueuedExporter,
    QueueSettings,
)
from otelkit.collector.runtime.listeners import Destination
from otelkit.collector.runtime.types import Duration

T = TypeVar("T")
_LENGTH = struct.Struct(">I")
_BACKUP_TIME = "%Y-%m-%dT%H-%M-%S.%f"  # cut to milliseconds, as upstream
_MEGABYTE = 1024 * 1024


class Rotation(ComponentConfig):
    max_megabytes: int = Field(100, ge=1, description="Size at which the file is rotated.")
    max_days: int = Field(0, ge=0, description="Delete backups older than this; 0 keeps all.")
    max_backups: int = Field(100, ge=0, description="Backups kept; 0 keeps all.")
    localtime: bool = Field(False, description="Local time in backup names instead of UTC.")


class FileQueueSettings(QueueSettings):
    num_consumers: int = Field(
        1, ge=1, le=1000, description="1 writes batches in the order they arrived."
    )


class FileExporterConfig(ExporterHelperConfig):
    path: str = Field(min_length=1, description="The file to write; parent folders are created.")
    format: Literal["json", "proto"] = "json"
    compression: Literal["", "none", "zstd"] = ""
    flush_interval: Duration = Field(1.0, description="How often the file is synced to disk.")
    append: bool = Field(True, description="Keep what the file holds at start (else truncate).")
    rotation: Rotation | None = None
    timeout: Duration = Field(0.0, description="0: a started write is never abandoned.")
    sending_queue: FileQueueSettings = FileQueueSettings()

    def single_writer(self) -> bool:
        """With ``--workers N`` the file has one writer (one worker; the others hand it
        their data), so it stays one file in arrival order."""
        return True


class RotatingFile:
    """An append-only file that rotates by size; used from one thread at a time."""

    def __init__(self, path: Path, rotation: Rotation | None, append: bool = True) -> None:
        self.path = path
        self.rotation = rotation
        self._append = append
        self._fd = -1
        self._size = 0
        self._unsynced = False

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if self._append else os.O_TRUNC)
        self._fd = os.open(self.path, flags, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._append = True  # truncate once, at start; later opens are after a rotation
        self.remove_old_backups()

    def write(self, data: bytes) -> None:
        """Write all of ``data`` or, on failure, none of it (and raise the OSError)."""
        if self._fd < 0:
            self.open()
        limit = self.rotation.max_megabytes * _MEGABYTE if self.rotation else 0
        if limit and self._size and self._size + len(data) > limit:
            self.rotate()
        start, view = self._size, memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise
        self._size += len(data)
        self._unsynced = True

    def sync(self) -> None:
        if self._fd >= 0 and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = False

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd = -1

    def rotate(self) -> Path:
        """Rename the file to its backup name, start a new one, and prune old backups."""
        self.close()
        backup = self._backup_path(self._now())
        os.rename(self.path, backup)
        self.open()
        return backup

    def backups(self) -> list[tuple[datetime, Path]]:
        """Backups of this file, newest first."""
        stem, ext = self._stem_and_ext()
        pattern = re.compile(
            re.escape(stem) + r"-(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3})" + re.escape(ext) + "$"
        )
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.path.parent):
                match = pattern.match(entry.name)
                if match and entry.is_file():
                    stamp = datetime.strptime(match.group(1) + "000", _BACKUP_TIME)
                    found.append((stamp.replace(tzinfo=self._zone()), Path(entry.path)))
        return sorted(found, reverse=True)

    def remove_old_backups(self) -> None:
        if self.rotation is None:
            return
        backups = self.backups()
        keep = self.rotation.max_backups or len(backups)
        doomed = [path for _, path in backups[keep:]]
        if self.rotation.max_days:
            oldest = self._now() - timedelta(days=self.rotation.max_days)
            doomed += [path for stamp, path in backups[:keep] if stamp < oldest]
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _backup_path(self, now: datetime) -> Path:
        stem, ext = self._stem_and_ext()
        while True:  # two rotations within a millisecond must not overwrite each other
            path = self.path.with_name(f"{stem}-{now.strftime(_BACKUP_TIME)[:-3]}{ext}")
            if not path.exists():
                return path
            now += timedelta(milliseconds=1)

    def _stem_and_ext(self) -> tuple[str, str]:
        ext = self.path.suffix
        return self.path.name[: len(self.path.name) - len(ext)], ext

    def _zone(self) -> tzinfo:
        if self.rotation is not None and self.rotation.localtime:
            return datetime.now().astimezone().tzinfo or UTC
        return UTC

    def _now(self) -> datetime:
        return datetime.now(self._zone())


class FileExporter(QueuedExporter):
    def __init__(self, settings: CreateSettings, config: FileExporterConfig) -> None:
        super().__init__(settings, config)
        self.config = config
        self.file = RotatingFile(Path(config.path), config.rotation, config.append)
        self._compress = config.compression == "zstd"
        self._framed = config.format == "proto" or self._compress
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"exporter-{self.name}")
        self._syncer: asyncio.Task[None] | None = None

    def destinations(self) -> list[Destination]:
        what = "OTLP/JSON lines" if self.config.format == "json" else "OTLP protobuf records"
        return [Destination(what, f"file {self.file.path.resolve()}")]

    async def start_sending(self, host: Host) -> None:
        try:
            await self._in_thread(self.file.open)
        except OSError as exc:
            raise RuntimeError(
                f"exporter {self.name}: cannot open {self.file.path}: {exc}"
            ) from exc
        if self.config.flush_interval > 0:
            self._syncer = asyncio.create_task(self._sync_every(self.config.flush_interval))

    async def send(self, payload: Payload) -> None:
        try:
            await self._in_thread(self._write, payload)
        except OSError as exc:
            raise RetryableError(f"cannot write {self.file.path}: {exc}") from exc

    async def stop_sending(self) -> None:
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
        try:
            await self._in_thread(self.file.close)
        finally:
            self._thread.shutdown(wait=True)

    def encode(self, payload: Payload) -> bytes:
        """The bytes one request takes in the file."""
        try:
            body = (
                otlp_json.encode_request(payload)
                if self.config.format == "json"
                else payload.SerializeToString()
            )
        except Exception as exc:  # some item has no encoding: the helper finds and drops it
            raise InvalidDataError(f"cannot encode the request: {exc}") from exc
        if self._compress:
            body = zstandard.ZstdCompressor().compress(body)
        return _LENGTH.pack(len(body)) + body if self._framed else body + b"\n"

    def _write(self, payload: Payload) -> None:
        self.file.write(self.encode(payload))
        if self.config.flush_interval == 0:
            self.file.sync()

    async def _sync_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._in_thread(self.file.sync)
            except OSError as exc:
                self.settings.logger.warning("exporter %s: fsync failed: %s", self.name, exc)

    async def _in_thread(self, function: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)


def read_requests(
    path: str | Path,
    *,
    format: Literal["json", "proto"] = "json",
    compression: Literal["", "none", "zstd"] = "",
    signal: Signal | None = None,
) -> Iterator[Payload]:
    """The requests a ``file`` exporter wrote, in order.

    JSON requests say which signal they carry; protobuf ones do not, so reading
    ``format: proto`` needs ``signal``.
    """
    if format == "json" and compression in ("", "none"):
        yield from otlp_json.iter_file(path)
        return
    if format == "proto" and signal is None:
        raise ValueError("reading protobuf requests needs the signal they carry")
    decompressor = zstandard.ZstdDecompressor() if compression == "zstd" else None
    for index, frame in enumerate(_frames(Path(path))):
        body = decompressor.decompress(frame) if decompressor is not None else frame
        if format == "json":
            yield otlp_json.decode_any(body)
            continue
        assert signal is not None
        payload = signal.new_request()
        try:
            payload.ParseFromString(body)
        except Exception as exc:
            raise ValueError(f"{path}: request #{index} is not valid protobuf: {exc}") from None
        yield payload


def _frames(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    position = 0
    while position < len(data):
        if position + 4 > len(data):
            raise ValueError(f"{path}: truncated length prefix at byte {position}")
        (size,) = _LENGTH.unpack_from(data, position)
        body = data[position + 4 : position + 4 + size]
        if len(body) != size:
            raise ValueError(f"{path}: truncated request at byte {position}")
        yield body
        position += 4 + size


def _create(
    settings: CreateSettings, config: FileExporterConfig, signals: frozenset[Signal]
) -> FileExporter:
    return FileExporter(settings, config)


factory = exporter_factory("file", FileExporterConfig, _create, frozenset(Signal))
