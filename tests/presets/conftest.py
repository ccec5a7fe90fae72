from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.presets.sink import OtlpSink


@pytest.fixture(scope="module")
def sink() -> Iterator[OtlpSink]:
    running = OtlpSink()
    yield running
    running.stop()
