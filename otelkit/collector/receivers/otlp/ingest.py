"""The one step both transports share: count, hand the request to the pipeline, record."""

from __future__ import annotations

import logging

from otelkit.collector.pdata.signals import Payload, Signal, count_items
from otelkit.collector.runtime.component import Consumer
from otelkit.collector.runtime.errors import ComponentError
from otelkit.collector.runtime.telemetry import SelfTelemetry


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

    async def deliver(self, payload: Payload, transport: str) -> None:
        """Pass ``payload`` on whole; raises what the pipeline raised, after counting.

        A request with no items succeeds without reaching the pipeline, as upstream.
        Errors that are not ComponentErrors are bugs downstream: logged with their stack
        and re-raised for the transport to answer as retryable.
        """
        items = count_items(payload)
        if items == 0:
            return
        try:
            await self._consumer.consume(payload)
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
