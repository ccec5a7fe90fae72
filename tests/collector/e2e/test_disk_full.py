"""The shipped collector/otelkit.yaml with its data directory on a disk that fills up.

While the disk is full a sender's log records are refused as retryable (nothing is
acknowledged that is not stored), traces are still taken, and the access records made
from them wait in memory; once space is freed every one of them is written. Before, the
access records and findings of every trace taken during the outage were dropped after
one failed write, although their traces had been acknowledged.
"""

from __future__ import annotations

import subprocess
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.collector.e2e.access import access_record_paths, server_spans
from tests.collector.e2e.clients import metric_total, scrape, wait_until
from tests.collector.e2e.test_redaction import post
from tests.logstore.requests import Rec, request
from tests.support.collector import shipped_collector
from tests.support.services import missing


@contextmanager
def small_disk(path: Path, megabytes: int) -> Iterator[Path]:
    """A tmpfs of its own, so that filling it fills nothing else (needs root)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        missing(f"a tmpfs to fill (mount: {mounted.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write until the file system says no space is left."""
    filler = disk / "filler"
    with open(filler, "wb") as out:
        block = b"\0" * (1 << 20)
        try:
            while True:
                out.write(block)
                out.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_loses_no_acknowledged_record(tmp_path: Path) -> None:
    with (
        small_disk(tmp_path / "disk", megabytes=24) as disk,
        shipped_collector(tmp_path, env={"OTELKIT_DATA_DIR": str(disk)}) as running,
    ):
        http = running.ports["http"]
        post(http, request([Rec("before the disk filled")]))
        filler = fill(disk)

        refused = 0
        for n in range(20):
            post(
                http, server_spans(1000 + 10 * n, 10, "/full")
            )  # traces are taken: nothing is on disk yet
            try:
                post(http, request([Rec(f"while full {n}")]))
            except urllib.error.HTTPError as error:
                assert error.code == 503, error.read()
                refused += 1
        assert refused == 20, "a log record was acknowledged that the full disk did not store"
        telemetry = running.ports["telemetry"]
        wait_until(
            lambda: metric_total(scrape(telemetry), "otelkit_logstore_write_errors_total") > 20,
            timeout=30,
            what="the access records' writes to fail",
        )

        filler.unlink()
        database = disk / "logs.db"
        expected = {f"/full{n}" for n in range(1000, 1200)}
        wait_until(lambda: access_record_paths(database, "/full") >= expected, timeout=90,
                   what="every access record written once space was freed")  # fmt: skip
        post(http, request([Rec("after space was freed")]))
        log = running.log()
    assert "log store unavailable" in log and "reachable again" in log
    assert "Traceback" not in log
