"""The default collector configuration and the example budgets, shipped in the package.

These files are the canonical ones: ``collector/otelkit.yaml`` and
``collector/budgets.yaml`` in the repository are byte-for-byte copies (a test checks),
kept as plain files rather than symbolic links because a container build copies links
as links and a Windows checkout turns them into text. ``otelkit collector run`` without
``--config`` runs :func:`config_path` from any working directory, with
:func:`budgets_path` unless ``OTELKIT_BUDGETS_FILE`` names another budgets file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.resources import as_file, files
from pathlib import Path

BUDGETS_VARIABLE = "OTELKIT_BUDGETS_FILE"


def _path(name: str) -> Path:
    with as_file(files("otelkit.defaults").joinpath(name)) as path:
        return Path(path)


def config_path() -> Path:
    """The default collector configuration (``collector/otelkit.yaml``)."""
    return _path("otelkit.yaml")


def budgets_path() -> Path:
    """The example performance budgets (``collector/budgets.yaml``)."""
    return _path("budgets.yaml")


def environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the default configuration is read with: the packaged budgets file
    unless ``OTELKIT_BUDGETS_FILE`` is set."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault(BUDGETS_VARIABLE, str(budgets_path()))
    return env
