"""Whether the data being consumed still has a sender waiting for the answer.

A receiver answers its sender only after the pipeline took the data, so a refusal
there reaches a sender that sends again later. Data a component hands on afterwards
(a whole-trace processor releasing batches on its timer, a connector's periodic flush)
was acknowledged long ago: nobody would send it again, so refusing it loses it.
Receivers mark their deliveries with :func:`sender_waiting`; a component that refuses
data only to protect the collector (the memory limiter) refuses marked data only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_SENDER_WAITING: ContextVar[bool] = ContextVar("otelkit_sender_waiting", default=False)


@contextmanager
def sender_waiting() -> Iterator[None]:
    """Marks what is consumed inside the block as a sender's request awaiting its answer."""
    token = _SENDER_WAITING.set(True)
    try:
        yield
    finally:
        _SENDER_WAITING.reset(token)


def sender_waits() -> bool:
    """Whether a refusal of the data being consumed now reaches a sender that retries."""
    return _SENDER_WAITING.get()
