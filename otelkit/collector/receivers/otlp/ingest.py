"""The one step both transports share: count, hand the request to the pipeline, record."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Protocol, runtime_checkable

from google.protobuf.message import DecodeError

from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.runtime.component import Consumer
from otelkit.collector.runtime.errors import ComponentError, PermanentError
from otelkit.collector.runtime.origin import sender_waiting
from otelkit.collector.runtime.telemetry import SelfTelemetry


@runtime_checkable
class TakesEncoded(Protocol):
    """A consumer that takes protobuf request bodies before they are parsed (the routing
    between worker processes, which cuts a request without parsing what it forwards)."""

    @property
    def takes_encoded(self) -> bool: ...

    def route_encoded(self, data: bytes) -> tuple[int, Awaitable[None]]: ...


class SignalIntake:
    """Delivers decoded requests of one signal to that signal's pipeline(s)."""

    def __init__(
        self,
        signal: Signal,
        consumer: Consumer,
        telemetry: SelfTelemetry,
        receiver: str,
        logger: logging.Logger,
    ) -> None:
        self.signal = signal
        self.request_type = signal.request_type
        self._consumer = consumer
        self._telemetry = telemetry
        self._receiver = receiver
        self._logger = logger
        self.takes_encoded = isinstance(consumer, TakesEncoded) and consumer.takes_encoded
        """Whether the transport should hand over bodies unparsed (:meth:`deliver_encoded`)."""

    async def deliver(self, payload: Payload, transport: str) -> None:
        """Pass ``payload`` on whole; raises what the pipeline raised, after counting.

        A request with no items succeeds without reaching the pipeline, as upstream.
        Errors that are not ComponentErrors are bugs downstream: logged with their stack
        and re-raised for the transport to answer as retryable.
        """
        items = count_items(payload)
        if items == 0:
            return
        await self._counted(self._consumer.consume(payload), items, transport)

    async def deliver_encoded(self, data: bytes, transport: str) -> None:
        """As :meth:`deliver`, for a protobuf body not parsed yet; a malformed one is
        counted and refused as :class:`PermanentError`."""
        assert isinstance(self._consumer, TakesEncoded)
        try:
            items, delivery = self._consumer.route_encoded(data)
        except DecodeError as exc:
            reason = f"malformed {self.request_type.__name__}: {exc}"
            self.malformed(transport, reason)
            raise PermanentError(reason) from exc
        if items == 0:
            await delivery
            return
        await self._counted(delivery, items, transport)

    async def _counted(self, delivery: Awaitable[None], items: int, transport: str) -> None:
        try:
            with sender_waiting():
                await delivery
        except ComponentError:
            self._telemetry.receiver_refused(self._receiver, transport, self.signal, items)
            raise
        except Exception:
            self._telemetry.receiver_refused(self._receiver, transport, self.signal, items)
            self._logger.exception("pipeline failed on %d %s", items, self.signal.item_name)
            raise
        self._telemetry.receiver_accepted(self._receiver, transport, self.signal, items)

    def malformed(self, transport: str, reason: str) -> None:
        """A request that could not be decoded: nothing to count, so note it for debugging."""
        self._telemetry.receiver_refused(self._receiver, transport, self.signal, 0)
        self._logger.debug(
            "refused malformed %s request over %s: %s", self.signal, transport, reason
        )
