"""The test page, built as a developer builds one: ``npm ci`` (pinned by package-lock.json)
and esbuild with a source map.

``node_modules`` is installed once per lock file into a cache directory (under a file
lock, so parallel runs share it) and linked into a fresh copy of the page for each build.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.support.services import missing

PAGE = Path(__file__).parent / "page"
SOURCE = PAGE / "src" / "app.js"
NPM_TIMEOUT = 600  # seconds for one ``npm ci`` from the registry (a cold cache)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "otelkit-tests"


def node_modules() -> Path:
    """``node_modules`` for the page's lock file, installed once."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        missing("node and npm are not installed (Debian packages nodejs, npm)")
    assert npm is not None
    lock = (PAGE / "package-lock.json").read_bytes()
    digest = hashlib.sha256((PAGE / "package.json").read_bytes() + lock).hexdigest()[:16]
    target = cache_root() / f"browser-page-{digest}"
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        installed = target / "node_modules" / ".package-lock.json"
        if not installed.exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copy(PAGE / name, target / name)
            result = subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
            )
            if result.returncode != 0:
                missing(f"npm ci failed: {result.stderr[-2000:]}")
    return target / "node_modules"


def build_page(into: Path) -> Path:
    """A copy of the page in ``into`` with ``dist/app.js`` and ``dist/app.js.map`` built."""
    modules = node_modules()
    for name in ("index.html", "resolve.mjs"):
        shutil.copy(PAGE / name, into / name)
    shutil.copytree(PAGE / "src", into / "src")
    (into / "node_modules").symlink_to(modules, target_is_directory=True)
    esbuild = modules / ".bin" / "esbuild"
    subprocess.run(
        [str(esbuild), "src/app.js", "--bundle", "--sourcemap", "--outfile=dist/app.js"],
        cwd=into,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return into


def original_position(page: Path, line: int, column: int) -> dict[str, object]:
    """Where a bundle position (1-based line and column) comes from, by the source map
    (the npm ``source-map`` library, as Sentry's symbolicator does it)."""
    import json

    result = subprocess.run(
        ["node", "resolve.mjs", "dist/app.js.map", str(line), str(column)],
        cwd=page,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    position: dict[str, object] = json.loads(result.stdout)
    return position
