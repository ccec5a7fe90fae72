"""Outside services the tests use: fail under CI when missing, skip elsewhere."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading

import pytest

POSTGRES_URL = os.environ.get("OTELKIT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
_DEBIAN_PACKAGES = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "alertmanager": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "chromium": "chromium",
}
_install_lock = threading.Lock()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(reason: str) -> None:
    """Fail under CI (a missing service is a broken CI), skip on a developer machine."""
    if in_ci():
        pytest.fail(f"required service missing under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str) -> str:
    """Path of a binary, installing its Debian package first when we are root."""
    path = shutil.which(name)
    if path is None and name in _DEBIAN_PACKAGES and os.geteuid() == 0 and shutil.which("apt-get"):
        with _install_lock:
            _apt_install(_DEBIAN_PACKAGES[name])
            if shutil.which(name) is None:  # a fresh machine has no package lists yet
                _apt(["apt-get", "update", "-qq"])
                _apt_install(_DEBIAN_PACKAGES[name])
        path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (Debian package {_DEBIAN_PACKAGES.get(name, name)})")
    assert path is not None
    return path


def _apt_install(package: str) -> None:
    _apt(["apt-get", "install", "-y", "-qq", package])


def _apt(command: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(command, check=False, capture_output=True, env=env, timeout=600)


def require_postgres() -> str:
    """A connection URL for the test PostgreSQL, after checking it answers."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            pass
    except OSError as exc:
        missing(f"PostgreSQL is not reachable on 127.0.0.1:5432: {exc}")
    return POSTGRES_URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
