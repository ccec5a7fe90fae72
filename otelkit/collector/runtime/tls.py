"""TLS for every listener and client of the collector, with upstream's ``configtls`` keys.

One place builds what the transports need from the settings: an ``ssl.SSLContext`` for
uvicorn and httpx, gRPC server and channel credentials. Servers take ``tls: {cert_file,
key_file, client_ca_file, min_version, max_version, reload_interval}`` (``cert_pem`` /
``key_pem`` inline instead of files); ``client_ca_file`` requires and verifies client
certificates (mTLS). Clients take ``tls: {ca_file, cert_file, key_file, insecure,
insecure_skip_verify, server_name_override, min_version}``.

Where gRPC's Python library cannot do what upstream does, the settings say so at load
time instead of being ignored: its server and channel always negotiate TLS 1.2 or 1.3
(``min_version: "1.3"`` and ``max_version`` are refused for gRPC), and its channel
cannot skip verification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import grpc
from pydantic import model_validator

from otelkit.collector.runtime.component import ComponentConfig
from otelkit.collector.runtime.types import Duration, Secret

log = logging.getLogger("otelkit.tls")

TLSVersion = Literal["1.0", "1.1", "1.2", "1.3"]
_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class TLSSettings(ComponentConfig):
    """What servers and clients share: own certificate and key, protocol versions."""

    cert_file: str | None = None
    cert_pem: str | None = None
    key_file: str | None = None
    key_pem: Secret | None = None
    min_version: TLSVersion = "1.2"
    max_version: TLSVersion | None = None

    @model_validator(mode="after")
    def _pairs(self) -> TLSSettings:
        if self.cert_file and self.cert_pem:
            raise ValueError("set cert_file or cert_pem, not both")
        if self.key_file and self.key_pem is not None:
            raise ValueError("set key_file or key_pem, not both")
        if self.has_certificate != bool(self.key_file or self.key_pem is not None):
            raise ValueError("a certificate needs its key: set both cert_file and key_file")
        if self.max_version and self.max_version < self.min_version:
            raise ValueError(f"max_version {self.max_version} is below min_version")
        return self

    @property
    def has_certificate(self) -> bool:
        return bool(self.cert_file or self.cert_pem)

    def certificate_chain(self) -> bytes:
        return self.cert_pem.encode() if self.cert_pem else _read(self.cert_file, "cert_file")

    def private_key(self) -> bytes:
        if self.key_pem is not None:
            return self.key_pem.get_secret_value().encode()
        return _read(self.key_file, "key_file")

    def grpc_versions_supported(self) -> TLSSettings:
        """Refuse what gRPC's Python library cannot enforce (call from a gRPC config)."""
        if self.min_version == "1.3" or self.max_version is not None:
            raise ValueError(
                "gRPC's Python library always negotiates TLS 1.2 or 1.3 and cannot be "
                "limited further: remove min_version 1.3 / max_version for gRPC"
            )
        return self

    def _versions(self, context: ssl.SSLContext) -> None:
        context.minimum_version = _VERSIONS[self.min_version]
        if self.max_version:
            context.maximum_version = _VERSIONS[self.max_version]

    def _load_chain(self, context: ssl.SSLContext) -> None:
        """``load_cert_chain`` reads files only: inline PEM goes through private temp files."""
        with _as_files(self) as (cert, key):
            try:
                context.load_cert_chain(cert, key)
            except ssl.SSLError as exc:
                raise ValueError(f"certificate or key cannot be used: {exc.reason}") from exc


class TLSServerSettings(TLSSettings):
    client_ca_file: str | None = None
    reload_interval: Duration = 0.0

    @model_validator(mode="after")
    def _needs_certificate(self) -> TLSServerSettings:
        if not self.has_certificate:
            raise ValueError("a TLS server needs cert_file and key_file (or cert_pem and key_pem)")
        return self


class TLSClientSettings(TLSSettings):
    """Client TLS. TLS is on unless ``insecure`` (gRPC); for HTTP the URL scheme decides."""

    insecure: bool = False
    insecure_skip_verify: bool = False
    ca_file: str | None = None
    ca_pem: str | None = None
    server_name_override: str | None = None

    @model_validator(mode="after")
    def _one_ca(self) -> TLSClientSettings:
        if self.ca_file and self.ca_pem:
            raise ValueError("set ca_file or ca_pem, not both")
        return self

    def root_certificates(self) -> bytes | None:
        if self.ca_pem:
            return self.ca_pem.encode()
        return _read(self.ca_file, "ca_file") if self.ca_file else None


def _read(path: str | None, key: str) -> bytes:
    assert path is not None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"tls.{key}: cannot read {path}: {exc.strerror}") from exc


@contextlib.contextmanager
def _as_files(settings: TLSSettings) -> Iterator[tuple[str, str]]:
    if settings.cert_file and settings.key_file:
        yield settings.cert_file, settings.key_file
        return
    with tempfile.TemporaryDirectory(prefix="otelkit-tls-") as directory:
        paths = []
        for name, content in (
            ("cert.pem", settings.certificate_chain()),
            ("key.pem", settings.private_key()),
        ):
            path = os.path.join(directory, name)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(content)
            paths.append(path)
        yield paths[0], paths[1]


