"""A :class:`Disk` that does the real work and notes each operation, in order."""

from __future__ import annotations

import os
from pathlib import Path

from otelkit.collector.runtime.durable import Disk


class RecordingDisk(Disk):
    """Appends ``write <file>``, ``fsync <file>``, ``rename <a> <b>`` and ``fsync-dir <dir>``
    to ``events`` (shared with whatever else the test records, such as acknowledgements)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def write(self, fd: int, data: bytes) -> None:
        super().write(fd, data)
        self.events.append(f"write {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")

    def fsync(self, fd: int, path: Path) -> None:
        super().fsync(fd, path)
        self.events.append(f"fsync {path.name}")

    def rename(self, source: Path, target: Path) -> None:
        super().rename(source, target)
        self.events.append(f"rename {source.name} {target.name}")

    def fsync_directory(self, directory: Path) -> None:
        super().fsync_directory(directory)
        self.events.append(f"fsync-dir {directory.name}")
