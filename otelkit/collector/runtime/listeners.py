"""Which addresses the collector listens on, where its data goes, and a warning for
listeners open to the network.

Every component config that opens a port says so through :class:`ListensOn` (a plugin's
may too), so ``otelkit collector run`` can warn once at start for each listener bound
beyond loopback without authentication. Defaults bind ``localhost``, as upstream's do;
only a config written for a container binds ``0.0.0.0``, and says why.

Every exporter that writes or sends data somewhere says where through :class:`SendsTo`,
so the start-up banner (:func:`announce`) can name each listener and each destination
(never with credentials) before the one line saying the collector is ready.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from otelkit.collector.runtime.component import Kind
from otelkit.collector.runtime.config import CollectorConfig
from otelkit.collector.runtime.types import split_endpoint

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class Listener:
    """One port a component serves: ``what`` it serves, and whether requests need credentials.

    ``protocol`` is ``gRPC``, ``HTTP`` or ``HTTPS``; an HTTP listener with a ``path`` is
    shown as the URL to open."""

    what: str
    endpoint: str
    authenticated: bool
    can_authenticate: bool = True
    protocol: str = "HTTP"
    path: str = ""

    @property
    def encrypted(self) -> bool:
        return self.protocol in ("HTTPS", "gRPC with TLS")

    @property
    def address(self) -> str:
        if self.protocol.startswith("HTTP") and self.path:
            host, port = split_endpoint(self.endpoint)
            host = f"[{host}]" if ":" in host else host
            return f"{self.protocol.lower()}://{host}:{port}{self.path}"
        return self.endpoint


@dataclass(frozen=True)
class Destination:
    """Where an exporter puts data: ``what`` goes (``log records``), and ``where`` (a path,
    a database or a URL, with credentials masked by ``scrub.redact_url``), or why nothing
    goes."""

    what: str
    where: str


@runtime_checkable
class SendsTo(Protocol):
    """A running exporter that writes or sends data somewhere."""

    def destinations(self) -> Iterable[Destination]: ...


@runtime_checkable
class ListensOn(Protocol):
    """A component config that opens ports."""

    def listeners(self) -> Iterable[Listener]: ...


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def all_listeners(config: CollectorConfig) -> list[tuple[str, Listener]]:
    """Every listener a config opens, with the component (``receiver/otlp``) it belongs to;
    components defined but not used do not run, so they open nothing."""
    used = {(Kind.EXTENSION, cid) for cid in config.extensions}
    for pipeline in config.pipelines.values():
        for kind in (Kind.RECEIVER, Kind.CONNECTOR):
            used.update((kind, cid) for cid in pipeline.receivers)
        for kind in (Kind.EXPORTER, Kind.CONNECTOR):
            used.update((kind, cid) for cid in pipeline.exporters)
    found: list[tuple[str, Listener]] = []
    for key, spec in config.components.items():
        if key in used and isinstance(spec.config, ListensOn):
            label = f"{spec.kind.value}/{spec.id}"
            found += [(label, listener) for listener in spec.config.listeners()]
    if config.telemetry.metrics_address:
        found.append(
            (
                "service",
                Listener(
                    "self-telemetry metrics",
                    config.telemetry.metrics_address,
                    False,
                    False,
                    path="/metrics",
                ),
            )
        )
    return found


def warn_exposed(config: CollectorConfig, logger: logging.Logger) -> int:
    """Log one warning per listener reachable beyond loopback without credentials, or
    taking credentials there without TLS."""
    warned = 0
    for label, listener in all_listeners(config):
        host, _ = split_endpoint(listener.endpoint)
        if is_loopback(host) or (listener.authenticated and listener.encrypted):
            continue
        if listener.authenticated:
            logger.warning(
                "%s: %s listens on %s without TLS: its credentials cross the network in clear "
                "text; set tls: {cert_file: ..., key_file: ...} on it, or terminate TLS in "
                "front of it",
                label, listener.what, listener.endpoint,
            )  # fmt: skip
            warned += 1
            continue
        advice = (
            "set auth: {authenticator: ...} on it, or bind 127.0.0.1"
            if listener.can_authenticate
            else "it has no authentication of its own: bind 127.0.0.1, or limit who can reach it"
        )
        logger.warning(
            "%s: %s listens on %s without authentication: anyone who can reach it can use it; %s",
            label, listener.what, listener.endpoint, advice,
        )  # fmt: skip
        warned += 1
    return warned


def announce(
    config: CollectorConfig, components: Iterable[tuple[str, object]], logger: logging.Logger
) -> None:
    """The start-up banner: one line per listener and per data destination."""
    for label, listener in all_listeners(config):
        logger.info(
            "listening: %s: %s on %s (%s)", label, listener.what, listener.address,
            listener.protocol,
        )  # fmt: skip
    announce_destinations(components, logger)


def announce_destinations(components: Iterable[tuple[str, object]], logger: logging.Logger) -> None:
    """The banner's lines saying where each exporter's data goes."""
    for label, component in components:
        if isinstance(component, SendsTo):
            for destination in component.destinations():
                logger.info("sending: %s: %s to %s", label, destination.what, destination.where)
