"""Shared pytest configuration."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

logging.getLogger("otelkit").setLevel(logging.INFO)


@pytest.fixture
def quiet_sdk_exports() -> Iterator[None]:
    """The SDK logs every failed export; in tests that stop a collector on purpose (kills,
    fuzzing) that is only noise."""
    logger = logging.getLogger("opentelemetry.exporter.otlp")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