# Servers -------------------------------------------------------------------------------------
class ServerTLS:
    """A server's TLS material, re-read every ``reload_interval`` when its files changed.

    The uvicorn side keeps one ``SSLContext`` and loads the new chain into it (new
    connections get it, open ones keep theirs); the gRPC side hands gRPC a fetcher that
    it asks on new connections.
    """

    def __init__(self, settings: TLSServerSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._loaded_state = self._state()
        self._next_check = time.monotonic() + settings.reload_interval
        self._context: ssl.SSLContext | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """The context for an HTTP server (built once; reloaded in place)."""
        if self._context is None:
            settings = self.settings
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            settings._versions(context)
            settings._load_chain(context)
            if settings.client_ca_file:
                context.verify_mode = ssl.CERT_REQUIRED
                try:
                    context.load_verify_locations(settings.client_ca_file)
                except (OSError, ssl.SSLError) as exc:
                    raise ValueError(
                        f"tls.client_ca_file: cannot load {settings.client_ca_file}: {exc}"
                    ) from exc
            context.set_alpn_protocols(["http/1.1"])
            self._context = context
        return self._context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        settings = self.settings
        client_ca = (
            _read(settings.client_ca_file, "client_ca_file") if settings.client_ca_file else None
        )
        pair = [(settings.private_key(), settings.certificate_chain())]
        if not settings.reload_interval:
            return grpc.ssl_server_credentials(
                pair, root_certificates=client_ca, require_client_auth=client_ca is not None
            )
        initial = grpc.ssl_server_certificate_configuration(pair, root_certificates=client_ca)
        return grpc.dynamic_ssl_server_credentials(
            initial, self._grpc_fetch, require_client_authentication=client_ca is not None
        )

    async def reload_loop(self) -> None:
        """For HTTP servers: reload the context's chain when the files change."""
        interval = self.settings.reload_interval
        if not interval:
            return
        while True:
            await asyncio.sleep(interval)
            if self._changed() and self._context is not None:
                try:
                    self.settings._load_chain(self._context)
                    log.info("TLS certificate reloaded from %s", self.settings.cert_file)
                except (ValueError, OSError) as exc:
                    log.warning("TLS certificate not reloaded, keeping the old one: %s", exc)

    def _grpc_fetch(self) -> Any:
        """Called by gRPC (on its own threads) on new connections: a new configuration or None."""
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + self.settings.reload_interval
        if not self._changed():
            return None
        settings = self.settings
        try:
            client_ca = (
                _read(settings.client_ca_file, "client_ca_file")
                if settings.client_ca_file
                else None
            )
            pair = [(settings.private_key(), settings.certificate_chain())]
        except ValueError as exc:
            log.warning("TLS certificate not reloaded, keeping the old one: %s", exc)
            return None
        log.info("TLS certificate reloaded from %s (gRPC)", settings.cert_file)
        return grpc.ssl_server_certificate_configuration(pair, root_certificates=client_ca)

    def _state(self) -> tuple[float, ...]:
        paths = [self.settings.cert_file, self.settings.key_file, self.settings.client_ca_file]
        state = []
        for path in paths:
            with contextlib.suppress(OSError):
                if path:
                    state.append(os.stat(path).st_mtime)
        return tuple(state)

    def _changed(self) -> bool:
        with self._lock:
            state = self._state()
            if state == self._loaded_state:
                return False
            self._loaded_state = state
            return True


# Clients -------------------------------------------------------------------------------------
def client_ssl_context(settings: TLSClientSettings) -> ssl.SSLContext:
    """The context an HTTP client (httpx) verifies servers and presents itself with."""
    try:
        context = ssl.create_default_context(
            cafile=settings.ca_file, cadata=settings.ca_pem or None
        )
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"tls.ca_file/ca_pem cannot be loaded: {exc}") from exc
    settings._versions(context)
    if settings.has_certificate:
        settings._load_chain(context)
    if settings.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def grpc_channel_credentials(settings: TLSClientSettings) -> grpc.ChannelCredentials:
    key: bytes | None = None
    chain: bytes | None = None
    if settings.has_certificate:
        key, chain = settings.private_key(), settings.certificate_chain()
    return grpc.ssl_channel_credentials(
        root_certificates=settings.root_certificates(), private_key=key, certificate_chain=chain
    )


def grpc_channel_options(settings: TLSClientSettings) -> list[tuple[str, Any]]:
    if settings.server_name_override and not settings.insecure:
        return [("grpc.ssl_target_name_override", settings.server_name_override)]
    return []


def httpx_options(settings: TLSClientSettings) -> dict[str, Any]:
    """``verify`` (and an SNI override) for an ``httpx.AsyncClient``; httpx's own defaults
    (certifi's CA bundle) when nothing is set."""
    options: dict[str, Any] = {}
    defaults = TLSClientSettings()
    if settings.model_dump(exclude={"insecure"}) != defaults.model_dump(exclude={"insecure"}):
        options["verify"] = client_ssl_context(settings)
    if name := settings.server_name_override:

        async def set_sni(request: Any) -> None:
            request.extensions["sni_hostname"] = name

        options["event_hooks"] = {"request": [set_sni]}
    return options
