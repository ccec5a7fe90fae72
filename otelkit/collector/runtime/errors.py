"""The two kinds of failure every component speaks: retryable and permanent.

A receiver turns a retryable error into gRPC ``UNAVAILABLE`` / HTTP 503 with
``Retry-After`` so the sender tries again; a permanent error means the data can never
be delivered and is dropped and counted where it happened.
"""

from __future__ import annotations


class ComponentError(Exception):
    """Base of the errors components raise to their callers."""


class RetryableError(ComponentError):
    """The data was not taken now but may be later (full queue, memory limit, 5xx)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OverloadedError(RetryableError):
    """A destination asked to slow down (429, or RESOURCE_EXHAUSTED with RetryInfo). A
    sender waiting on the result hears 429 / RESOURCE_EXHAUSTED in turn, as upstream."""


class PermanentError(ComponentError):
    """The data can never be delivered as it is (4xx, malformed); retrying cannot help."""


class InvalidDataError(PermanentError):
    """Some item of the data cannot be exported as it is (a value out of range, an ID of
    the wrong length). The exporter helper then sends the batch in parts to find the
    items that fail, drops only those (counted, reason ``invalid``) and delivers the rest.
    """
