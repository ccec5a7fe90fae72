"""What the receiver answers when the pipeline refuses data, for both transports.

Mapping (the upstream collector's, and what the OpenTelemetry SDKs retry):

========================  ======================  =====  =====================
pipeline says             gRPC                    HTTP   the SDK
========================  ======================  =====  =====================
OverloadedError           RESOURCE_EXHAUSTED      429    retries after delay
RetryableError            UNAVAILABLE             503    retries after delay
PermanentError            INVALID_ARGUMENT        400    drops the batch
anything else (a bug)     UNAVAILABLE             503    retries (as upstream)
========================  ======================  =====  =====================

Every retryable answer carries a delay: ``Retry-After`` on HTTP and a
``google.rpc.RetryInfo`` on gRPC, both in the status details (as the Go collector sends
it) and in the ``google.rpc.retryinfo-bin`` trailer the Python SDK reads. The OTLP
specification makes RESOURCE_EXHAUSTED retryable only with RetryInfo, so it is always
sent; when the component gave no delay, :data:`DEFAULT_RETRY_DELAY` is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status

from otelkit.collector.runtime.errors import OverloadedError, PermanentError, RetryableError

DEFAULT_RETRY_DELAY = 1.0
RETRY_INFO_TYPE_URL = "type.googleapis.com/google.rpc.RetryInfo"


@dataclass(frozen=True)
class Refusal:
    """One refused request, ready to be written in either transport."""

    grpc_code: grpc.StatusCode
    http_status: int
    message: str
    retry_after: float | None = None

    @property
    def retry_after_header(self) -> str | None:
        """Whole seconds, rounded up, as RFC 9110 requires for ``Retry-After``."""
        if self.retry_after is None:
            return None
        return str(max(1, math.ceil(self.retry_after)))

    def retry_info(self) -> RetryInfo | None:
        if self.retry_after is None:
            return None
        seconds = math.floor(self.retry_after)
        nanos = round((self.retry_after - seconds) * 1e9)
        return RetryInfo(retry_delay=Duration(seconds=seconds, nanos=nanos))

    def status(self) -> Status:
        """The ``google.rpc.Status`` for this refusal, with RetryInfo when retryable."""
        status = Status(code=self.grpc_code.value[0], message=self.message)
        info = self.retry_info()
        if info is not None:
            detail = AnyMessage()
            detail.Pack(info)
            status.details.append(detail)
        return status


def invalid(message: str, http_status: int = 400) -> Refusal:
    """Bad input (malformed, too large, unsupported encoding): retrying cannot help."""
    return Refusal(grpc.StatusCode.INVALID_ARGUMENT, http_status, message)


def refusal_for(error: BaseException) -> Refusal:
    """How to answer the sender when the pipeline raised ``error``."""
    if isinstance(error, PermanentError):
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, 400, f"data refused: {error}")
    delay = DEFAULT_RETRY_DELAY
    if isinstance(error, RetryableError) and error.retry_after is not None:
        delay = max(0.0, error.retry_after)
    if isinstance(error, OverloadedError):
        return Refusal(
            grpc.StatusCode.RESOURCE_EXHAUSTED, 429, f"collector overloaded: {error}", delay
        )
    if isinstance(error, RetryableError):
        return Refusal(
            grpc.StatusCode.UNAVAILABLE, 503, f"data refused, retry later: {error}", delay
        )
    return Refusal(grpc.StatusCode.UNAVAILABLE, 503, "internal error in the pipeline", delay)
