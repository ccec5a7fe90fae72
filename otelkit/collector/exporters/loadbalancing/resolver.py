"""Where the backends are: a fixed list (``static``) or a DNS name resolved periodically.

A resolver hands every successful answer, as sorted ``host:port`` endpoints, to the
exporter's update callback; the exporter acts only when the list changed. A DNS failure
(error or timeout) keeps the last known backends and is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from otelkit.collector.exporters.loadbalancing.config import (
    DNSResolverConfig,
    ResolverConfig,
    StaticResolverConfig,
    with_port,
)
from otelkit.collector.runtime.telemetry import SelfTelemetry

log = logging.getLogger("otelkit.exporter.loadbalancing")

Update = Callable[[list[str]], Awaitable[None]]


async def lookup_addresses(hostname: str) -> list[str]:
    """The IP addresses ``hostname`` resolves to, looked up off the event loop.

    Tests replace this function to give the resolver changing answers."""
    infos = await asyncio.get_running_loop().getaddrinfo(hostname, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Resolver:
    kind = ""

    def __init__(self, telemetry: SelfTelemetry) -> None:
        self._resolutions = telemetry.counter(
            "otelcol_loadbalancer_num_resolutions",
            "Number of times the resolver has resolved the backends",
            ("resolver", "success"),
        )
        for success in ("true", "false"):
            self._resolutions.labels(self.kind, success)

    def counted(self, success: bool) -> None:
        self._resolutions.labels(self.kind, str(success).lower()).inc()

    def describe(self) -> str:
        raise NotImplementedError

    async def start(self, update: Update) -> None:
        """Give the first answer to ``update``, and later ones as they come."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop resolving."""


class StaticResolver(Resolver):
    kind = "static"

    def __init__(self, config: StaticResolverConfig, telemetry: SelfTelemetry) -> None:
        super().__init__(telemetry)
        self.endpoints = sorted(config.hostnames)

    def describe(self) -> str:
        return ", ".join(self.endpoints)

    async def start(self, update: Update) -> None:
        self.counted(True)
        await update(list(self.endpoints))


class DNSResolver(Resolver):
    kind = "dns"

    def __init__(self, config: DNSResolverConfig, telemetry: SelfTelemetry) -> None:
        super().__init__(telemetry)
        self.config = config
        self._task: asyncio.Task[None] | None = None

    def describe(self) -> str:
        c = self.config
        return f"the addresses of {c.hostname} (port {c.port}, resolved every {c.interval:g}s)"

    async def start(self, update: Update) -> None:
        await self.resolve(update)
        self._task = asyncio.create_task(self._every_interval(update), name="lb-dns-resolver")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def resolve(self, update: Update) -> None:
        """Resolve once; on success hand the endpoints over, on failure keep the last ones."""
        c = self.config
        try:
            addresses = await asyncio.wait_for(lookup_addresses(c.hostname), c.timeout)
        except (OSError, TimeoutError) as exc:
            self.counted(False)
            log.warning("loadbalancing: cannot resolve %s (%s); keeping the last known backends",
                        c.hostname, exc or type(exc).__name__)  # fmt: skip
            return
        self.counted(True)
        await update(sorted({with_port(address, c.port) for address in addresses}))

    async def _every_interval(self, update: Update) -> None:
        while True:
            await asyncio.sleep(self.config.interval)
            try:
                await self.resolve(update)
            except Exception:  # a backend that cannot start must not end the resolving
                log.exception("loadbalancing: cannot use the backends of %s", self.config.hostname)


def make_resolver(config: ResolverConfig, telemetry: SelfTelemetry) -> Resolver:
    if config.dns is not None:
        return DNSResolver(config.dns, telemetry)
    assert config.static is not None  # the config allows exactly one
    return StaticResolver(config.static, telemetry)
