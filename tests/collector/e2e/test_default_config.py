"""``otelkit collector run`` with no ``--config`` runs the default configuration shipped
in the package, from any working directory, exactly as ``collector/otelkit.yaml``."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from otelkit import defaults
from tests.collector.e2e.clients import wait_until
from tests.support.collector import (
    ROOT,
    SHIPPED_ADDRESSES,
    RunningCollector,
    allocate_ports,
    wait_for_port,
)


def test_the_packaged_defaults_are_the_repository_files() -> None:
    """One source of truth: the packaged files are canonical, the repository's copies must
    match (fix with: cp otelkit/defaults/<name> collector/<name>)."""
    for packaged, shipped in (
        (defaults.config_path(), ROOT / "collector/otelkit.yaml"),
        (defaults.budgets_path(), ROOT / "collector/budgets.yaml"),
    ):
        assert not shipped.is_symlink(), shipped
        assert filecmp.cmp(packaged, shipped, shallow=False), (
            f"{shipped} differs from {packaged}: edit the packaged file and copy it over"
        )


def _environment(ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELKIT_", "SENTRY_"))}
    env.update({name: f"127.0.0.1:{ports[key]}" for key, name in SHIPPED_ADDRESSES.items()})
    return env


def test_validate_without_config_checks_the_default(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "otelkit.cli", "collector", "validate"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=_environment(allocate_ports(*SHIPPED_ADDRESSES)),
    )
    assert result.returncode == 0, result.stderr
    pipelines = yaml.safe_load(defaults.config_path().read_text())["service"]["pipelines"]
    assert f"{defaults.config_path()}: valid ({len(pipelines)} pipelines)" in result.stdout


def test_run_without_config_works_from_any_directory(tmp_path: Path) -> None:
    """No budgets file, no config file in the working directory: the packaged ones are
    used, and the log store lands where the README says, ./otelkit-data/logs.db."""
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    ports = allocate_ports(*SHIPPED_ADDRESSES)
    log_path = tmp_path / "collector.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "otelkit.cli", "collector", "run"],
            cwd=elsewhere,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_environment(ports),
        )
    running = RunningCollector(process, defaults.config_path(), log_path, ports)
    try:
        wait_for_port(ports["health"], timeout=30, process=process)
        ready = f"http://127.0.0.1:{ports['health']}/health/ready"
        wait_until(lambda: httpx.get(ready, timeout=5).status_code == 200, 30, "readiness")
        assert (elsewhere / "otelkit-data" / "logs.db").is_file(), running.log()
        assert running.stop() == 0, running.log()
    finally:
        running.kill()
    assert "invalid budgets file" not in running.log()
