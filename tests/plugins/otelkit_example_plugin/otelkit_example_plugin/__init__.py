"""``resource_tag``: sets one attribute on every resource, written as a third party would.

Only the public component API is used: a config class, a processor, and a factory
published under the ``otelkit.processors`` entry point.
"""

from __future__ import annotations

from typing import Any

from otelkit.collector.pdata.signals import Payload, Signal
from otelkit.collector.runtime.component import (
    ComponentConfig,
    Consumer,
    CreateSettings,
    Processor,
    processor_factory,
)

_RESOURCES = {
    Signal.TRACES: "resource_spans",
    Signal.METRICS: "resource_metrics",
    Signal.LOGS: "resource_logs",
}


class ResourceTagConfig(ComponentConfig):
    key: str
    value: str


class ResourceTag(Processor):
    def __init__(self, config: ResourceTagConfig, signal: Signal, next_: Consumer) -> None:
        self._key = config.key
        self._value = config.value
        self._resources = _RESOURCES[signal]
        self._next = next_

    async def consume(self, payload: Payload) -> None:
        for entry in getattr(payload, self._resources):
            self._tag(entry.resource.attributes)
        await self._next.consume(payload)

    def _tag(self, attributes: Any) -> None:
        for attribute in attributes:
            if attribute.key == self._key:
                attribute.value.string_value = self._value
                return
        attributes.add(key=self._key).value.string_value = self._value


def _create(
    settings: CreateSettings, config: ResourceTagConfig, signal: Signal, next_: Consumer
) -> ResourceTag:
    return ResourceTag(config, signal, next_)


factory = processor_factory("resource_tag", ResourceTagConfig, _create, frozenset(Signal))
