"""Writes that must survive a crash or a power loss go through one seam: :class:`Disk`.

A file is durable only once its bytes are fsynced *and* the directory entry that names it
is fsynced: a rename that is only in the page cache can vanish with a power loss and
leave the old name (or nothing) behind. Every component that promises "on disk before the
sender is answered" (the persistent sending queue, the log store's commit mode) calls
these methods, in this order, before it acknowledges; tests substitute a recording
``Disk`` to check the order.
"""

from __future__ import annotations

import os
from pathlib import Path


class Disk:
    """The file operations behind every durability promise."""

    def write_atomically(self, path: Path, data: bytes) -> None:
        """``path`` holds ``data`` in full or does not exist, even after a power loss:
        write a temporary file, fsync it, rename it into place, fsync the directory."""
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            self.write(fd, data)
            self.fsync(fd, temporary)
        finally:
            os.close(fd)
        self.rename(temporary, path)
        self.fsync_directory(path.parent)

    def write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def fsync(self, fd: int, path: Path) -> None:
        """Flush one open file's data to stable storage (``path`` names it, for tests)."""
        os.fsync(fd)

    def fsync_file(self, path: Path) -> None:
        """fsync a file another library wrote (the SQLite write-ahead log)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            self.fsync(fd, path)
        finally:
            os.close(fd)

    def rename(self, source: Path, target: Path) -> None:
        os.replace(source, target)

    def fsync_directory(self, directory: Path) -> None:
        """Make the names in ``directory`` (creations, renames) durable."""
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


DISK = Disk()
